"""Run the trainer's own validation loop on a candidate model without leaving a trace.

``trainer.validate()`` cannot be called from inside ``fit`` hooks: it leaves the trainer in the
VALIDATING state, skips ``on_fit_end``, leaks the candidate's metrics into the user's loggers and
``callback_metrics`` and moves the model to the CPU. Instead we re-run the loop object the trainer
already set up (same dataloaders, device, precision, ``validation_step``) with callbacks, loggers
and the profiler detached, and put every piece of state it touches back afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.seed import isolate_rng

from panther_lightning._compat import (
    batch_limits,
    callback_metrics,
    dump_evaluation_loop,
    dump_logging_state,
    reset_evaluation_loop,
    restore_evaluation_loop,
    restore_logging_state,
)


def evaluation_loop(trainer: pl.Trainer) -> Any:
    """The loop that validates in the trainer's current entry point (``fit`` or ``validate``)."""
    if trainer.state.fn == TrainerFn.FITTING:
        return trainer.fit_loop.epoch_loop.val_loop
    if trainer.state.fn == TrainerFn.VALIDATING:
        return trainer.validate_loop
    raise RuntimeError(f"sketch tuning needs a trainer inside fit() or validate(), not {trainer.state.fn}")


@contextmanager
def detached_trainer(trainer: pl.Trainer) -> Iterator[None]:
    """Detach callbacks, loggers and profiler; restore them, the stage, metrics and RNG on exit."""
    logging_state = dump_logging_state(trainer)
    saved = (trainer.callbacks, trainer.loggers, trainer.profiler, trainer.state.stage)
    trainer.callbacks, trainer.loggers, trainer.profiler = [], [], PassThroughProfiler()
    try:
        with isolate_rng(include_cuda=torch.cuda.is_available()):
            yield
    finally:
        trainer.callbacks, trainer.loggers, trainer.profiler, trainer.state.stage = saved
        restore_logging_state(trainer, logging_state)


def run_validation(trainer: pl.Trainer, max_batches: int | None = None) -> dict[str, Any]:
    """Run one isolated pass of the validation loop; return the metrics it logged (``callback_metrics``).

    ``max_batches`` limits every validation dataloader to its first ``max_batches`` batches.
    Must be called inside :func:`detached_trainer`.
    """
    loop = evaluation_loop(trainer)
    loop_state = dump_evaluation_loop(loop)
    try:
        reset_evaluation_loop(trainer, loop)
        if trainer.state.fn == TrainerFn.FITTING:
            trainer.validating = True
        with batch_limits(loop, max_batches):
            loop.run()
        return callback_metrics(trainer)
    finally:
        restore_evaluation_loop(loop, loop_state)


def read_metric(metrics: dict[str, Any], monitor: str, trainer: pl.Trainer) -> float:
    """The value of ``monitor``, averaged over ranks (a no-op when it was logged with ``sync_dist``)."""
    if monitor not in metrics:
        available = ", ".join(sorted(metrics)) or "none"
        raise KeyError(f"validation did not log {monitor!r} (logged: {available}); "
                       "set `monitor` to a metric your validation_step logs")
    value = torch.as_tensor(metrics[monitor], device=trainer.strategy.root_device).float()
    value = trainer.strategy.reduce(value, reduce_op="mean")
    result = float(value)
    if math.isnan(result):
        raise ValueError(f"validation metric {monitor!r} is NaN")
    return result
