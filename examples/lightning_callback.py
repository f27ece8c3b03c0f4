"""Sketch tuning as a Trainer callback: train, then swap in faster low-rank layers.

    python examples/lightning_callback.py

Trains an MLP with a 1024-wide hidden layer on the scikit-learn digits (offline, ~20 s on a CPU), then
``SketchTuneCallback`` with its defaults weighs every Linear layer's options (sketch ranks, int8,
sketch with int8 factors) on a few training batches and bisects one whole-model plan, scoring each
with the trainer's own validation loop and timing it on real validation batches; it keeps the
fastest plan that loses at most 2 points of validation accuracy. The plan is saved next to the
logs, and the tuned checkpoint the callback writes beside the trainer's checkpoints (``last.ckpt``
holds the tuned model too) loads back into the plain model class.
"""

from __future__ import annotations

import os
import sys
import tempfile

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_lightning import DigitsClassifier, DigitsDataModule  # noqa: E402

from panther_lightning import SketchTuneCallback, load_sketched_checkpoint  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    root = tempfile.mkdtemp(prefix="panther_callback_")
    callback = SketchTuneCallback(monitor="val_acc", max_drop=0.02, objective="speed", calibration_batches=4,
                                  verbose=False)
    checkpoints = ModelCheckpoint(dirpath=os.path.join(root, "checkpoints"), monitor="val_acc", mode="max",
                                  save_last=True)
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", logger=CSVLogger(root), callbacks=[checkpoints, callback],
                         enable_progress_bar=False, enable_model_summary=False)
    model = DigitsClassifier(hidden=1024)
    trainer.fit(model, DigitsDataModule())

    print("\nTuning results\n" + callback.tuner.summary())
    print("\nApplied parameters:", callback.best_params or "none (kept dense)")
    print("Plan written to:", callback.plan_file)

    path = callback.tuned_checkpoint_path  # None when the model stayed dense
    if path is None:
        return
    reloaded = load_sketched_checkpoint(DigitsClassifier, path)
    x = torch.rand(8, 64)
    model.eval()
    with torch.no_grad():
        same = torch.equal(model(x), reloaded(x))
    print(f"checkpoint {path} reloads into the plain class with identical outputs: {same}")
    print(f"{checkpoints.last_model_path} holds the tuned model as well; {checkpoints.best_model_path} the dense "
          "weights of its epoch")


if __name__ == "__main__":
    main()
