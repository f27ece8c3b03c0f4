"""A short recovery fine-tune of a freshly sketched model, out of the trainer's books.

Sketched layers recover most of the accuracy they lose with a little training. This runs the
module's own ``training_step`` with a fresh optimizer from its ``configure_optimizers`` under the
trainer's precision, but outside the fit loop: no epochs or steps are counted, nothing is logged
or checkpointed, and whatever ``training_step`` logs goes into a throw-away result collection.
Call it inside :func:`panther_lightning.isolation.detached_trainer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import lightning.pytorch as pl

from panther_lightning._compat import (
    configured_optimizer,
    dump_training_results,
    logged_training_step,
    reset_training_results,
    restore_training_results,
)


@contextmanager
def outside_fit_loop(trainer: pl.Trainer, pl_module: pl.LightningModule) -> Iterator[None]:
    """Let ``training_step`` run (and ``self.log``) with its logs going to a throw-away collection.

    Restores the fit loop's results, the module's current hook name and every submodule's
    train/eval mode on exit; the trainer's stage and logged metrics are restored by
    :func:`~panther_lightning.isolation.detached_trainer`, which must be active.
    """
    results = dump_training_results(trainer, pl_module)
    modes = [(m, m.training) for m in pl_module.modules()]
    reset_training_results(trainer)
    trainer.training = True
    try:
        yield
    finally:
        restore_training_results(trainer, pl_module, results)
        for module, training in modes:
            module.training = training


def finetune(trainer: pl.Trainer, pl_module: pl.LightningModule, batches: Iterable[Any], epochs: int) -> None:
    """Train ``pl_module`` for ``epochs`` passes over ``batches`` (its first optimizer, no schedulers)."""
    if not pl_module.automatic_optimization:
        raise ValueError("finetune_epochs needs automatic optimization (training_step returning the loss)")
    optimizer = configured_optimizer(pl_module)
    try:
        with outside_fit_loop(trainer, pl_module):
            pl_module.train()
            for _ in range(epochs):
                for batch_idx, batch in enumerate(batches):
                    batch = trainer.strategy.batch_to_device(batch)
                    with logged_training_step(trainer, pl_module, batch):
                        trainer.precision_plugin.optimizer_step(
                            optimizer, pl_module,
                            lambda b=batch, i=batch_idx: _train_step(trainer, pl_module, optimizer, b, i))
    finally:
        pl_module.zero_grad(set_to_none=True)


def _train_step(trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any, batch: Any,
                batch_idx: int) -> Any:
    optimizer.zero_grad()
    with trainer.precision_plugin.train_step_context():
        output = pl_module.training_step(batch, batch_idx)
    loss = output["loss"] if isinstance(output, Mapping) else output
    if loss is None:
        raise ValueError("training_step returned no loss; finetune_epochs cannot train this module")
    trainer.strategy.backward(loss, optimizer)
    return loss
