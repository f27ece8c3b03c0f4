"""The digits examples run as a user runs them, and what they print keeps the promises they make."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    completed = subprocess.run([sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True,
                               text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def _number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.slow
def test_main_tuning_job_meets_its_threshold_with_fewer_parameters():
    out = run_example("tune_digits.py")
    threshold = _number(re.search(r"threshold (\d\.\d+)", out).group(1))
    rows = {m.group(1): (_number(m.group(2)), _number(m.group(3)))
            for m in re.finditer(r"^\| (dense|sketched) \| (\d\.\d+) \| \d\.\d+ \| ([\d,]+) \|", out, re.M)}
    (dense_val, dense_bytes), (sketched_val, sketched_bytes) = rows["dense"], rows["sketched"]
    assert threshold == pytest.approx(dense_val - 0.01, abs=1e-4)
    assert sketched_val >= threshold and sketched_bytes < 0.35 * dense_bytes


@pytest.mark.slow
@pytest.mark.parametrize("name, max_drop", [("lightning_callback.py", 0.02), ("lightning_digits_cnn.py", 0.02)])
def test_lightning_examples_apply_a_plan_within_their_bound(name, max_drop):
    out = run_example(name)
    assert "Applied parameters: {" in out  # something was sketched
    report = re.search(r"dense val_acc (\d\.\d+), tuned val_acc (\d\.\d+), weights (\d+) -> (\d+)", out)
    if report:
        dense_acc, tuned_acc, dense_bytes, tuned_bytes = map(_number, report.groups())
        assert tuned_acc >= dense_acc - max_drop - 1e-6 and tuned_bytes < dense_bytes
    else:
        assert "reloads into the plain class with identical outputs: True" in out


@pytest.mark.slow
def test_tuner_hook_example_leaves_sketched_layers_in_the_model():
    out = run_example("lightning_tuner_hook.py")
    assert "SKLinear(" in out.split("The model now holds:")[1]
