"""Calibration batches for data-aware sketches (``init="data_svd"``), taken from the trainer's training data.

``SKAutoTuner`` measures each tuned layer's input covariance once, by running calibration batches
through the dense model with forward pre-hooks on the layers. Here a batch is run by the module's
own ``training_step`` (so the layers see exactly the inputs training gives them, whatever the
module does between batch and layers) under ``no_grad``, in eval mode, outside the fit loop: its
``self.log`` calls go to a throw-away collection and no optimizer, counter or logger is touched.

Under DDP every rank calibrates on rank 0's batches (broadcast), so all ranks build identical
sketches from identical covariances, as the tuner's candidate check requires.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from panther_lightning._compat import logged_training_step
from panther_lightning.finetune import outside_fit_loop

#: One calibration item: ``(batch_idx, batch)``, so ``training_step`` gets its real batch index.
IndexedBatch = tuple[int, Any]


def first_batches(batches: Iterable[Any], count: int) -> list[IndexedBatch]:
    """The first ``count`` batches, with the loader's shuffling generator left where it was.

    Reading a shuffled ``DataLoader`` advances its ``generator``; restoring it keeps the batches
    any later epoch (or a second read) sees the same as without calibration.
    """
    generators = {id(g): g for g in (getattr(batches, "generator", None),
                                     getattr(getattr(batches, "sampler", None), "generator", None))
                  if isinstance(g, torch.Generator)}
    states = {key: g.get_state() for key, g in generators.items()}
    try:
        taken = list(itertools.islice(iter(batches), count))
    finally:
        for key, g in generators.items():
            g.set_state(states[key])
    if not taken:
        raise ValueError("calibration_batches: the training dataloader yielded no batches")
    return list(enumerate(taken))


def calibration_batches(trainer: pl.Trainer, batches: Iterable[Any], count: int) -> list[IndexedBatch]:
    """Rank 0's first ``count`` training batches, on every rank (still on the loader's device)."""
    taken = first_batches(batches, count)
    if trainer.world_size > 1:
        taken = trainer.strategy.broadcast(taken, src=0)
    return taken


def training_step_forward(trainer: pl.Trainer) -> Callable[[nn.Module, IndexedBatch], None]:
    """``f(pl_module, (batch_idx, batch))`` running ``training_step`` without side effects.

    Must be called inside :func:`~panther_lightning.isolation.detached_trainer` (the tuning session
    is), which restores the trainer's stage and logged metrics.
    """
    def forward(pl_module: nn.Module, item: IndexedBatch) -> None:
        batch_idx, batch = item
        batch = trainer.strategy.batch_to_device(batch)
        with (torch.no_grad(), outside_fit_loop(trainer, pl_module), trainer.precision_plugin.train_step_context(),
              logged_training_step(trainer, pl_module, batch)):
            pl_module.training_step(batch, batch_idx)

    return forward
