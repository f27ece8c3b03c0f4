"""``SKAutoTuner``: find sketching parameters per layer that keep accuracy and cut cost.

A facade over private modules, each with one job: argument checks (:mod:`._arguments`), which
module sits at each tuned name (:mod:`._installer`), one trial (:mod:`._trials`), the trial loop
and budget (:mod:`._loop`), results shared through the search's storage (:mod:`._sharing`), the
whole-model accuracy policy (:mod:`._policy`) and what ``verbose`` shows (:mod:`._progress`).

How a run goes (:meth:`SKAutoTuner.tune`):

1. The dense layers the tuner remembers are put in place (whatever was installed before is put
   back at the end: ``tune()`` leaves the model exactly as it found it, even on errors or Ctrl-C;
   only :meth:`~SKAutoTuner.apply_best_params` and :meth:`~SKAutoTuner.replace_without_tuning`
   install sketches).
2. With ``strategy="allocate"`` (the default when there is a threshold and the search names no
   algorithm, see :func:`~panther.tuner.strategy.names_search_algorithm` and :mod:`panther.tuner._allocate`), every
   group's options are priced and weighed without evaluating the model, and a few full
   evaluations bisect one whole-model plan; each evaluated
   plan is a trial of the search's Optuna study (:mod:`panther.tuner._plan_trials`). Steps 3-4
   below are the per-group search otherwise. Each group (one layer, or several tuned jointly) asks the
   search for parameters, builds the candidates from the dense layers, swaps them in, evaluates,
   swaps them out, tells the search.
3. Objective (higher is better): accuracy without ``accuracy_threshold``; with a threshold,
   ``optmization_eval_func`` (e.g. throughput) if given, else the fraction of the layers' stored bytes
   saved. A trial below the threshold keeps its measured accuracy in the results, its speed is
   never measured, and the search is told ``INFEASIBLE_SCORE + (accuracy - threshold)``: below
   every feasible score, yet ordered by accuracy so the search still learns where to go.
   With several groups, each group is held to its share of the allowed accuracy drop
   (``share_accuracy_drop``, see :func:`group_thresholds`): a group tuned against the whole
   model's threshold would spend the entire margin on its own, and the winners together would miss
   it by the sum of their drops.
4. With a threshold, the winners are checked together (each was tuned with the others dense);
   while the composed model misses the threshold, the group that costs most accuracy per weight
   saved steps up to its next more accurate feasible trial, or, when it has none, is reverted to
   dense (``tuner.reverted_layers``, the log and the results say which).

Failures: a candidate that cannot be built, that raises while it is evaluated (e.g. a parent
module that computes with its child's dense weight, see :class:`panther.nn.base.SketchedWeight`),
or whose accuracy is NaN is a failed trial: its error is recorded in the results, the model is
restored, the search is told it failed, and tuning goes on. If the evaluation functions also
raise on the dense model, the error is the user's and propagates (after the model is restored).
``KeyboardInterrupt`` always propagates, with the model restored.

Resource-aware searches: if the search algorithm has ``get_resource()``, its value is passed as
``resource=`` to evaluation functions whose signature accepts that keyword.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

from torch import nn

from panther.nn.calibration import default_forward
from panther.tuner import _arguments as args
from panther.tuner._allocate import Allocation
from panther.tuner._budget import Budget
from panther.tuner._groups import TuningGroup
from panther.tuner._installer import LayerInstaller
from panther.tuner._loop import SearchLoop
from panther.tuner._plan_trials import PlanTrials
from panther.tuner._policy import ComposedCheck, group_thresholds
from panther.tuner._progress import TuningProgress, planned_trials
from panther.tuner._trials import INFEASIBLE_SCORE, TrialRunner
from panther.tuner.configs import TuningConfigs
from panther.tuner.results import PlanRecord, TrialRecord, TuningResults, results_dataframe, summary_table
from panther.tuner.search.base import as_search_algorithm
from panther.tuner.search.optuna_search import OptunaSearch
from panther.tuner.selectors import LayerNameResolver
from panther.tuner.strategy import AllocationUnavailableError, decide_strategy, names_search_algorithm

__all__ = ["INFEASIBLE_SCORE", "AllocationUnavailableError", "SKAutoTuner", "group_thresholds"]

logger = logging.getLogger(__name__)


class SKAutoTuner:
    """Auto-tuner for sketched layers (see the module docstring for the procedure).

    Args:
        model: the (trained) model; tuned layers are found by name in it.
        configs: what to tune (``TuningConfigs``, a ``LayerConfig``, or their dict/list forms).
        accuracy_eval_func: ``f(model) -> float``, higher is better.
        search_algorithm: default ``OptunaSearch()``; one group (study) per layer or joint group.
        verbose: show progress (a bar on a terminal, one line per trial otherwise) and the summary.
        accuracy_threshold: minimum accepted accuracy (enables the constrained objective).
        optmization_eval_func: ``f(model) -> float`` to maximise among trials meeting the
            threshold (e.g. throughput). ``optimization_eval_func`` is accepted as well.
        num_runs_per_param: evaluations per candidate; the mean is used, the spread is recorded.
        max_total_trials: whole-model trial budget shared by all groups (see :mod:`panther.tuner._budget`);
            when allocating, the most plans evaluated (unset: with ``strategy="auto"``, a given
            ``OptunaSearch``'s ``n_trials``; otherwise unbounded).
        time_budget_s: stop starting new trials after this many seconds.
        tune_tied: also sketch layers whose parameters are shared with another module (unties them).
        calibration_data: batches of real inputs (an iterable, read once). With it, each tuned
            Linear/Conv2d layer's input covariance is measured on the dense model before the first
            trial and reused by every ``init="data_svd"`` candidate, which ``params="auto"`` then uses.
        calibration_forward: ``f(model, batch)`` running one calibration batch (default:
            ``model(batch)``, or ``model(batch[0])`` for ``(inputs, targets)`` pairs).
        share_accuracy_drop: hold each group to a share of the allowed drop
            ``baseline - accuracy_threshold``, in proportion to its dense bytes, instead of the
            whole margin (``False``: every group is tuned against ``accuracy_threshold`` itself, as
            in the original design). The composed model is checked against ``accuracy_threshold``
            either way.
        progress_bar: with ``verbose``, ``None`` (default) shows a bar when stdout is a terminal and
            one line per trial otherwise; ``False`` never shows a bar, ``True`` always does (for
            callers that own the console, e.g. a trainer with its own progress-bar setting).
        strategy: how the allowed drop is spent over the groups. ``"allocate"``: whole-model
            allocation (:mod:`panther.tuner._allocate`): every layer's options are weighed by
            predicted or measured error and by bytes (or measured time, with a speed function),
            and full evaluations bisect one plan for the whole model; ``params="auto"`` then offers
            int8 beside the sketch on CPU. It needs ``accuracy_threshold`` and finite spaces of
            layers measurable alone (not attention). ``"search"``: each group is searched with
            ``search_algorithm`` (probes, shared drop, composed check). ``"auto"`` (default):
            ``"allocate"`` when there is a threshold, every group can be allocated and the
            search does not name an algorithm (:func:`~panther.tuner.strategy.names_search_algorithm`): no search, or a
            plain ``OptunaSearch`` (its study and storage then hold the plans, and its ``n_trials``
            bounds them when ``max_total_trials`` is unset); ``"search"`` otherwise, e.g. for an
            ``OptunaSearch`` with an explicit ``sampler`` or a ``SearchAlgorithm`` of your own.
        broadcast: for runs in several processes, ``f(obj) -> rank 0's obj`` (e.g. Lightning's
            ``trainer.strategy.broadcast``): allocation prices options by per-process timings, so
            every process must use the same ones to evaluate the same plans.

    Attributes:
        allocates: whether :meth:`tune` allocates (``strategy`` resolved against the configs).
    """

    def __init__(
        self,
        model: nn.Module,
        configs: Any,
        accuracy_eval_func: Callable[..., float],
        search_algorithm: Any = None,
        verbose: bool = False,
        accuracy_threshold: float | None = None,
        optmization_eval_func: Callable[..., float] | None = None,
        num_runs_per_param: int = 1,
        *,
        optimization_eval_func: Callable[..., float] | None = None,
        max_total_trials: int | None = None,
        time_budget_s: float | None = None,
        tune_tied: bool = False,
        calibration_data: Iterable[Any] | None = None,
        calibration_forward: Callable[[nn.Module, Any], Any] | None = None,
        share_accuracy_drop: bool = True,
        progress_bar: bool | None = None,
        strategy: Literal["auto", "allocate", "search"] = "auto",
        broadcast: Callable[[Any], Any] | None = None,
    ) -> None:
        args.check_model(model)
        speed_func = args.speed_function(optmization_eval_func, optimization_eval_func)
        args.check_callable("accuracy_eval_func", accuracy_eval_func, required=True)
        args.check_callable("optmization_eval_func", speed_func, required=False)
        threshold = args.check_threshold(accuracy_threshold)
        args.check_speed_needs_threshold(speed_func, threshold)
        args.check_calibration(calibration_data, calibration_forward)
        args.check_strategy(strategy, threshold)
        args.check_callable("broadcast", broadcast, required=False)
        args.check_positive("num_runs_per_param", num_runs_per_param, integer=True, optional=False)
        args.check_positive("max_total_trials", max_total_trials, integer=True)
        args.check_positive("time_budget_s", time_budget_s, integer=False)
        for name, flag in (("verbose", verbose), ("tune_tied", tune_tied),
                           ("share_accuracy_drop", share_accuracy_drop)):
            args.check_flag(name, flag)
        if progress_bar is not None:
            args.check_flag("progress_bar", progress_bar)

        self.model = model
        self.accuracy_eval_func = accuracy_eval_func
        self.optimization_eval_func = speed_func
        self.strategy = strategy
        self.broadcast = broadcast
        self._search_given = search_algorithm is not None
        self._search_named = self._search_given and names_search_algorithm(search_algorithm)
        self.search_algorithm = args.search_or_default(search_algorithm)
        self._search = as_search_algorithm(self.search_algorithm)
        args.check_maximises(self._search)
        self.verbose = verbose
        self.accuracy_threshold = threshold
        self.num_runs_per_param = num_runs_per_param
        self.max_total_trials = max_total_trials
        self.time_budget_s = time_budget_s
        self.tune_tied = tune_tied
        self.share_accuracy_drop = share_accuracy_drop
        self.progress_bar = progress_bar
        self.calibration_data = calibration_data
        self.calibration_forward = calibration_forward
        self.results = TuningResults()
        self._resolver = LayerNameResolver(model)
        self._layers = LayerInstaller(model, self._resolver, calibration_data, calibration_forward)
        self._set_configs(configs)

    # -- tuning --------------------------------------------------------------------------------
    def tune(self) -> dict[str, dict[str, Any]]:
        """Tune every group; the model is left exactly as it was. Returns :meth:`get_best_params`."""
        self.results = self._new_results()
        runner = TrialRunner(self._layers, self.accuracy_eval_func, self.optimization_eval_func,
                             self.num_runs_per_param, self._search.get_resource if self._search.resource_aware
                             else None, self._threshold_of, self.results)
        budget = Budget(self._allocation_budget() if self.allocates else self.max_total_trials, self.time_budget_s)
        before = self._layers.current()
        total = self._allocation_budget() if self.allocates else planned_trials(self._groups, self._search,
                                                                                self.max_total_trials)
        progress = TuningProgress(self.verbose, total, bar=self.progress_bar)
        runner.on_trial = progress.trial_done
        with progress.shown():
            try:
                self._layers.put(self._layers.originals)
                if self.accuracy_threshold is not None:
                    self._measure_baseline(runner)
                if self.allocates:
                    self._allocate(runner, budget, progress)
                else:
                    SearchLoop(self._search, self._groups, runner, self._threshold_of).run(budget)
                    if self.accuracy_threshold is not None:
                        self._check_composed(runner)
            finally:
                self._layers.put(before)
            progress.close_bar()
            logger.info("tuning summary\n%s", self.summary())
        return self.get_best_params()

    def _allocation_budget(self) -> int | None:
        """Plans an allocation may evaluate: ``max_total_trials``, else, when ``"auto"`` chose to allocate
        with a given ``OptunaSearch``, its ``n_trials`` (an explicit ``strategy="allocate"`` is unbounded)."""
        if (self.max_total_trials is None and self.strategy == "auto" and self._search_given
                and isinstance(self.search_algorithm, OptunaSearch)):
            return self.search_algorithm.n_trials
        return self.max_total_trials

    def _measure_baseline(self, runner: TrialRunner) -> None:
        accuracy = runner.measure_baseline()
        self.results.baseline_accuracy = accuracy
        logger.info("dense model accuracy %.4f (threshold %.4f)", accuracy, self.accuracy_threshold)
        if accuracy < self.accuracy_threshold:  # type: ignore[operator]
            warnings.warn(f"the dense model's accuracy {accuracy:.4f} is already below accuracy_threshold "
                          f"{self.accuracy_threshold}; no sketch is likely to meet it", stacklevel=3)
        if self.share_accuracy_drop and not self.allocates:
            self.results.group_thresholds = group_thresholds(accuracy, self.accuracy_threshold,  # type: ignore[arg-type]
                                                             self._dense_bytes())
            if len(self._groups) > 1:
                logger.info("allowed drop %.4g shared by size: group thresholds %.4f to %.4f",
                            accuracy - self.accuracy_threshold, min(self.results.group_thresholds.values()),
                            max(self.results.group_thresholds.values()))

    def _allocate(self, runner: TrialRunner, budget: Budget, progress: TuningProgress) -> None:
        baseline = self.results.baseline_accuracy
        if baseline is None or not baseline >= self.accuracy_threshold:  # type: ignore[operator]
            return  # nothing to spend (warned by _measure_baseline)
        batches = self._layers.calibration_batches()
        calibration = None if batches is None else (batches, self.calibration_forward or default_forward)
        trials = (PlanTrials(self.search_algorithm, self.accuracy_threshold, self.optimization_eval_func is not None)  # type: ignore[arg-type]
                  if isinstance(self.search_algorithm, OptunaSearch) else None)
        Allocation(self._groups, self._layers, runner, self.accuracy_threshold, baseline,  # type: ignore[arg-type]
                   self.optimization_eval_func, calibration, self.results, on_plan=progress.plan_done,
                   broadcast=self.broadcast, trials=trials).run(budget)

    def _check_composed(self, runner: TrialRunner) -> None:
        groups = {g.name: g for g in self._groups}
        speed = self.optimization_eval_func

        def measure_accuracy(kept: dict[str, TrialRecord]) -> float:
            return runner.measure_composed(kept, groups, self.accuracy_eval_func)

        def measure_speed(kept: dict[str, TrialRecord]) -> float:
            return runner.measure_composed(kept, groups, speed)  # type: ignore[arg-type]

        check = ComposedCheck(self.results, self._dense_bytes(), self.accuracy_threshold,  # type: ignore[arg-type]
                              measure_accuracy, measure_speed if speed is not None else None)
        check.run(spend_margin=self.share_accuracy_drop)

    def _threshold_of(self, group: str) -> float | None:
        """The accuracy a trial of ``group`` must reach (its share of the drop, or the global threshold)."""
        if self.accuracy_threshold is None:
            return None
        return self.results.group_thresholds.get(group, self.accuracy_threshold)

    def _dense_bytes(self) -> dict[str, int]:
        return {g.name: self._layers.dense_bytes(g.layers) for g in self._groups}

    # -- installing ----------------------------------------------------------------------------
    def apply_best_params(self) -> nn.Module:
        """Install the best sketch of every tuned layer (layers without one get their dense layer back)."""
        best = self.get_best_params()
        if not best:
            warnings.warn("no tuned parameters to apply (no trial met the threshold, or tune() was not run); "
                          "the model keeps its dense layers", stacklevel=2)
        copy_weights = {name: g.copy_weights for g in self._groups for name in g.layers}
        for name in copy_weights:
            module = (self._layers.build(name, best[name], copy_weights[name]) if name in best
                      else self._layers.originals[name])
            self._layers.install(name, module)
        return self.model

    def apply_plan(self, plan: int | PlanRecord) -> nn.Module:
        """Install one evaluated whole-model plan instead of the chosen one: its number in
        ``results.plans``, or its record (e.g. from ``results.frontier()``). Tuned layers it leaves
        out get their dense layer back. Every replacement is built before the model is touched."""
        number = plan if isinstance(plan, int) and not isinstance(plan, bool) else (
            plan.number if isinstance(plan, PlanRecord) else None)
        record = next((p for p in self.results.plans if p.number == number), None)
        if record is None:
            known = [p.number for p in self.results.plans]
            raise ValueError(f"no evaluated plan {plan!r}; results.plans holds plans {known} (an allocating tune() "
                             "evaluates them)")
        groups = {g.name: g for g in self._groups}
        unknown = set(record.choices) - set(groups)
        if unknown:
            raise ValueError(f"plan {number} replaces groups {sorted(unknown)} this tuner does not tune")
        built = {name: self._layers.build(name, params, groups[group].copy_weights)
                 for group, params in record.choices.items() for name in groups[group].layers}
        for name, dense in self._layers.originals.items():
            self._layers.install(name, built.get(name, dense))
        return self.model

    def plot_frontier(self, ax: Any = None) -> Any:
        """Accuracy against speed (or bytes saved) of every evaluated plan, the frontier and the chosen
        plan marked (matplotlib, the ``plots`` extra; see :func:`panther.tuner.frontier.plot_frontier`)."""
        from panther.tuner.frontier import plot_frontier

        return plot_frontier(self.results, ax)

    def replace_without_tuning(self) -> nn.Module:
        """Install sketches built from every spec's first value (Categorical: first choice; Int/Float: low)."""
        for group in self._groups:
            params = {name: spec.default() for name, spec in group.space.items()}
            for name in group.layers:
                self._layers.install(name, self._layers.build(name, params, group.copy_weights))
        return self.model

    # -- results -------------------------------------------------------------------------------
    def get_best_params(self) -> dict[str, dict[str, Any]]:
        """``{layer: params}`` of the selected trial per layer (see the composed check), minus reverted ones."""
        best: dict[str, dict[str, Any]] = {}
        for group, layers in self.results.groups.items():
            record = self.results.selected_record(group)
            if record is not None:
                best.update({name: dict(record.params) for name in layers})
        return best

    @property
    def reverted_layers(self) -> list[str]:
        """Layers whose tuned sketch was dropped because the composed model missed the threshold."""
        return [name for group in self.results.reverted for name in self.results.groups.get(group, [])]

    def best_plan(self) -> dict[str, dict[str, Any]]:
        """The best parameters as a :mod:`panther.plans` plan ``{layer: {"type", "params"}}``."""
        return {name: {"type": self._layers.kinds[name].plan_type(params), "params": params}
                for name, params in self.get_best_params().items()}

    def save_plan(self, path: str | os.PathLike) -> None:
        """Write :meth:`best_plan` as JSON; ``panther.plans.apply_plan`` re-applies it to a fresh model."""
        from panther.plans import save_plan

        save_plan(self.best_plan(), path)

    def get_results_dataframe(self) -> Any:
        """All trials, one row per layer (``layer_name``, parameters, ``score``, ``accuracy``, ``speed``, ...)."""
        return results_dataframe(self.results, list(dict.fromkeys(p for g in self._groups for p in g.space)))

    def summary(self) -> str:
        """A table per layer: chosen parameters, accuracy, speed, bytes kept and the outcome."""
        return summary_table(self.results)

    def save_tuning_results(self, file_path: str | os.PathLike) -> None:
        """Save the results as a pickle of plain data (loading it never runs code)."""
        self.results.save(file_path)

    def load_tuning_results(self, file_path: str | os.PathLike) -> None:
        """Load results saved by :meth:`save_tuning_results` for this model's tuned layers."""
        results = TuningResults.load(file_path)
        unknown = {name for layers in results.groups.values() for name in layers} - set(self._layers.originals)
        if unknown:
            raise ValueError(f"results file tunes layers {sorted(unknown)} that this tuner does not tune")
        self.results = results

    # -- configuration -------------------------------------------------------------------------
    def _set_configs(self, configs: Any) -> None:
        """Resolve and validate ``configs`` against the model (nothing in the model changes)."""
        decision = decide_strategy(self.model, configs, strategy=self.strategy,
                                   thresholded=self.accuracy_threshold is not None, search_named=self._search_named,
                                   calibrated=self.calibration_data is not None, tune_tied=self.tune_tied,
                                   accepts_param_specs=self._search.accepts_param_specs, resolver=self._resolver,
                                   dense_of=self._layers.dense_of, stacklevel=4)
        groups = decision.groups
        self.allocates = decision.allocates
        self._groups: list[TuningGroup] = groups
        self._resolved_configs = decision.configs
        self._skipped = dict(decision.skipped)
        self._layers.remember({name: kind for g in groups for name, kind in g.kinds.items()})
        self.results = self._new_results()

    def _new_results(self) -> TuningResults:
        return TuningResults(groups={g.name: list(g.layers) for g in self._groups}, skipped=dict(self._skipped))

    # -- the spec's names (camelCase and its spelling, kept as the API spec writes them) ----------
    @property
    def optmization_eval_func(self) -> Callable[..., float] | None:  # noqa: N802 - spec spelling
        """The spec's spelling of :attr:`optimization_eval_func`."""
        return self.optimization_eval_func

    def getResolver(self) -> LayerNameResolver:  # noqa: N802 - spec name
        return self._resolver

    def getConfigs(self) -> TuningConfigs:  # noqa: N802 - spec name
        """The configs as resolved: concrete layer names and parameter specs ("auto" expanded)."""
        return self._resolved_configs

    def setConfigs(self, configs: Any) -> None:  # noqa: N802 - spec name
        """Resolve and validate ``configs`` against the model (nothing in the model changes)."""
        self._set_configs(configs)
