"""The GPU check, dry-run on the CPU: every step of ``bench/gpu_check.sh`` and its scripts runs at toy size,
so an error in them is found in CI and not in the few minutes a lent GPU allows (~30 s).

The outputs are checked against what the inputs imply, not only for existence: the dispatch rule's
choice per shape (fused only where ``ceil(B/32)`` blocks cover an H200's 132 SMs and ``2k <= 64``), the
generated data's transitions, and the trained model's loss above the chain's entropy rate.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_e2e  # noqa: E402

from panther.ops import _custom_ops  # noqa: E402


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("gpu_check_out")
    env = dict(os.environ, OUT=str(out), PYTHON=sys.executable, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               GPU_CHECK_SITE=str(tmp_path_factory.mktemp("site")))
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)
    return out, proc


def test_every_step_runs_and_reports(dry_run):
    out, proc = dry_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    steps = json.loads((out / "steps.json").read_text())
    assert steps["dry_run"] == 1 and steps["status"] == 0
    assert {s["step"]: s["rc"] for s in steps["steps"]} == {
        "wheels": "0", "build": "dry-run", "tests_ops": "0", "paths_fp32": "0", "paths_bf16": "0", "e2e": "0"}
    assert "=== done: status 0" in (out / "gpu_check.log").read_text()
    # What the device tool brings back: at most 8 files, plain names, no deeper than 2 folders.
    files = [p.relative_to(out) for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.parts) <= 3 for p in files), files


@pytest.mark.parametrize("short, dtype", [("fp32", "float32"), ("bf16", "bfloat16")])
def test_kernel_benchmark_rows_and_dispatch_choice(dry_run, short, dtype):
    out, _ = dry_run
    rows = json.loads((out / f"paths_{short}.json").read_text())
    assert {(r["batch"], r["k"], r["mode"]) for r in rows} == {
        (b, k, m) for b in (32, 4224) for k in (16, 64) for m in ("fwd", "fwdbwd")}
    for r in rows:
        assert r["dtype"] == dtype
        assert r["rule_picks_fused"] == (math.ceil(r["batch"] / 32) >= 132 and 2 * r["k"] <= 64)
        assert all(t > 0 for t in r["ms"].values()) and set(r["ms"]) == {"fused", "two_gemm", "linear", "rule"}
        assert all(0 < f for f in r["hbm_fraction"].values())


def e2e_report(out: Path) -> dict:
    return json.loads((out / "e2e.json").read_text())


def test_tuning_under_bf16_mixed_succeeds(dry_run):
    report = e2e_report(dry_run[0])
    assert report["tune_failure"] is None, report["tune_failure"]
    # The script's own re-evaluation agrees with the callback's validation of the dense model.
    assert report["dense_val_loss"] == pytest.approx(report["callback_dense_val_loss"], rel=1e-3)


def test_end_to_end_report(dry_run):
    report = e2e_report(dry_run[0])
    assert report["stage"] == "done"
    assert report["dense_val_loss"] > report["val_loss_floor"] - 0.05  # no model beats the entropy rate
    layers = report["sketched_layers"]
    if report["dry_run_fixed_sketch"]:  # nothing kept: every Linear sketched at the smallest rank
        blocks = [f"blocks.{i}.{p}" for i in range(report["args"]["layers"]) for p in ("qkv", "proj", "fc1", "fc2")]
        assert {layer["layer"] for layer in layers} == {*blocks, "head"}
        assert all(layer["k"] == min(report["args"]["ranks"]) for layer in layers)
    else:
        assert layers and {layer["layer"] for layer in layers} == set(report["best_params"])
        assert report["tuned_val_loss"] == pytest.approx(report["callback_tuned_val_loss"], rel=1e-2)
    rows = report["args"]["batch_size"] * report["args"]["seq_len"]  # 128 rows: far too few to fill 132 SMs
    assert rows < 132 * 32 and all(layer["forward_path"] == "two_gemm" for layer in layers)
    assert report["tuned_params"] < report["dense_params"]
    ms = report["speed"]["ms"]
    assert set(ms) == {f"{m}_{v}_ms" for m in ("inference", "train")
                       for v in ("dense", "tuned_kernels_off", "tuned_kernels_on")}
    assert all(t > 0 for t in ms.values())
    assert report["speed"]["inference_speedup_kernels_off"] == pytest.approx(
        ms["inference_dense_ms"] / ms["inference_tuned_kernels_off_ms"])
    assert report["speed"]["kernels_available"] is False  # the CPU has no kernels to turn on
    assert report["train_steps"] == report["args"]["max_steps"] and report["tune_wall_s"] > 0


def test_generated_sequences_follow_the_chain():
    successors = gpu_e2e.markov_successors(vocab=16, seed=0)
    assert all(len(set(row.tolist())) == len(gpu_e2e.SUCCESSOR_PROBS) for row in successors)
    seqs = gpu_e2e.sample_sequences(successors, count=400, length=20, seed=1)
    assert seqs.shape == (400, 21)
    choice = Counter()
    for a, b in zip(seqs[:, :-1].flatten().tolist(), seqs[:, 1:].flatten().tolist(), strict=True):
        row = successors[a].tolist()
        assert b in row
        choice[row.index(b)] += 1
    total = sum(choice.values())
    for i, p in enumerate(gpu_e2e.SUCCESSOR_PROBS):
        assert choice[i] / total == pytest.approx(p, abs=0.02)
    assert gpu_e2e.entropy_rate() == pytest.approx(-sum(p * math.log(p) for p in (0.55, 0.25, 0.12, 0.08)))


def test_kernels_off_hides_the_extension_and_restores_it():
    real = _custom_ops.cuda_extension
    with gpu_e2e.kernels(False) as in_use:
        assert in_use is False and _custom_ops.cuda_extension() is None
    assert _custom_ops.cuda_extension is real
    with gpu_e2e.kernels(True) as in_use:
        assert in_use == (real() is not None) and _custom_ops.cuda_extension is real
