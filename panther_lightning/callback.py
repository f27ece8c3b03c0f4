"""``SketchTuneCallback``: at the end of ``fit``, replace dense layers by tuned sketched layers."""

from __future__ import annotations

import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from panther.tuner import SKAutoTuner
from panther.tuner.results import TuningResults
from panther.tuner.search import SearchAlgorithm
from panther_lightning.checkpoint import install_sketch_loading
from panther_lightning.options import (
    ConfigsLike,
    Mode,
    Objective,
    SketchTuneOptions,
    SpeedMode,
    Strategy,
    document_options,
)
from panther_lightning.reporting import write_trials
from panther_lightning.session import SketchTuneReport, SketchTuneSession, publish, write_plan


def check_trainer_can_tune(trainer: pl.Trainer, pl_module: pl.LightningModule, options: SketchTuneOptions) -> None:
    """Fail before any work when the set-up cannot produce the monitored metric."""
    if not is_overridden("validation_step", pl_module):
        raise ValueError(f"sketch tuning scores candidates with validation_step, which "
                         f"{type(pl_module).__name__} does not define")
    if trainer.limit_val_batches == 0:
        raise ValueError("sketch tuning needs validation batches, but limit_val_batches=0")
    if options.time_budget_s is not None and trainer.world_size > 1:
        raise ValueError("time_budget_s cannot be used with several processes: ranks would stop after different "
                         "trials and wait for each other forever; use max_total_trials instead")
    if options.finetune_epochs and not pl_module.automatic_optimization:
        raise ValueError("finetune_epochs needs automatic optimization (training_step returning the loss)")
    if options.calibration_batches and not (is_overridden("training_step", pl_module)
                                            and pl_module.automatic_optimization):
        raise ValueError("calibration_batches runs training_step on training batches; it needs a training_step "
                         "with automatic optimization (a manual-optimization step would update the weights)")


def nothing_to_tune(pl_module: pl.LightningModule, options: SketchTuneOptions) -> str | None:
    """Why none of ``pl_module``'s layers can be tuned with ``options.configs``, or ``None`` if some can.

    Runs the tuner's own config resolution on the (dense) module, before any training, so that a
    selector matching nothing sketchable is reported at ``setup`` and not after the last epoch. The
    resolution's warnings (layers skipped, and why) are shown to the user here.
    """
    calibration = [] if options.calibration_batches else None  # only whether data-aware init is on
    try:
        tuner = SKAutoTuner(pl_module, options.configs, lambda model: 0.0, calibration_data=calibration,
                            search_algorithm=options.search_algorithm)
    except ValueError as exc:
        return str(exc)
    if not tuner.results.groups:
        skipped = "; ".join(f"{name}: {why}" for name, why in list(tuner.results.skipped.items())[:5])
        return "the configs select no layer worth sketching" + (f" ({skipped})" if skipped else "")
    return None


def why_dense(report: SketchTuneReport, results: TuningResults) -> str:
    """The reason a finished tuning run kept no sketch, for the one warning the user gets."""
    if report.rejected:
        return report.rejected
    failed = [r for r in results.records if r.status == "failed"]
    if results.records and len(failed) == len(results.records):
        return f"every trial failed (last error: {failed[-1].error})"
    return f"no trial kept {report.monitor} within the bound ({report.threshold_metric:.4f})"


@document_options
class SketchTuneCallback(Callback):
    """Tune sketched replacements of the model's layers when training ends, and keep the best.

    At ``on_train_end`` (the model is still on its device) the dense model is scored by the
    trainer's own validation loop, an Optuna search proposes sketched layers, each candidate is
    scored the same way (trainer state, logs and checkpoints are left untouched) and timed on real
    validation inputs, and the best plan that keeps ``monitor`` within bounds is applied to the
    LightningModule. Afterwards ``callback.tuner`` is the ``SKAutoTuner`` used,
    ``callback.best_params`` the applied parameters and ``callback.report`` a summary;
    ``callback.plan_file`` and ``callback.trials_file`` (every trial, ``sketch_trials.csv``) are in
    the log directory. While it tunes, a progress bar follows the trainer's ``enable_progress_bar``.

    Tuning never costs the finished training run: if the configs select nothing that can be
    sketched, ``setup`` warns (before the first epoch) and tuning is skipped; if tuning fails, the
    callback warns with the error, puts the trained dense layers back and ``fit`` ends normally
    (``callback.failure`` holds the error). Only ``KeyboardInterrupt`` (model restored) propagates.

    Every option is documented on :class:`~panther_lightning.options.SketchTuneOptions`;
    :func:`~panther_lightning.options.document_options` lists them below, under ``Args``.
    """

    def __init__(
        self,
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
        plan_path: str | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__()
        self.options = SketchTuneOptions.from_arguments(locals())
        self.tuner: SKAutoTuner | None = None
        self.report: SketchTuneReport | None = None
        self.plan_file: str | None = None
        self.trials_file: str | None = None
        self._restored_report: dict[str, Any] | None = None
        #: Why tuning was skipped (found at setup) or failed; ``None`` when it ran.
        self.failure: str | None = None
        self._nothing_to_tune: str | None = None
        self._monitor_checked = False

    @property
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.options.monitor, mode=self.options.mode)

    @property
    def best_params(self) -> dict[str, dict[str, Any]]:
        """The parameters applied to the model (empty before tuning or if nothing was kept)."""
        if self.report is not None:
            return self.report.best_params
        return dict((self._restored_report or {}).get("best_params", {}))

    @property
    def done(self) -> bool:
        """Whether this callback already tuned the model (in this run or the checkpointed one)."""
        return self.report is not None or self._restored_report is not None

    # -- hooks -----------------------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Runs before a checkpoint's weights are loaded: a sketched checkpoint must load into the dense module.
        install_sketch_loading(pl_module)
        if stage == "fit":
            check_trainer_can_tune(trainer, pl_module, self.options)
            if not self.done:
                self._nothing_to_tune = nothing_to_tune(pl_module, self.options)
            if self._nothing_to_tune is not None:
                rank_zero_warn(f"SketchTuneCallback: nothing to tune, the model will stay dense: "
                               f"{self._nothing_to_tune}")

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Check on the first validation of ``fit`` (the sanity check, if any) that ``monitor`` is logged.

        As ``EarlyStopping`` does: a misnamed metric should stop the run before training, not be
        found when the trained model is about to be tuned.
        """
        if self._monitor_checked or self.done or trainer.state.fn != TrainerFn.FITTING:
            return
        self._monitor_checked = True
        if self.options.monitor not in trainer.callback_metrics:
            available = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise KeyError(f"validation did not log {self.options.monitor!r} (logged: {available}); "
                           "set SketchTuneCallback(monitor=...) to a metric your validation_step logs")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.done:
            rank_zero_info("SketchTuneCallback: the model was already tuned (restored from the checkpoint)")
            return
        if trainer.interrupted:
            return
        if self._nothing_to_tune is not None:
            self.failure = self._nothing_to_tune
            rank_zero_info("SketchTuneCallback: skipped (nothing to tune, see the warning at setup)")
            return
        session = SketchTuneSession(trainer, pl_module, self.options, lambda: trainer.train_dataloader)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*skipping ")  # shown at setup already
                report = session.run()
        except Exception as exc:
            session.restore_dense()
            self.tuner, self.failure = session.tuner, f"{type(exc).__name__}: {exc}"
            rank_zero_warn(f"SketchTuneCallback: tuning failed ({self.failure}); the trained dense model is kept")
            return
        except BaseException:
            session.restore_dense()
            raise
        self.report, self.tuner = report, session.tuner
        self.plan_file = write_plan(self.report, self.options.plan_path, trainer)
        self.trials_file = write_trials(session.tuner.results, self.plan_file, trainer)
        publish(self.report, session.tuner.results, trainer)
        if not report.plan:
            rank_zero_warn(f"SketchTuneCallback: the model stays dense: {why_dense(report, session.tuner.results)}")

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.report is not None:
            from dataclasses import asdict

            return {"report": asdict(self.report)}
        return {"report": self._restored_report}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_report = state_dict.get("report")
