"""Sketch tuning of an already trained model with ``SketchTuner`` (Lightning's Tuner + sketch_tune).

    python examples/lightning_tuner_hook.py

``SketchTuner(trainer)`` still offers ``lr_find`` and ``scale_batch_size``; ``sketch_tune`` runs one
validation pass of the trained model and tunes at its end, on the trainer's device and precision.
Here the objective is size (fewest stored bytes) within 1 point of accuracy, followed by a one-epoch
recovery fine-tune of the sketched model.
"""

from __future__ import annotations

import os
import sys
import tempfile

import lightning.pytorch as pl
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_lightning import DigitsClassifier, DigitsDataModule  # noqa: E402

from panther_lightning import SketchTuner  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    datamodule = DigitsDataModule()
    trainer = pl.Trainer(max_epochs=5, accelerator="cpu", default_root_dir=tempfile.mkdtemp(prefix="panther_tuner_"),
                         enable_progress_bar=False, enable_model_summary=False)
    model = DigitsClassifier(hidden=256)
    tuner = SketchTuner(trainer)  # Lightning's Tuner (lr_find, scale_batch_size) plus sketch_tune
    finder = tuner.lr_find(model, datamodule=datamodule, num_training=30, update_attr=False)
    print(f"lr_find suggests lr={finder.suggestion():.2e} (training with lr={model.hparams.lr})")

    trainer.fit(model, datamodule=datamodule)
    # sketch_tune returns the SKAutoTuner that ran the search (per-layer trials and results)
    autotuner = tuner.sketch_tune(model, datamodule=datamodule, monitor="val_acc", max_drop=0.01, objective="size",
                                  n_trials=10, finetune_epochs=1, verbose=False)

    print("\nPer-layer search results\n" + autotuner.summary())
    print("\nThe model now holds:\n", model.net)


if __name__ == "__main__":
    main()
