"""Run the trainer's own validation loop on a candidate model without leaving a trace.

``trainer.validate()`` cannot be called from inside ``fit`` hooks: it leaves the trainer in the
VALIDATING state, skips ``on_fit_end``, leaks the candidate's metrics into the user's loggers and
``callback_metrics`` and moves the model to the CPU. Instead we re-run the loop object the trainer
already set up (same dataloaders, device, precision, ``validation_step``) with callbacks, loggers
and the profiler detached, and put every piece of state it touches back afterwards.
"""

from __future__ import annotations

import copy
import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.seed import isolate_rng

_LOGGER_CONNECTOR_FIELDS = ("_progress_bar_metrics", "_logged_metrics", "_callback_metrics")


def evaluation_loop(trainer: "pl.Trainer"):
    """The loop that validates in the trainer's current entry point (``fit`` or ``validate``)."""
    if trainer.state.fn == TrainerFn.FITTING:
        return trainer.fit_loop.epoch_loop.val_loop
    if trainer.state.fn == TrainerFn.VALIDATING:
        return trainer.validate_loop
    raise RuntimeError(f"sketch tuning needs a trainer inside fit() or validate(), not {trainer.state.fn}")


@contextmanager
def detached_trainer(trainer: "pl.Trainer") -> Iterator[None]:
    """Detach callbacks, loggers and profiler; restore them, the stage, metrics and RNG on exit."""
    connector = trainer._logger_connector
    saved_metrics = {name: dict(getattr(connector, name)) for name in _LOGGER_CONNECTOR_FIELDS}
    saved = (trainer.callbacks, trainer.loggers, trainer.profiler, trainer.state.stage,
             connector._first_loop_iter, connector._current_fx, getattr(trainer, "_last_val_time", None))
    trainer.callbacks, trainer.loggers, trainer.profiler = [], [], PassThroughProfiler()
    try:
        with isolate_rng(include_cuda=torch.cuda.is_available()):
            yield
    finally:
        (trainer.callbacks, trainer.loggers, trainer.profiler, trainer.state.stage,
         connector._first_loop_iter, connector._current_fx, last_val_time) = saved
        if last_val_time is not None:
            trainer._last_val_time = last_val_time
        for name, value in saved_metrics.items():
            setattr(connector, name, value)


def run_validation(trainer: "pl.Trainer", max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Run one isolated pass of the validation loop; return the metrics it logged (``callback_metrics``).

    ``max_batches`` limits every validation dataloader to its first ``max_batches`` batches.
    Must be called inside :func:`detached_trainer`.
    """
    loop = evaluation_loop(trainer)
    loop_state, restarting = copy.deepcopy(loop.state_dict()), loop.restarting
    saved = {name: getattr(loop, name) for name in
             ("_results", "_data_fetcher", "_module_mode", "_last_val_dl_reload_epoch", "_logged_outputs", "_has_run")}
    trainer._logger_connector._callback_metrics = {}
    loop._results = _ResultCollection(training=False)
    loop._module_mode = copy.copy(loop._module_mode)
    loop._module_mode.mode = dict(loop._module_mode.mode)
    full_limits = None
    try:
        if trainer.state.fn == TrainerFn.FITTING:
            trainer.validating = True
        loop.restarting = False  # a restored loop resumes mid-epoch: it would skip most batches
        loop.setup_data()  # a no-op once the fit loop has loaded its validation data
        full_limits = list(loop._max_batches)
        if not full_limits:
            raise RuntimeError("sketch tuning needs validation data: the trainer has no validation batches")
        if max_batches is not None:
            loop._max_batches = [min(n, max_batches) for n in full_limits]
        loop.setup_data = lambda: None  # type: ignore[method-assign]  # keep the limits set above
        try:
            loop.run()
        finally:
            del loop.setup_data
        metrics = dict(trainer._logger_connector._callback_metrics)
    finally:
        for name, value in saved.items():
            setattr(loop, name, value)
        if full_limits is not None:
            loop._max_batches = full_limits
        loop.load_state_dict(loop_state)
        loop.restarting = restarting  # load_state_dict sets it; a set flag makes later passes see 1 batch
    return metrics


def read_metric(metrics: Dict[str, Any], monitor: str, trainer: "pl.Trainer") -> float:
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
