"""Smoke run of bench/tune_workers.py at toy size: both runs finish and every worker chooses the same plan."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tune_workers_bench_runs_and_the_workers_agree():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "tune_workers.py"), "--eval-s", "0.01",
                          "--workers", "2"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "same chosen plan: True" in out.stdout and "wall-time ratio" in out.stdout
