"""Two CPU processes (DDP, gloo) tune together and end with the same sketched model."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ddp_run.py")


def run_two_ranks(tmp_path, calibration_batches: int, strategy: str) -> tuple[list[dict], str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("LOCAL_RANK", None)
    completed = subprocess.run([sys.executable, SCRIPT, str(tmp_path), str(calibration_batches), strategy], env=env,
                               capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)], completed.stdout


@pytest.mark.slow
@pytest.mark.parametrize("calibration_batches", [0, 2])
def test_two_process_ddp_tuning_agrees_across_ranks(tmp_path, calibration_batches):
    ranks, stdout = run_two_ranks(tmp_path, calibration_batches, "search")
    assert ranks[0]["plan"], "a 3-point budget admits a sketch of a 128-wide MLP"
    for key in ("plan", "best_params", "dense_metric", "tuned_metric", "weights"):
        assert ranks[0][key] == ranks[1][key], key
    # the dense score is the rank-synced validation metric of the final epoch
    assert ranks[0]["dense_metric"] == pytest.approx(ranks[0]["final_val_acc"], abs=1e-6)
    assert ranks[0]["tuned_metric"] >= ranks[0]["dense_metric"] - 0.03 - 1e-6
    assert json.loads((tmp_path / "plan.json").read_text()) == ranks[0]["plan"]
    # with calibration both ranks build data-aware sketches from rank 0's batches: same weights
    inits = {layer["params"]["init"] for layer in ranks[0]["plan"].values()}
    assert inits == ({"data_svd"} if calibration_batches else {"svd"})
    # progress and the trials table come from rank 0 only (both ranks share stdout and the output folder)
    assert ranks[0]["trials"] == ranks[1]["trials"] > 0
    # (not anchored at line starts: under load the two ranks' output may interleave within a line)
    assert len(re.findall(r"\[net\.\d\] trial \d+:", stdout)) == ranks[0]["trials"]
    with open(tmp_path / "sketch_trials.csv", newline="") as handle:
        assert len(list(csv.DictReader(handle))) == ranks[0]["trials"]  # one layer per group


@pytest.mark.slow
def test_two_process_allocation_evaluates_the_same_plans_on_both_ranks(tmp_path):
    """Per-layer timings differ per process; rank 0's are broadcast, so both ranks bisect alike."""
    ranks, _ = run_two_ranks(tmp_path, 2, "allocate")
    assert ranks[0]["allocates"] and ranks[1]["allocates"] and ranks[0]["plans"]
    strip = [[{k: v for k, v in plan.items() if k != "duration_s"} for plan in r["plans"]] for r in ranks]
    assert strip[0] == strip[1]
    for key in ("plan", "best_params", "dense_metric", "tuned_metric", "weights"):
        assert ranks[0][key] == ranks[1][key], key
    assert ranks[0]["tuned_metric"] >= ranks[0]["dense_metric"] - 0.03 - 1e-6
