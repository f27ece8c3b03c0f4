"""``SketchTuner``: Lightning's ``Tuner`` plus ``sketch_tune`` for an already trained model."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.tuner import Tuner
from lightning.pytorch.utilities.types import EVAL_DATALOADERS, TRAIN_DATALOADERS

from panther.tuner import SKAutoTuner
from panther.tuner.search import SearchAlgorithm
from panther_lightning.callback import SketchTuneCallback, check_trainer_can_tune, nothing_to_tune
from panther_lightning.options import (
    ConfigsLike,
    Mode,
    Objective,
    SketchTuneOptions,
    SpeedMode,
    Strategy,
    document_options,
)
from panther_lightning.session import SketchTuneReport


class SketchTuner(Tuner):
    """``Tuner(trainer)`` with :meth:`sketch_tune`; ``lr_find`` and ``scale_batch_size`` work as usual.

    Example::

        trainer.fit(model, datamodule=dm)
        tuner = SketchTuner(trainer)
        autotuner = tuner.sketch_tune(model, datamodule=dm, max_drop=0.01)  # the SKAutoTuner that searched
        print(autotuner.summary())  # per-layer trials; tuner.report: dense versus tuned model
    """

    def __init__(self, trainer: pl.Trainer) -> None:
        super().__init__(trainer)
        self._sketch_trainer = trainer  # Tuner keeps its own reference private
        self.report: SketchTuneReport | None = None  # set by sketch_tune
        self.plan_file: str | None = None
        self.trials_file: str | None = None
        self.tuned_checkpoint_path: str | None = None

    @document_options
    def sketch_tune(
        self,
        model: pl.LightningModule,
        datamodule: pl.LightningDataModule | None = None,
        train_dataloaders: TRAIN_DATALOADERS | None = None,
        val_dataloaders: EVAL_DATALOADERS | None = None,
        *,
        configs: ConfigsLike | None = None,
        monitor: str = "val_acc",
        mode: Mode = "max",
        accuracy_threshold: float | None = None,
        max_drop: float | None = None,
        objective: Objective = "speed",
        speed_mode: SpeedMode = "inference",
        n_trials: int | None = None,
        search_algorithm: SearchAlgorithm | None = None,
        seed: int = 0,
        screen_batches: int | None = None,
        speed_batches: int = 4,
        timing_repeats: int = 15,
        tie_tolerance: float = 0.05,
        max_total_trials: int | None = None,
        time_budget_s: float | None = None,
        finetune_epochs: int = 0,
        calibration_batches: int = 0,
        share_accuracy_drop: bool = True,
        strategy: Strategy = "auto",
        trainable: bool = False,
        plan_path: str | None = None,
        verbose: bool = True,
    ) -> SKAutoTuner:
        """Tune and apply sketched layers to a trained ``model`` in place; return the ``SKAutoTuner`` that searched.

        Runs one ``trainer.validate`` pass (logged as usual) and tunes at its end, so candidates
        are scored by the trainer's validation loop on its device and precision. The options are
        those of :class:`~panther_lightning.SketchTuneCallback`, with the same defaults.
        The report, the plan file and the trials table (``sketch_trials.csv`` beside it) are
        available as ``self.report``, ``self.plan_file`` and ``self.trials_file``. While it tunes,
        a progress bar follows the trainer's ``enable_progress_bar``.
        Configs that select nothing sketchable raise ``ValueError`` before validation runs; if
        tuning fails, the model's dense layers are put back before the error propagates.

        Args:
            model: the trained LightningModule; its layers are replaced in place.
            datamodule: validation (and training) data; not with dataloaders.
            train_dataloaders: training data, only needed for ``finetune_epochs`` and ``calibration_batches``.
            val_dataloaders: validation data scoring the candidates (or pass ``datamodule``).
        """
        if datamodule is not None and (train_dataloaders is not None or val_dataloaders is not None):
            raise ValueError("pass a datamodule or dataloaders, not both")
        if datamodule is None and val_dataloaders is None:
            raise ValueError("sketch_tune needs validation data: pass val_dataloaders or a datamodule")
        opts = SketchTuneOptions.from_arguments(locals())
        trainer = self._sketch_trainer
        check_trainer_can_tune(trainer, model, opts)
        reason = nothing_to_tune(model, opts)
        if reason is not None:
            raise ValueError(f"sketch_tune has nothing to tune: {reason}")
        train_source = _train_source(datamodule, train_dataloaders)
        if train_source is None and (opts.calibration_batches or opts.finetune_epochs):
            raise ValueError("calibration_batches and finetune_epochs need training data: "
                             "pass train_dataloaders or a datamodule")
        # As Tuner.lr_find runs LearningRateFinder: the callback's own code path, for one validate pass.
        callback = SketchTuneCallback(**{option.name: getattr(opts, option.name) for option in fields(opts)})
        callback.tune_at_validation_end(train_source)
        trainer.callbacks.append(callback)
        try:
            trainer.validate(model, dataloaders=val_dataloaders, datamodule=datamodule, verbose=False)
        finally:
            trainer.callbacks.remove(callback)
        if callback.report is None or callback.tuner is None:
            raise RuntimeError("the validation pass did not run; check limit_val_batches and the dataloaders")
        self.report, self.plan_file, self.trials_file = callback.report, callback.plan_file, callback.trials_file
        self.tuned_checkpoint_path = callback.tuned_checkpoint_path
        return callback.tuner


def _train_source(datamodule: pl.LightningDataModule | None, train_dataloaders: TRAIN_DATALOADERS | None
                  ) -> Callable[[], Iterable[Any]] | None:
    """Where the session reads training batches from (each call a fresh iterable), if anywhere."""
    if train_dataloaders is not None:
        return lambda: train_dataloaders
    if datamodule is not None:
        return datamodule.train_dataloader
    return None
