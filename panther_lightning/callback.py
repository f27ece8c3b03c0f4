"""``SketchTuneCallback``: at the end of ``fit``, replace dense layers by tuned sketched layers."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from panther.tuner import SKAutoTuner
from panther.tuner.results import TuningResults
from panther.tuner.search import SearchAlgorithm
from panther.tuner.strategy import AllocationUnavailableError
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
from panther_lightning.saving import save_tuned_checkpoints
from panther_lightning.session import SketchTuneReport, SketchTuneSession, publish, tuning_decision, write_plan


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

    Asks the tuner's own decision (:func:`panther.tuner.decide_strategy`) on the (dense) module,
    before any training, so that a selector matching nothing sketchable is reported at ``setup``
    and not after the last epoch; its warnings (layers skipped, and why) are shown here. An
    explicit ``strategy="allocate"`` the configs cannot take, or int8 asked for with
    ``trainable=True``, raises ``ValueError``: no outcome of tuning would be right.
    """
    try:
        decision = tuning_decision(pl_module, options)
    except AllocationUnavailableError:
        raise
    except ValueError as exc:
        return str(exc)
    if options.trainable:
        frozen = [group.name for group in decision.groups
                  if any(kind.inference_only_in(group.space) for kind in group.kinds.values())]
        if frozen:
            raise ValueError(f"trainable=True tunes sketches only, but the configs ask for an inference-only "
                             f"method (int8) on {frozen}; drop it from their params, or set trainable=False")
    return decision.nothing_to_tune


def check_trainable(pl_module: pl.LightningModule, resuming_from: str | None = None) -> None:
    """Fail before the optimizers are built when a tuned model has nothing left to train (int8 everywhere)."""
    if any(p.requires_grad for p in pl_module.parameters()):
        return
    if resuming_from is not None:
        source, dense = f"the checkpoint {resuming_from!r}", "resume from an epoch checkpoint (ckpt_path='best')"
    else:
        source = "the model"
        dense = f"fit a fresh {type(pl_module).__name__}() from an epoch checkpoint (ckpt_path=...)"
    raise ValueError(f"cannot train on: {source} has no trainable parameter (its tuned layers are int8, which "
                     "are inference-only). To keep a tuned model trainable, tune it with "
                     f"SketchTuneCallback(trainable=True) (sketches only); to train the dense model on, {dense}; "
                     "to use the tuned model, call trainer.validate/test/predict")


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
    trainer's own validation loop (every validation dataloader; ``monitor`` alone decides), an
    allocation or search proposes replacements (sketches, and int8 on CPU unless ``trainable``),
    each candidate is scored the same way (trainer state, logs and checkpoints are left untouched)
    and timed on real validation inputs, and the best plan that keeps ``monitor`` within bounds is
    applied to the LightningModule. Afterwards ``callback.tuner`` is the ``SKAutoTuner`` used,
    ``callback.best_params`` the applied parameters and ``callback.report`` a summary;
    ``callback.plan_file`` and ``callback.trials_file`` (every trial, ``sketch_trials.csv``) are in
    the log directory. While it tunes, a progress bar follows the trainer's ``enable_progress_bar``.

    The tuned model is checkpointed where the trainer's checkpoints go: ``sketch_tuned.ckpt``
    beside them (``callback.tuned_checkpoint_path``), and every ``ModelCheckpoint(save_last=...)``'s
    ``last`` checkpoint is rewritten with it; epoch and top-k checkpoints keep their dense weights.
    The module's layers follow whatever checkpoint it loads (``ckpt_path="best"`` puts the dense
    layers back, a tuned checkpoint the tuned ones). A model without trainable parameters (int8
    everywhere) cannot train on: ``fit`` says so at ``setup``, or when a checkpoint is restored,
    before ``configure_optimizers``.

    Tuning never costs the finished training run: if the configs select nothing that can be
    sketched, ``setup`` warns (before the first epoch) and tuning is skipped; if tuning fails, the
    callback warns with the error, puts the trained dense layers back and ``fit`` ends normally
    (``callback.failure`` holds the error). Only ``KeyboardInterrupt`` (model restored) propagates.
    A ``monitor`` that validation does not log stops ``fit`` at the first validation after the
    sanity check, as ``EarlyStopping`` does.

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
        trainable: bool = False,
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
        #: The tuned checkpoint written beside the trainer's checkpoints (``None``: nothing tuned, or no checkpointing).
        self.tuned_checkpoint_path: str | None = None
        self._tunes_at_validation_end = False  # set by tune_at_validation_end (SketchTuner.sketch_tune)
        self._train_batches: Callable[[], Iterable[Any]] | None = None

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
        # Runs before a checkpoint's weights are loaded: the module's layers must follow that checkpoint.
        install_sketch_loading(pl_module)
        if stage == "fit":
            check_trainable(pl_module)
            check_trainer_can_tune(trainer, pl_module, self.options)
            if not self.done:
                self._nothing_to_tune = nothing_to_tune(pl_module, self.options)
            if self._nothing_to_tune is not None:
                rank_zero_warn(f"SketchTuneCallback: nothing to tune, the model will stay dense: "
                               f"{self._nothing_to_tune}")

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        """On resume the module now has the checkpoint's layers: check, before the optimizers, that it can train."""
        if trainer.state.fn == TrainerFn.FITTING:
            check_trainable(pl_module, resuming_from=str(trainer.ckpt_path))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """In ``fit``, check at the first real validation that ``monitor`` is logged; in ``sketch_tune``, tune.

        As ``EarlyStopping`` does: a misnamed metric should stop the run at its first validation, not
        be found when the trained model is about to be tuned. The sanity check is skipped, because
        Lightning publishes no epoch metrics there (with several dataloaders, none at all).
        """
        if trainer.sanity_checking:
            return
        if self._tunes_at_validation_end:
            if not self.done:
                self.tune(trainer, pl_module, self._train_batches)
            return
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
        try:
            self.tune(trainer, pl_module, lambda: trainer.train_dataloader)
        except Exception as exc:
            self.failure = f"{type(exc).__name__}: {exc}"
            rank_zero_warn(f"SketchTuneCallback: tuning failed ({self.failure}); the trained dense model is kept")

    # -- the run (also SketchTuner.sketch_tune's) ------------------------------------------------
    def tune(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
             train_batches: Callable[[], Iterable[Any]] | None) -> SketchTuneReport:
        """Measure, tune, apply, report and checkpoint once; on failure the dense layers are put back and it raises.

        ``train_batches``: where fine-tuning and calibration read training batches (each call a
        fresh iterable). After it, the tuned model is in the plan file, in a tuned checkpoint
        beside the trainer's checkpoints (``tuned_checkpoint_path``) and in every ``last`` checkpoint.
        """
        session = SketchTuneSession(trainer, pl_module, self.options, train_batches)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*skipping ")  # shown at setup already
                report = session.run()
        except BaseException:
            session.restore_dense()
            self.tuner = session.tuner
            raise
        self.report, self.tuner = report, session.tuner
        self.plan_file = write_plan(report, self.options.plan_path, trainer)
        self.trials_file = write_trials(session.tuner.results, self.plan_file, trainer)
        publish(report, session.tuner.results, trainer)
        if report.plan:
            try:
                self.tuned_checkpoint_path = save_tuned_checkpoints(trainer)
            except OSError as exc:  # the model holds the tuned layers: say so rather than fail
                rank_zero_warn(f"SketchTuneCallback: the tuned model is applied but could not be checkpointed ({exc}); "
                               "save it with trainer.save_checkpoint")
        else:
            rank_zero_warn(f"SketchTuneCallback: the model stays dense: {why_dense(report, session.tuner.results)}")
        return report

    def tune_at_validation_end(self, train_batches: Callable[[], Iterable[Any]] | None) -> None:
        """Tune when the next real validation pass ends (how ``SketchTuner.sketch_tune`` drives a ``validate`` run)."""
        self._tunes_at_validation_end, self._train_batches = True, train_batches

    # -- checkpointing ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.report is not None:
            from dataclasses import asdict

            return {"report": asdict(self.report)}
        return {"report": self._restored_report}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._restored_report = state_dict.get("report")
