"""After tuning: the tuned model where the user's checkpoints go, so that it is never lost.

``ModelCheckpoint`` writes during the last epoch, before the plan is applied at ``on_train_end``;
without this, ``last.ckpt`` would hold the dense model and only a hand-written
``trainer.save_checkpoint`` would keep the tuned one. So once a plan is applied, a tuned
checkpoint (:data:`TUNED_CHECKPOINT`) is written in the first checkpoint callback's directory and
every ``save_last`` callback's ``last`` checkpoint is rewritten with the tuned model. The epoch
and top-k checkpoints keep the dense weights they were written with (``ckpt_path="best"`` loads
those, and the model's layers follow: :mod:`panther_lightning.checkpoint`).
"""

from __future__ import annotations

import os

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

#: File name of the tuned checkpoint, beside the trainer's other checkpoints.
TUNED_CHECKPOINT = "sketch_tuned.ckpt"


def save_tuned_checkpoints(trainer: pl.Trainer) -> str | None:
    """Write the tuned model as :data:`TUNED_CHECKPOINT` and over every ``last`` checkpoint; the tuned one's path.

    Call on every rank (``trainer.save_checkpoint`` writes on rank 0 and synchronises). Without a
    ``ModelCheckpoint`` (``enable_checkpointing=False``) nothing is written and ``None`` returned.
    A ``save_last="link"`` link is replaced by a file (it pointed at a dense epoch checkpoint).
    """
    callbacks = [c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
    if not callbacks:
        return None
    path = os.path.join(callbacks[0].dirpath, TUNED_CHECKPOINT)
    trainer.save_checkpoint(path)
    written = [path]
    for callback in callbacks:
        last = callback.last_model_path
        if not (callback.save_last and last):
            continue  # ModelCheckpoint.on_train_end, which runs after this, writes a missing last checkpoint
        if trainer.is_global_zero and os.path.islink(last):
            os.remove(last)
        trainer.save_checkpoint(last, weights_only=callback.save_weights_only)
        written.append(last)
    rank_zero_info("SketchTuneCallback: tuned model saved to " + ", ".join(written))
    return path
