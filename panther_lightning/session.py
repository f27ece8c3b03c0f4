"""One sketch-tuning run inside a live trainer: measure the dense model, tune, apply, report.

Run by :meth:`SketchTuneCallback.tune <panther_lightning.SketchTuneCallback.tune>`: at
``on_train_end`` (the model is still on its device), or at the end of the ``validate`` pass that
``SketchTuner.sketch_tune`` drives. Every candidate is scored by the trainer's own validation loop
(:mod:`panther_lightning.isolation`: every validation dataloader, batches as the loaders make
them) and timed on real validation inputs (:mod:`panther_lightning.timing`); the trainer is left
as it was apart from the applied layers. Dynamic int8 layers quantize each batch's activations
with that batch's range, so their outputs, and the scores, are those at the validation batch size.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_debug
from torch import nn

from panther.nn import replace_module
from panther.plans import save_plan, sketch_plan
from panther.tuner import (
    SKAutoTuner,
    TuningDecision,
    TuningResults,
    decide_strategy,
    layer_bytes,
    names_search_algorithm,
)
from panther.tuner.search import as_search_algorithm
from panther_lightning.calibration import calibration_batches, training_step_forward
from panther_lightning.finetune import finetune
from panther_lightning.isolation import detached_trainer, read_metric, run_validation
from panther_lightning.options import DEFAULT_N_TRIALS, SketchTuneOptions
from panther_lightning.reporting import log_trials_text, progress_bar_setting, stop_live_display
from panther_lightning.timing import StepTimer, Timing, capture_forward_inputs


@dataclass
class SketchTuneReport:
    """What a run found, in plain data (stored in the callback's state and in checkpoints)."""

    monitor: str
    mode: str
    dense_metric: float
    threshold_metric: float
    best_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    tuned_metric: float | None = None
    finetuned_metric: float | None = None
    dense_bytes: int = 0
    tuned_bytes: int = 0
    dense_timing: dict[str, Any] | None = None
    tuned_timing: dict[str, Any] | None = None
    rejected: str | None = None  # why the tuned sketches were not kept

    @property
    def speedup(self) -> float | None:
        if not self.dense_timing or not self.tuned_timing:
            return None
        return self.dense_timing["median_s"] / self.tuned_timing["median_s"]

    def logged_metrics(self) -> dict[str, float]:
        """Numbers for the trainer's loggers (prefixed ``sketch/``)."""
        metrics = {f"sketch/dense_{self.monitor}": self.dense_metric,
                   "sketch/sketched_layers": float(len(self.plan)),
                   "sketch/size_ratio": self.tuned_bytes / max(self.dense_bytes, 1)}
        final = self.finetuned_metric if self.finetuned_metric is not None else self.tuned_metric
        if final is not None:
            metrics[f"sketch/tuned_{self.monitor}"] = final
        if self.speedup is not None:
            metrics["sketch/speedup"] = self.speedup
        return metrics

    def table(self) -> str:
        """A small results table: metric, weights and step time, dense versus tuned."""
        def ms(timing: dict[str, Any] | None) -> str:
            return "-" if not timing else f"{timing['median_s'] * 1e3:.3f} ms"

        def num(value: float | None) -> str:
            return "-" if value is None else f"{value:.4f}"

        rows = [("", "dense", "tuned"),
                (self.monitor, num(self.dense_metric), num(self.tuned_metric)),
                ("bytes (tuned layers)", str(self.dense_bytes), str(self.tuned_bytes)),
                ("step time", ms(self.dense_timing), ms(self.tuned_timing))]
        if self.finetuned_metric is not None:
            rows.insert(2, (f"{self.monitor} after fine-tune", "", num(self.finetuned_metric)))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
        bound = "<=" if self.mode == "min" else ">="
        lines.append(f"accepted if {self.monitor} {bound} {self.threshold_metric:.4f}")
        if self.speedup is not None:
            t = self.tuned_timing or {}
            lines.append(f"speed-up x{self.speedup:.3f} ({t.get('mode')}, {t.get('device')}, {t.get('precision')}, "
                         f"{t.get('threads')} threads, median of {t.get('repeats')})")
        kept_dense = f" (kept dense: {self.rejected})" if self.rejected else ""
        lines.append(f"sketched layers: {len(self.plan)}{kept_dense}")
        return "\n".join(lines)


class SketchTuneSession:
    """Runs :meth:`run` once for ``trainer``/``pl_module`` (on every rank under DDP).

    Args:
        trainer: a trainer inside ``fit`` (``on_train_end``) or ``validate`` (``on_validation_end``).
        pl_module: the LightningModule; its layers are replaced in place.
        options: validated options.
        train_batches: source of training batches for the optional fine-tune and calibration.
    """

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule, options: SketchTuneOptions,
                 train_batches: Callable[[], Iterable[Any]] | None = None) -> None:
        self.trainer, self.pl_module, self.options = trainer, pl_module, options
        self.train_batches = train_batches
        self.tuner: SKAutoTuner | None = None
        self.timer: StepTimer | None = None
        self.dense_timing: Timing | None = None
        self.dense_layers: dict[str, nn.Module] = {}
        self._dense_score: float | None = None
        self._dense_plan: str | None = None
        self._threshold = 0.0
        self._progress_bar = progress_bar_setting(trainer)  # now: the session detaches the callbacks

    # -- the run ---------------------------------------------------------------------------------
    def run(self) -> SketchTuneReport:
        opts, trainer = self.options, self.trainer
        stop_live_display(trainer)
        # validate() calls its hooks under inference mode; candidates built there could never train
        with torch.inference_mode(False), torch.enable_grad(), detached_trainer(trainer):
            dense_metric = self._measure_dense()
            self._threshold = opts.score_threshold(dense_metric)
            report = SketchTuneReport(opts.monitor, opts.mode, dense_metric, opts.metric(self._threshold))
            self.tuner = self._make_tuner()
            self.dense_layers = {name: self.pl_module.get_submodule(name)
                                 for layers in self.tuner.results.groups.values() for name in layers}
            if self.timer is not None:
                self.dense_timing = self.timer.time(self.pl_module)
            self.tuner.tune()
            self._apply(report)
            trainable = any(p.requires_grad for p in self.pl_module.parameters())  # int8 layers are frozen
            if report.plan and opts.finetune_epochs and trainable:
                finetune(trainer, self.pl_module, self._train_batches(), opts.finetune_epochs)
                self._sync_weights()
                report.finetuned_metric = self._metric(None)
            elif report.plan and opts.finetune_epochs:
                rank_zero_info("sketch tuning: nothing left to fine-tune (no trainable parameter after int8)")
        if report.plan:  # the old optimizers hold the dense parameters: a checkpoint must not carry them
            if trainable and trainer.state.fn == TrainerFn.FITTING:
                trainer.strategy.setup_optimizers(trainer)
            else:  # none can hold an empty parameter list; outside fit, the next fit builds its own
                trainer.strategy.optimizers, trainer.strategy.lr_scheduler_configs = [], []
        return report

    def _measure_dense(self) -> float:
        opts = self.options
        limit = opts.speed_batches if opts.objective == "speed" else 0
        with capture_forward_inputs(self.pl_module, limit) as calls:
            metric = self._metric(None)
        loaders = len(self.trainer.num_val_batches)
        if loaders > 1:
            rank_zero_info(f"sketch tuning: each candidate runs all {loaders} validation dataloaders and is judged "
                           f"by {opts.monitor!r} alone; timing replays the first {opts.speed_batches} forward calls "
                           "(the first dataloader's batches)")
        self._dense_score, self._dense_plan = opts.score(metric), self._plan_key()
        if opts.objective == "speed":
            self.timer = StepTimer(calls, self.trainer.strategy.root_device,
                                   self.trainer.precision_plugin.forward_context, str(self.trainer.precision),
                                   backward=opts.speed_mode == "train", repeats=opts.timing_repeats)
        return metric

    def _make_tuner(self) -> SKAutoTuner:
        from panther.tuner.search import OptunaSearch

        opts = self.options
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tuner below shows the resolution's warnings
            decision = tuning_decision(self.pl_module, opts)  # again: the module is on its device now
        if decision.why_search is not None:
            rank_zero_debug(f"sketch tuning searches per group: {decision.why_search}")
        search = opts.search_algorithm
        if search is None:
            search = OptunaSearch(n_trials=opts.n_trials or DEFAULT_N_TRIALS, seed=opts.seed)
        calibration: dict[str, Any] = {}
        if opts.calibration_batches:
            calibration = {"calibration_data": calibration_batches(self.trainer, self._train_batches(),
                                                                   opts.calibration_batches),
                           "calibration_forward": training_step_forward(self.trainer)}
        return SKAutoTuner(
            # trainable: the resolved sketch-only spaces, so that "auto" offers no int8 when allocating
            self.pl_module, decision.configs if opts.trainable else opts.configs, self._accuracy,
            search_algorithm=search, verbose=opts.verbose and self.trainer.is_global_zero,
            accuracy_threshold=self._threshold,
            optmization_eval_func=self._speedup if opts.objective == "speed" else None,
            max_total_trials=opts.max_total_trials, time_budget_s=opts.time_budget_s,
            share_accuracy_drop=opts.share_accuracy_drop, progress_bar=self._progress_bar,
            strategy=decision.strategy, broadcast=self._broadcast if self.trainer.world_size > 1 else None,
            **calibration)  # type: ignore[arg-type]

    def _apply(self, report: SketchTuneReport) -> None:
        tuner, model = self.tuner, self.pl_module
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "nothing to apply" is reported in the table instead
            tuner.apply_best_params()
        best = tuner.get_best_params()
        if self.timer is not None:
            assert self.dense_timing is not None
            report.dense_timing = asdict(self.dense_timing)
            had_sketches, best = bool(best), self._drop_slower_groups(best)
            if had_sketches and not best:
                report.rejected = "no tuned layer was measured faster than its dense layer"
        if best and self.timer is not None:
            # one decision for all ranks: rank 0's measurements
            dense_s, tuned_s = self.trainer.strategy.broadcast(self._ab_timing(), src=0)
            report.dense_timing, report.tuned_timing = asdict(dense_s), asdict(tuned_s)
            if not tuned_s.median_s < dense_s.median_s:
                self.restore_dense()
                report.rejected = "the tuned model was not measured faster than the dense one"
                best = {}
        self._sync_weights()
        report.tuned_metric = self._metric(None) if best else report.dense_metric
        if best and self.options.score(report.tuned_metric) < self._threshold:
            self.restore_dense()
            report.rejected = f"the tuned model's {self.options.monitor} {report.tuned_metric:.4f} misses the bound"
            report.tuned_metric, best = report.dense_metric, {}
        report.best_params = best
        report.plan = sketch_plan(model) if best else {}
        report.dense_bytes = sum(layer_bytes(m) for m in self.dense_layers.values())
        report.tuned_bytes = sum(layer_bytes(model.get_submodule(n)) for n in self.dense_layers)

    def _drop_slower_groups(self, best: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Keep dense the groups whose best sketch was not measured faster than the dense model."""
        results = self.tuner.results
        for group, layers in results.groups.items():
            record = results.selected_record(group)
            if record is not None and record.speed is not None and record.speed <= 1.0:
                for name in layers:
                    replace_module(self.pl_module, name, self.dense_layers[name])
                    best.pop(name, None)
        return best

    # -- evaluation functions handed to SKAutoTuner ------------------------------------------------
    def _accuracy(self, model: nn.Module) -> float:
        """Score of the installed candidate: screened on a few batches, then on the full set."""
        assert model is self.pl_module, "SKAutoTuner evaluates candidates installed in the LightningModule"
        self._check_same_candidate()
        if self._plan_key() == self._dense_plan and self._dense_score is not None:
            return self._dense_score
        opts = self.options
        if opts.screen_batches is not None:
            screened = opts.score(self._metric(opts.screen_batches))
            if screened < self._threshold:
                return screened
        return opts.score(self._metric(None))

    def _broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (the tuner's per-process measurements)."""
        return self.trainer.strategy.broadcast(obj, src=0)

    def _speedup(self, model: nn.Module) -> float:
        """Dense step time / candidate step time; near-ties are measured again, longer and interleaved."""
        assert self.timer is not None and self.dense_timing is not None
        speedup = self.dense_timing.median_s / self.timer.time(model).median_s
        if abs(speedup - 1.0) <= self.options.tie_tolerance:
            dense, tuned = self._ab_timing()
            speedup = dense.median_s / tuned.median_s
        return float(self.trainer.strategy.broadcast(speedup, src=0))

    def _ab_timing(self, rounds: int = 3) -> tuple:
        """Dense and installed model timed alternately (drift hits both), each over 3x the repeats."""
        assert self.timer is not None
        dense: list[Timing] = []
        tuned: list[Timing] = []
        for _ in range(rounds):
            with self._dense_installed():
                dense.append(self.timer.time(self.pl_module))
            tuned.append(self.timer.time(self.pl_module))
        return min(dense, key=lambda t: t.median_s), min(tuned, key=lambda t: t.median_s)

    def _metric(self, max_batches: int | None) -> float:
        metrics = run_validation(self.trainer, max_batches)
        return read_metric(metrics, self.options.monitor, self.trainer)

    # -- model bookkeeping -------------------------------------------------------------------------
    def _plan_key(self) -> str:
        return json.dumps(sketch_plan(self.pl_module), sort_keys=True, default=str)

    def _check_same_candidate(self) -> None:
        """Under DDP every rank must evaluate the same candidate (same seed, same synced scores)."""
        if self.trainer.world_size <= 1:
            return
        mine = self._plan_key()
        if self.trainer.strategy.broadcast(mine, src=0) != mine:
            raise RuntimeError("DDP ranks are evaluating different sketch candidates; give the search algorithm "
                               "a fixed seed (e.g. OptunaSearch(seed=0)) so every rank proposes the same ones")

    @contextmanager
    def _dense_installed(self) -> Iterator[None]:
        current = {name: self.pl_module.get_submodule(name) for name in self.dense_layers}
        self.restore_dense()
        try:
            yield
        finally:
            for name, module in current.items():
                replace_module(self.pl_module, name, module)

    def restore_dense(self) -> None:
        """Put every tuned layer's dense original back (after a failure, the trained model as it was)."""
        for name, module in self.dense_layers.items():
            if self.pl_module.get_submodule(name) is not module:
                replace_module(self.pl_module, name, module)

    def _sync_weights(self) -> None:
        """Make every rank hold rank 0's structure and weights (random sketches differ per rank)."""
        if self.trainer.world_size <= 1:
            return
        plan = self.trainer.strategy.broadcast(sketch_plan(self.pl_module), src=0)
        if plan != sketch_plan(self.pl_module):
            self.restore_dense()
            from panther.plans import apply_plan

            apply_plan(self.pl_module, plan)
        state = {k: v.detach().cpu() for k, v in self.pl_module.state_dict().items() if isinstance(v, torch.Tensor)}
        state = self.trainer.strategy.broadcast(state, src=0)
        self.pl_module.load_state_dict(state, strict=False)

    def _train_batches(self) -> Iterable[Any]:
        if self.train_batches is None:
            raise ValueError("finetune_epochs and calibration_batches need training data: "
                             "pass train_dataloaders or a datamodule")
        return self.train_batches()


def tuning_decision(pl_module: pl.LightningModule, options: SketchTuneOptions) -> TuningDecision:
    """The tuner's decision for these options: what is tuned, and whether it allocates or searches.

    Lightning always tunes against a bound (``max_drop`` or ``accuracy_threshold``, the dense
    value otherwise); the per-group search is chosen by giving ``n_trials`` or a ``search_algorithm``
    that names how to search (the tuner's rule, :func:`panther.tuner.names_search_algorithm`: a plain
    ``OptunaSearch`` only lends its study and storage to the allocation).
    ``trainable=True`` keeps ``"auto"`` to sketches (no int8).
    """
    search = options.search_algorithm
    return decide_strategy(
        pl_module, options.configs, strategy=options.strategy, thresholded=True,
        search_named=options.n_trials is not None or (search is not None and names_search_algorithm(search)),
        calibrated=bool(options.calibration_batches), methods=not options.trainable,
        accepts_param_specs=search is None or as_search_algorithm(search).accepts_param_specs, stacklevel=3)


def write_plan(report: SketchTuneReport, path: str | None, trainer: pl.Trainer) -> str | None:
    """Write the applied plan as JSON (rank 0 only); default ``<log_dir>/sketch_plan.json``."""
    if path is None:
        log_dir = trainer.log_dir
        if log_dir is None:
            return None
        path = os.path.join(log_dir, "sketch_plan.json")
    if trainer.is_global_zero:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        save_plan(report.plan, path)
    return path


def publish(report: SketchTuneReport, results: TuningResults, trainer: pl.Trainer) -> None:
    """Results table through ``rank_zero_info``; summary numbers and every trial through the trainer's loggers."""
    rank_zero_info("Sketch tuning results\n" + report.table())
    metrics = report.logged_metrics()
    log_trials_text(results, trainer)
    for logger in trainer.loggers:
        logger.log_metrics(metrics, step=trainer.global_step)
        logger.save()
