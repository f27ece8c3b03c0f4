"""Every private Lightning name ``panther_lightning`` touches, behind named dump / reset / restore helpers.

Scoring a candidate with the trainer's own validation loop from inside ``fit``, and running
``training_step`` outside the fit loop, needs state Lightning keeps private: the logger
connector's metric dicts, the loops' result collections and batch limits, the module's current
hook name. As Lightning's own ``__lr_finder_dump_params`` / ``reset`` / ``restore`` do
(``lightning/pytorch/tuner/lr_finder.py``), each ``dump_*`` here saves one piece of that state,
``reset_*`` replaces it and ``restore_*`` puts it back; no other module names a private attribute.

:data:`PRIVATE_IMPORTS` and :data:`PRIVATE_ATTRIBUTES` list what these helpers rely on, and
``tests/lightning/test_compat.py`` checks each against the installed Lightning, so an upgrade that
renames one fails there, by name, and not somewhere inside a tuning run. ``pyproject.toml`` bounds
``lightning`` to the versions that test has passed on.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.utilities.cloud_io import _load
from lightning.pytorch.core.optimizer import _init_optimizers_and_lr_schedulers
from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection
from torch.optim import Optimizer

#: The logger connector's metric dicts: a validation pass overwrites all three.
_CONNECTOR_METRICS = ("_progress_bar_metrics", "_logged_metrics", "_callback_metrics")
#: The connector's per-hook bookkeeping, changed by every logged step.
_CONNECTOR_HOOK_STATE = ("_first_loop_iter", "_current_fx")
#: What one extra pass of an evaluation loop changes besides its progress (``state_dict``).
_EVALUATION_LOOP_STATE = ("_results", "_data_fetcher", "_module_mode", "_last_val_dl_reload_epoch",
                          "_logged_outputs", "_has_run")

#: Private names imported from Lightning, by module.
PRIVATE_IMPORTS: dict[str, tuple[str, ...]] = {
    "lightning.fabric.utilities.cloud_io": ("_load",),
    "lightning.pytorch.core.optimizer": ("_init_optimizers_and_lr_schedulers",),
    "lightning.pytorch.trainer.connectors.logger_connector.result": ("_ResultCollection",),
}
#: Private (or patched) attributes the helpers use, by the object holding them, written as a path from
#: the trainer as it is inside ``fit`` (``trainer._last_val_time`` only exists once ``fit`` started).
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "trainer": ("_logger_connector", "_last_val_time"),
    "trainer._logger_connector": _CONNECTOR_METRICS + _CONNECTOR_HOOK_STATE + ("on_batch_start", "on_batch_end"),
    "trainer.fit_loop.epoch_loop": ("_results",),
    "trainer.fit_loop.epoch_loop.val_loop": _EVALUATION_LOOP_STATE + ("_max_batches", "setup_data"),
    "trainer.fit_loop.epoch_loop.val_loop._module_mode": ("mode",),
    "trainer.validate_loop": _EVALUATION_LOOP_STATE + ("_max_batches", "setup_data"),
    "trainer.lightning_module": ("_current_fx_name",),
}


# -- the trainer's logged metrics (detached_trainer) --------------------------------------------------
def dump_logging_state(trainer: pl.Trainer) -> dict[str, Any]:
    """Copies of the logged metrics and the hook bookkeeping that validation and training steps overwrite."""
    connector = trainer._logger_connector
    state: dict[str, Any] = {name: dict(getattr(connector, name)) for name in _CONNECTOR_METRICS}
    state.update({name: getattr(connector, name) for name in _CONNECTOR_HOOK_STATE})
    # read by time-based val_check_interval; only set once fit has started
    state["_last_val_time"] = getattr(trainer, "_last_val_time", None)
    return state


def restore_logging_state(trainer: pl.Trainer, state: dict[str, Any]) -> None:
    """Undo every logging side effect since :func:`dump_logging_state` returned ``state``."""
    connector = trainer._logger_connector
    for name in _CONNECTOR_METRICS + _CONNECTOR_HOOK_STATE:
        setattr(connector, name, state[name])
    if state["_last_val_time"] is not None:
        trainer._last_val_time = state["_last_val_time"]


def callback_metrics(trainer: pl.Trainer) -> dict[str, Any]:
    """A copy of the metrics logged so far, as stored (``trainer.callback_metrics`` would first merge the
    active loop's results into them)."""
    return dict(trainer._logger_connector._callback_metrics)


# -- one isolated pass of an evaluation loop (run_validation) ----------------------------------------
def dump_evaluation_loop(loop: Any) -> dict[str, Any]:
    """What one more ``loop.run()`` changes: its progress, restart flag and private run state."""
    state = {name: getattr(loop, name) for name in _EVALUATION_LOOP_STATE}
    state.update(state_dict=copy.deepcopy(loop.state_dict()), restarting=loop.restarting)
    return state


def reset_evaluation_loop(trainer: pl.Trainer, loop: Any) -> None:
    """Prepare ``loop`` for a pass whose logs and module-mode record are thrown away afterwards."""
    trainer._logger_connector._callback_metrics = {}
    loop._results = _ResultCollection(training=False)
    loop._module_mode = copy.copy(loop._module_mode)  # run() records into it: keep the fit loop's record
    loop._module_mode.mode = dict(loop._module_mode.mode)
    loop.restarting = False  # a restored loop resumes mid-epoch: it would skip most batches


def restore_evaluation_loop(loop: Any, state: dict[str, Any]) -> None:
    """Put back what :func:`dump_evaluation_loop` saved."""
    for name in _EVALUATION_LOOP_STATE:
        setattr(loop, name, state[name])
    loop.load_state_dict(state["state_dict"])
    loop.restarting = state["restarting"]  # load_state_dict sets it; a set flag makes later passes see 1 batch


@contextmanager
def batch_limits(loop: Any, max_batches: int | None) -> Iterator[None]:
    """Load ``loop``'s data and, for the block, cap every dataloader at ``max_batches`` (``None``: no cap).

    ``loop.run()`` calls ``setup_data`` again, which would recompute the limits, so the block sees
    it as a no-op (an instance attribute shadowing the method); the limits are uncapped on exit.
    """
    loop.setup_data()  # a no-op once the fit loop has loaded its validation data
    full_limits = list(loop._max_batches)
    if not full_limits:
        raise RuntimeError("sketch tuning needs validation data: the trainer has no validation batches")
    if max_batches is not None:
        loop._max_batches = [min(n, max_batches) for n in full_limits]
    loop.setup_data = lambda: None  # keep the limits set above
    try:
        yield
    finally:
        del loop.setup_data
        loop._max_batches = full_limits


# -- training_step outside the fit loop (finetune, calibration) --------------------------------------
def dump_training_results(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """The fit loop's result collection and the module's current hook name, which a step replaces."""
    return {"results": trainer.fit_loop.epoch_loop._results, "fx_name": pl_module._current_fx_name}


def reset_training_results(trainer: pl.Trainer) -> None:
    """Send what ``training_step`` logs to a fresh, throw-away collection."""
    trainer.fit_loop.epoch_loop._results = _ResultCollection(training=True)


def restore_training_results(trainer: pl.Trainer, pl_module: pl.LightningModule, state: dict[str, Any]) -> None:
    """Put back what :func:`dump_training_results` saved."""
    trainer.fit_loop.epoch_loop._results = state["results"]
    pl_module._current_fx_name = state["fx_name"]


@contextmanager
def logged_training_step(trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> Iterator[None]:
    """Around one ``training_step``: the connector's batch bookkeeping, so that ``self.log`` works there."""
    connector = trainer._logger_connector
    connector.on_batch_start(batch)
    pl_module._current_fx_name = "training_step"
    yield
    connector.on_batch_end()


def configured_optimizer(pl_module: pl.LightningModule) -> Optimizer:
    """The first optimizer of ``configure_optimizers``, read as the trainer reads it (schedulers dropped)."""
    return _init_optimizers_and_lr_schedulers(pl_module)[0][0]


# -- checkpoints ---------------------------------------------------------------------------------
def load_checkpoint_file(path: str | os.PathLike, map_location: Any = None,
                         weights_only: bool | None = None) -> dict[str, Any]:
    """A checkpoint read as ``load_from_checkpoint`` reads it (local or remote path, same ``weights_only``)."""
    return _load(path, map_location=map_location, weights_only=weights_only)
