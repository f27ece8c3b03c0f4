"""Fixtures for the Lightning integration tests: the digits example module, trained briefly."""

from __future__ import annotations

import csv
import glob
import os
import sys
import warnings
from typing import Any

import pytest
import torch

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
sys.path.insert(0, os.path.abspath(EXAMPLES))

import lightning.pytorch as pl  # noqa: E402
from digits_lightning import DigitsClassifier, DigitsDataModule  # noqa: E402
from lightning.pytorch.loggers import CSVLogger  # noqa: E402

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*litlogger.*|.*litmodels.*")


def make_trainer(root: str, callbacks: list[pl.Callback] = (), **kwargs: Any) -> pl.Trainer:
    """A small, quiet, deterministic CPU trainer logging to ``root`` with a CSVLogger."""
    options: dict[str, Any] = dict(max_epochs=2, accelerator="cpu", devices=1, logger=CSVLogger(root),
                                   enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                                   log_every_n_steps=5,
                                   default_root_dir=root)
    options.update(kwargs)
    return pl.Trainer(callbacks=list(callbacks), **options)


def fit_digits(root: str, callbacks: list[pl.Callback], hidden: int = 128, **trainer_kwargs: Any) -> tuple:
    """``(trainer, model)`` after a seeded 2-epoch fit of a fresh ``DigitsClassifier(hidden)``."""
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(root, callbacks, **trainer_kwargs)
    model = DigitsClassifier(hidden=hidden)
    trainer.fit(model, DigitsDataModule())
    return trainer, model


def metrics_path(root: str) -> str:
    """The CSVLogger's ``metrics.csv`` of the single run logged under ``root``."""
    (path,) = glob.glob(os.path.join(root, "lightning_logs", "version_*", "metrics.csv"))
    return path


def metrics_rows(root: str) -> list[dict[str, str]]:
    with open(metrics_path(root), newline="") as handle:
        return list(csv.DictReader(handle))


def without_sketch_columns(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Logged rows minus the tuning summary (its values depend on the sketches chosen)."""
    kept = [{k: v for k, v in row.items() if not k.startswith("sketch/")} for row in rows]
    return [row for row in kept if any(v for k, v in row.items() if k not in ("epoch", "step"))]


def accuracy(model: torch.nn.Module, datamodule: DigitsDataModule, batches: int = -1) -> float:
    """Validation accuracy computed by hand, independently of Lightning."""
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for i, (x, y) in enumerate(datamodule.val_dataloader()):
            if i == batches:
                break
            correct += int((model(x).argmax(-1) == y).sum())
            total += len(y)
    return correct / total


@pytest.fixture
def datamodule() -> DigitsDataModule:
    dm = DigitsDataModule(batch_size=64)
    dm.setup()
    return dm


@pytest.fixture
def model() -> DigitsClassifier:
    pl.seed_everything(0, verbose=False)
    return DigitsClassifier(hidden=128)
