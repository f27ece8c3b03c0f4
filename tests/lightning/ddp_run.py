"""Run by test_ddp.py as ``python ddp_run.py OUT_DIR [CALIBRATION_BATCHES [STRATEGY]]``: 2 CPU processes
(gloo) tune together. ``search`` (default): 3 trials per layer, size objective; ``allocate``: the
callback's default whole-model allocation with the speed objective (per-rank timings).

Lightning's DDP launcher starts this script a second time for rank 1; each rank writes what it
ended with to ``OUT_DIR/rank<k>.json`` so the test can compare them.
"""

import hashlib
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples"))
torch.set_num_threads(1)

import lightning.pytorch as pl  # noqa: E402
from digits_lightning import DigitsClassifier, DigitsDataModule  # noqa: E402

from panther_lightning import SketchTuneCallback  # noqa: E402


def main(out_dir: str, calibration_batches: int, strategy: str) -> None:
    pl.seed_everything(0, verbose=False)
    tuning = dict(n_trials=3, objective="size") if strategy == "search" else dict(objective="speed")
    callback = SketchTuneCallback(max_drop=0.03, verbose=True, calibration_batches=calibration_batches,
                                  plan_path=os.path.join(out_dir, "plan.json"), **tuning)
    trainer = pl.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         callbacks=[callback], default_root_dir=out_dir)
    # allocation prices by measured time: layers wide enough that sketches and int8 beat dense on a loaded machine
    model = DigitsClassifier(hidden=128 if strategy == "search" else 512)
    trainer.fit(model, DigitsDataModule())
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor):
            digest.update(key.encode() + value.detach().cpu().numpy().tobytes())
    result = {"rank": trainer.global_rank, "plan": callback.report.plan, "best_params": callback.best_params,
              "dense_metric": callback.report.dense_metric, "tuned_metric": callback.report.tuned_metric,
              "final_val_acc": float(trainer.callback_metrics["val_acc"]), "weights": digest.hexdigest(),
              "trials": len(callback.tuner.results.records),
              "plans": [plan.to_dict() for plan in callback.tuner.results.plans],
              "allocates": callback.tuner.allocates}
    with open(os.path.join(out_dir, f"rank{trainer.global_rank}.json"), "w") as handle:
        json.dump(result, handle)
    if torch.distributed.is_initialized():  # an orderly gloo shutdown: exiting with it alive can abort
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 0, sys.argv[3] if len(sys.argv) > 3 else "search")
