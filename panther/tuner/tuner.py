"""``SKAutoTuner``: find sketching parameters per layer that keep accuracy and cut cost.

How a run goes (:meth:`SKAutoTuner.tune`):

1. The dense layers the tuner remembers are put in place (whatever was installed before is put
   back at the end: ``tune()`` leaves the model exactly as it found it, even on errors or Ctrl-C;
   only :meth:`~SKAutoTuner.apply_best_params` and :meth:`~SKAutoTuner.replace_without_tuning`
   install sketches).
2. Each group (one layer, or several tuned jointly) asks the search for parameters, builds the
   candidates from the dense layers, swaps them in, evaluates, swaps them out, tells the search.
3. Objective (higher is better): accuracy without ``accuracy_threshold``; with a threshold,
   ``optmization_eval_func`` (e.g. throughput) if given, else the fraction of the layers' weights
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

import contextlib
import logging
import math
import os
import socket
import sys
import time
import uuid
import warnings
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from panther.nn.calibration import collect_input_covariances
from panther.nn.rebuild import replace_module
from panther.tuner.budget import Budget, Prober, potential, prober_for
from panther.tuner.configs import TuningConfigs
from panther.tuner.evaluation import describe, measure, resource_getter
from panther.tuner.groups import GroupBuilder, TuningGroup
from panther.tuner.layers import build_candidate, layer_weights, sketched_class_for
from panther.tuner.results import TrialRecord, TuningResults, results_dataframe, summary_table
from panther.tuner.selectors import LayerNameResolver

logger = logging.getLogger("panther.tuner")

#: Score offset told to the search for trials below the accuracy threshold.
INFEASIBLE_SCORE = -1.0e6
#: User attributes the tuner stores on Optuna trials (read back on resume / by other workers).
_ATTR = "panther."
_RECORD_FIELDS = ("status", "accuracy", "accuracy_std", "speed", "speed_std", "feasible", "weights", "error")
_WORKER_ATTR = _ATTR + "worker"
_SEARCH_METHODS = ("get_next_params", "update", "is_finished", "initialize")


def group_thresholds(baseline: float, threshold: float, dense_weights: Mapping[str, int]) -> Dict[str, float]:
    """Per-group accuracy thresholds that share the allowed drop ``baseline - threshold`` by weight.

    Drops of separately sketched layers roughly add up, so groups that each lose no more than their
    share should meet ``threshold`` together; the share follows the dense weights because that is
    where the savings are. Without a margin to share (a NaN baseline, or one already below the
    threshold) every group gets ``threshold`` itself.
    """
    total = sum(dense_weights.values())
    if len(dense_weights) == 1 or not math.isfinite(baseline) or baseline <= threshold or total <= 0:
        return {name: threshold for name in dense_weights}  # (one group: exactly the threshold)
    return {name: baseline - (baseline - threshold) * weights / total for name, weights in dense_weights.items()}


def _params_key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


def _worker_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _worker_alive(worker: Optional[str], me: str) -> bool:
    """Whether ``worker`` (another tuner's token on its running trial) may still finish that trial.

    A worker on this host whose process is gone left the trial running when it died: not alive.
    Workers on other hosts cannot be checked and count as alive.
    """
    if worker is None or worker == me:
        return False
    host, _, rest = worker.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


def _check_callable(name: str, func: Any, required: bool) -> None:
    if func is None and not required:
        return
    if not callable(func):
        raise TypeError(f"{name} must be a callable taking the model, got {type(func).__name__}: {func!r}")


def _positive_number(name: str, value: Any, integer: bool, optional: bool = True) -> None:
    kinds = (int,) if integer else (int, float)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


class SKAutoTuner:
    """Auto-tuner for sketched layers (see the module docstring for the procedure).

    Args:
        model: the (trained) model; tuned layers are found by name in it.
        configs: what to tune (``TuningConfigs``, a ``LayerConfig``, or their dict/list forms).
        accuracy_eval_func: ``f(model) -> float``, higher is better.
        search_algorithm: default ``OptunaSearch()``; one group (study) per layer or joint group.
        verbose: print the per-trial log lines and the final summary to stdout.
        accuracy_threshold: minimum accepted accuracy (enables the constrained objective).
        optmization_eval_func: ``f(model) -> float`` to maximise among trials meeting the
            threshold (e.g. throughput). ``optimization_eval_func`` is accepted as well.
        num_runs_per_param: evaluations per candidate; the mean is used, the spread is recorded.
        max_total_trials: whole-model trial budget shared by all groups (see :mod:`panther.tuner.budget`).
        time_budget_s: stop starting new trials after this many seconds.
        tune_tied: also sketch layers whose parameters are shared with another module (unties them).
        calibration_data: batches of real inputs (an iterable, read once). With it, each tuned
            Linear/Conv2d layer's input covariance is measured on the dense model before the first
            trial and reused by every ``init="data_svd"`` candidate, which ``params="auto"`` then uses.
        calibration_forward: ``f(model, batch)`` running one calibration batch (default:
            ``model(batch)``, or ``model(batch[0])`` for ``(inputs, targets)`` pairs).
        share_accuracy_drop: hold each group to a share of the allowed drop
            ``baseline - accuracy_threshold``, in proportion to its dense weights, instead of the
            whole margin (``False``: every group is tuned against ``accuracy_threshold`` itself, as
            in the original design). The composed model is checked against ``accuracy_threshold``
            either way.
    """

    def __init__(
        self,
        model: nn.Module,
        configs: Any,
        accuracy_eval_func: Callable[..., float],
        search_algorithm: Any = None,
        verbose: bool = False,
        accuracy_threshold: Optional[float] = None,
        optmization_eval_func: Optional[Callable[..., float]] = None,
        num_runs_per_param: int = 1,
        *,
        optimization_eval_func: Optional[Callable[..., float]] = None,
        max_total_trials: Optional[int] = None,
        time_budget_s: Optional[float] = None,
        tune_tied: bool = False,
        calibration_data: Optional[Iterable[Any]] = None,
        calibration_forward: Optional[Callable[[nn.Module, Any], Any]] = None,
        share_accuracy_drop: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if optmization_eval_func is not None and optimization_eval_func is not None \
                and optmization_eval_func is not optimization_eval_func:
            raise ValueError("give optmization_eval_func or optimization_eval_func, not two different functions")
        speed_func = optimization_eval_func if optimization_eval_func is not None else optmization_eval_func
        _check_callable("accuracy_eval_func", accuracy_eval_func, required=True)
        _check_callable("optmization_eval_func", speed_func, required=False)
        if accuracy_threshold is not None and (isinstance(accuracy_threshold, bool)
                                               or not isinstance(accuracy_threshold, (int, float))
                                               or not math.isfinite(accuracy_threshold)):
            raise ValueError(f"accuracy_threshold must be a finite number or None, got {accuracy_threshold!r}")
        if speed_func is not None and accuracy_threshold is None:
            raise ValueError("optmization_eval_func needs accuracy_threshold: maximising speed alone would pick "
                             "the smallest, least accurate sketch")
        _check_callable("calibration_forward", calibration_forward, required=False)
        if calibration_data is not None and not isinstance(calibration_data, Iterable):
            raise TypeError(f"calibration_data must be an iterable of batches, got {type(calibration_data).__name__}")
        _positive_number("num_runs_per_param", num_runs_per_param, integer=True, optional=False)
        _positive_number("max_total_trials", max_total_trials, integer=True)
        _positive_number("time_budget_s", time_budget_s, integer=False)
        for name, flag in (("verbose", verbose), ("tune_tied", tune_tied),
                           ("share_accuracy_drop", share_accuracy_drop)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be True or False, got {flag!r}")
        if search_algorithm is None:
            from panther.tuner.search import OptunaSearch

            search_algorithm = OptunaSearch()
        missing = [m for m in _SEARCH_METHODS if not callable(getattr(search_algorithm, m, None))]
        if missing:
            raise TypeError(f"search_algorithm lacks {missing}; implement panther.tuner.SearchAlgorithm")
        if getattr(search_algorithm, "direction", "maximize") != "maximize":
            raise ValueError("the tuner maximises its scores; create the search with direction='maximize'")

        self.model = model
        self.accuracy_eval_func = accuracy_eval_func
        self.optimization_eval_func = speed_func
        self.search_algorithm = search_algorithm
        self.verbose = verbose
        self.accuracy_threshold = None if accuracy_threshold is None else float(accuracy_threshold)
        self.num_runs_per_param = num_runs_per_param
        self.max_total_trials = max_total_trials
        self.time_budget_s = time_budget_s
        self.tune_tied = tune_tied
        self.share_accuracy_drop = share_accuracy_drop
        self.calibration_data = calibration_data
        self.calibration_forward = calibration_forward
        self._input_covs: Dict[str, torch.Tensor] = {}
        self.results = TuningResults()
        self._resolver = LayerNameResolver(model)
        self._originals: Dict[str, nn.Module] = {}  # layer name -> the dense layer it had
        self._installed: Dict[str, nn.Module] = {}  # layer name -> sketch installed by this tuner
        self._worker = _worker_token()
        self.setConfigs(configs)

    @property
    def optmization_eval_func(self) -> Optional[Callable[..., float]]:
        """The spec's spelling of :attr:`optimization_eval_func`."""
        return self.optimization_eval_func

    # -- configuration -------------------------------------------------------------------------
    def getResolver(self) -> LayerNameResolver:
        return self._resolver

    def getConfigs(self) -> TuningConfigs:
        """The configs as resolved: concrete layer names and parameter specs ("auto" expanded)."""
        return self._resolved_configs

    def setConfigs(self, configs: Any) -> None:
        """Resolve and validate ``configs`` against the model (nothing in the model changes)."""
        configs = TuningConfigs.coerce(configs)
        builder = GroupBuilder(self.model, self._resolver, self._dense_of,
                               bool(getattr(self.search_algorithm, "accepts_param_specs", False)), self.tune_tied,
                               data_aware=self.calibration_data is not None)
        groups, resolved = builder.build(configs)
        if self.calibration_data is None:
            for group in groups:
                init = group.space.get("init")
                if init is not None and "data_svd" in (init.values() or []):
                    raise ValueError(f"{group.name}: init='data_svd' needs calibration_data (batches of real inputs) "
                                     "passed to SKAutoTuner")
        self._groups: List[TuningGroup] = groups
        self._resolved_configs = resolved
        self._skipped = dict(builder.skipped)
        self._classes = {name: sketched_class_for(self._dense_of(name)) for g in groups for name in g.layers}
        for group in groups:
            for name in group.layers:
                self._originals.setdefault(name, self._dense_of(name))
        self.results = self._new_results()

    def _new_results(self) -> TuningResults:
        return TuningResults(groups={g.name: list(g.layers) for g in self._groups}, skipped=dict(self._skipped))

    def _dense_of(self, name: str) -> nn.Module:
        """The dense layer at ``name``: the remembered one if a sketch of this tuner sits there now."""
        current = self._resolver.module(name)
        if name in self._installed and current is self._installed[name]:
            return self._originals[name]
        return current

    # -- tuning --------------------------------------------------------------------------------
    def tune(self) -> Dict[str, Dict[str, Any]]:
        """Tune every group; the model is left exactly as it was. Returns :meth:`get_best_params`."""
        self.results = self._new_results()
        self._dense_evaluates = False
        self._cache: Dict[str, Dict[tuple, TrialRecord]] = {g.name: {} for g in self._groups}
        self._trial_counter = 0
        budget = Budget(self.max_total_trials, self.time_budget_s)
        before = {name: self.model.get_submodule(name) for name in self._originals}
        with self._progress_output():
            try:
                self._put(self._originals)
                if self.accuracy_threshold is not None:
                    self._measure_baseline()
                if budget.active:
                    self._tune_with_budget(budget)
                else:
                    for group in self._groups:
                        self._tune_group(group, budget)
                if self.accuracy_threshold is not None:
                    self._check_composed()
            finally:
                self._put(before)
            logger.info("tuning summary\n%s", self.summary())
        return self.get_best_params()

    def _measure_baseline(self) -> None:
        accuracy, _ = measure(self.accuracy_eval_func, self.model, self.num_runs_per_param, self._resource)
        self.results.baseline_accuracy = accuracy
        self._dense_evaluates = True  # so a candidate that raises is the candidate's fault
        logger.info("dense model accuracy %.4f (threshold %.4f)", accuracy, self.accuracy_threshold)
        if accuracy < self.accuracy_threshold:  # type: ignore[operator]
            warnings.warn(f"the dense model's accuracy {accuracy:.4f} is already below accuracy_threshold "
                          f"{self.accuracy_threshold}; no sketch is likely to meet it", stacklevel=3)
        if self.share_accuracy_drop:
            dense_weights = {g.name: self._dense_weights(g) for g in self._groups}
            self.results.group_thresholds = group_thresholds(accuracy, self.accuracy_threshold,  # type: ignore[arg-type]
                                                             dense_weights)
            if len(self._groups) > 1:
                logger.info("allowed drop %.4g shared by weight: group thresholds %.4f to %.4f",
                            accuracy - self.accuracy_threshold, min(self.results.group_thresholds.values()),
                            max(self.results.group_thresholds.values()))

    def _threshold_of(self, group: str) -> float:
        """The accuracy a trial of ``group`` must reach (its share of the drop, or the global threshold)."""
        return self.results.group_thresholds.get(group, self.accuracy_threshold)  # type: ignore[arg-type]

    def _tune_with_budget(self, budget: Budget) -> None:
        probes = self._probe_rounds(budget)
        weights = {g.name: potential(probes[g.name][1], self._dense_weights(g), self._threshold_or_none(g.name),
                                     settled=probes[g.name][0].settled) for g in self._groups}
        order = sorted(self._groups, key=lambda g: -weights[g.name])
        remaining = sum(weights.values())
        for group in order:
            share = budget.share(weights[group.name], remaining)
            remaining -= weights[group.name]
            logger.info("[%s] sensitivity weight %.3g: %s more trials", group.name, weights[group.name],
                        "unlimited" if share is None else share)
            # even with no trial left, the search hears the probes (its study then holds them all)
            self._tune_group(group, budget, max_trials=share, known=probes[group.name][1])

    def _probe_rounds(self, budget: Budget) -> Dict[str, Tuple[Prober, List[TrialRecord]]]:
        """Probe every group, one trial per group per round, until all are done or the budget is."""
        probes = {g.name: (prober_for(g.space, self._threshold_or_none(g.name)), []) for g in self._groups}
        pending = list(self._groups)
        while pending and not budget.exhausted():
            for group in list(pending):
                prober, records = probes[group.name]
                params = prober.next_params()
                if params is None:
                    pending.remove(group)
                    continue
                if budget.exhausted():
                    break
                record = self._cache[group.name].get(_params_key(params))
                if record is None:
                    record = self._evaluate_new(group, params, phase="probe")
                    records.append(record)
                    budget.spend()
                prober.tell(record)
        return probes

    def _threshold_or_none(self, group: str) -> Optional[float]:
        return None if self.accuracy_threshold is None else self._threshold_of(group)

    def _tune_group(self, group: TuningGroup, budget: Budget, max_trials: Optional[int] = None,
                    known: Sequence[TrialRecord] = ()) -> None:
        search = self.search_algorithm
        space = self._search_space(group)
        if callable(getattr(search, "start_group", None)):
            search.start_group(group.name, space)
        else:  # a duck-typed search without the group hook
            search.initialize(space)
        self._import_stored(group)
        add_known = getattr(search, "add_known", None)
        for record in known:  # probe results: let the search learn from them too
            if record.status == "failed":
                continue
            if callable(add_known):
                add_known(dict(record.params), record.score,
                          {_ATTR + f: getattr(record, f) for f in _RECORD_FIELDS})
            else:
                search.update(dict(record.params), record.score)
        evaluated = 0
        while not search.is_finished() and (max_trials is None or evaluated < max_trials) and not budget.exhausted():
            params = search.get_next_params()
            if params is None:
                break
            try:
                record = self._shared_result(group, params)
                if record is None:
                    record = self._evaluate_new(group, params, phase="search")
                    evaluated += 1
                    budget.spend()
            except BaseException:
                with contextlib.suppress(Exception):  # the pending trial must not stay "running" forever
                    search.update(params, math.nan)
                raise
            self._report(record)
            search.update(params, record.score if record.status != "failed" else math.nan)
        self._import_stored(group)  # what other workers sharing the study found meanwhile

    def _search_space(self, group: TuningGroup) -> Dict[str, Any]:
        if getattr(self.search_algorithm, "accepts_param_specs", False):
            return dict(group.space)
        return {name: spec.values() for name, spec in group.space.items()}

    # -- one trial -----------------------------------------------------------------------------
    def _evaluate_new(self, group: TuningGroup, params: Dict[str, Any], phase: str) -> TrialRecord:
        """Build, install, evaluate and remove the candidates for ``params``; record the outcome."""
        self._trial_counter += 1
        record = TrialRecord(group=group.name, layer_names=list(group.layers), trial=self._trial_counter,
                             params=dict(params), phase=phase, dense_weights=self._dense_weights(group))
        self.results.records.append(record)
        self._cache[group.name][_params_key(params)] = record
        started = time.perf_counter()
        try:
            candidates = {name: self._build(name, params, group.copy_weights) for name in group.layers}
        except Exception as exc:  # a combination the layer rejects (e.g. a rank above its size)
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            self._log_trial(record)
            return record
        record.weights = sum(layer_weights(c) for c in candidates.values())
        try:
            with self._swapped(candidates):
                self._measure_candidate(record)
        except Exception as exc:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.debug("[%s] trial %d raised", group.name, record.trial, exc_info=True)
            self._check_dense_evaluates(exc)
        except BaseException as exc:  # KeyboardInterrupt & co: the model is restored by _swapped
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.duration_s = time.perf_counter() - started
        self._log_trial(record)
        return record

    def _check_dense_evaluates(self, candidate_error: Exception) -> None:
        """Re-raise when the evaluation functions fail on the dense model too: the bug is not the candidate's."""
        if self._dense_evaluates:
            return
        try:
            measure(self.accuracy_eval_func, self.model, 1, self._resource)
            if self.optimization_eval_func is not None and self.accuracy_threshold is not None:
                measure(self.optimization_eval_func, self.model, 1, self._resource)
        except Exception as dense_error:
            raise dense_error from candidate_error
        self._dense_evaluates = True

    def _measure_candidate(self, record: TrialRecord) -> None:
        accuracy, spread = measure(self.accuracy_eval_func, self.model, self.num_runs_per_param, self._resource)
        record.accuracy, record.accuracy_std = accuracy, spread
        if math.isnan(accuracy):
            record.status, record.error = "failed", "accuracy is NaN"
            return
        threshold = self._threshold_or_none(record.group)
        if threshold is None:
            record.feasible, record.score = True, accuracy
        elif accuracy < threshold:
            record.feasible, record.score = False, INFEASIBLE_SCORE + (accuracy - threshold)
        elif self.optimization_eval_func is not None:
            speed, speed_spread = measure(self.optimization_eval_func, self.model, self.num_runs_per_param,
                                          self._resource)
            record.speed, record.speed_std = speed, speed_spread
            if math.isnan(speed):
                record.status, record.error = "failed", "optimization score is NaN"
                return
            record.feasible, record.score = True, speed
        else:
            record.feasible, record.score = True, 1.0 - record.weights / record.dense_weights  # type: ignore[operator]

    @property
    def _resource(self) -> Optional[Callable[[], Any]]:
        return resource_getter(self.search_algorithm)

    def _calibrate(self) -> None:
        """Measure the dense layers' input covariances once (data-aware init), with the dense layers in place."""
        names = [name for name, cls in self._classes.items()
                 if name not in self._input_covs and cls is not None and cls.__name__ in ("SKLinear", "SKConv2d")]
        if self.calibration_data is None or not names:
            return
        before = {name: self.model.get_submodule(name) for name in self._originals}
        self._put(self._originals)
        try:
            logger.info("calibrating %d layers on the calibration data", len(names))
            self._input_covs.update(collect_input_covariances(self.model, names, self.calibration_data,
                                                              self.calibration_forward))
        finally:
            self._put(before)

    def _build(self, name: str, params: Mapping[str, Any], copy_weights: bool) -> nn.Module:
        dense = self._originals[name]
        if params.get("init") == "data_svd":
            self._calibrate()
            params = {**params, "input_cov": self._input_covs[name]}
        candidate = build_candidate(dense, self._classes[name], params, copy_weights)  # type: ignore[arg-type]
        candidate.train(dense.training)
        return candidate

    def _dense_weights(self, group: TuningGroup) -> int:
        return sum(layer_weights(self._originals[name]) for name in group.layers)

    # -- reuse of earlier results (this run, a resumed study, other workers) -------------------
    def _shared_result(self, group: TuningGroup, params: Dict[str, Any]) -> Optional[TrialRecord]:
        """An earlier result for identical ``params``, or ``None`` if they must be evaluated."""
        key = _params_key(params)
        record = self._cache[group.name].get(key)
        if record is None:
            self._claim_pending()
            record = self._wait_for_other_worker(group, params)
        if record is None:
            return None
        self.results.reused_trials[group.name] = self.results.reused_trials.get(group.name, 0) + 1
        logger.info("[%s] %s: already evaluated (trial %d), reusing its result", group.name, describe(params),
                    record.trial)
        return record

    def _claim_pending(self) -> None:
        record_attr = getattr(self.search_algorithm, "record", None)
        if callable(record_attr) and getattr(self.search_algorithm, "pending_trial", None) is not None:
            record_attr(_WORKER_ATTR, self._worker)

    def _wait_for_other_worker(self, group: TuningGroup, params: Dict[str, Any]) -> Optional[TrialRecord]:
        """With a shared storage, adopt (or wait for) another worker's trial of the same params.

        Only an earlier trial (lower number) is waited for, so two workers never wait on each other.
        """
        study, pending = getattr(self.search_algorithm, "study", None), getattr(self.search_algorithm,
                                                                                "pending_trial", None)
        if study is None or pending is None or getattr(study, "_storage", None) is None:
            return None
        from optuna.trial import TrialState

        encoded = {name: group.space[name].encode(value) for name, value in params.items()}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            same = [t for t in study.get_trials(deepcopy=False) if t.number < pending.number and t.params == encoded]
            done = [t for t in same if t.state == TrialState.COMPLETE and _ATTR + "status" in t.user_attrs]
            if done:
                return self._adopt(group, done[0], params)
            running = [t for t in same if t.state == TrialState.RUNNING
                       and _worker_alive(t.user_attrs.get(_WORKER_ATTR), self._worker)]
            if not running:
                return None
            time.sleep(0.05)
        return None

    def _adopt(self, group: TuningGroup, trial: Any, params: Dict[str, Any]) -> TrialRecord:
        attrs = {f: trial.user_attrs.get(_ATTR + f) for f in _RECORD_FIELDS}
        self._trial_counter += 1
        record = TrialRecord(group=group.name, layer_names=list(group.layers), trial=self._trial_counter,
                             params=dict(params), score=trial.value, phase="storage",
                             dense_weights=self._dense_weights(group), **attrs)
        self.results.records.append(record)
        self._cache[group.name][_params_key(params)] = record
        return record

    def _import_stored(self, group: TuningGroup) -> None:
        """Results already in the group's study (a resumed run): known, and part of the best choice."""
        study = getattr(self.search_algorithm, "study", None)
        if study is None or not hasattr(study, "get_trials"):
            return
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if _ATTR + "status" not in trial.user_attrs or set(trial.params) != set(group.space):
                continue
            params = {name: group.space[name].decode(value) for name, value in trial.params.items()}
            if _params_key(params) not in self._cache[group.name]:
                self._adopt(group, trial, params)

    def _report(self, record: TrialRecord) -> None:
        record_attr = getattr(self.search_algorithm, "record", None)
        if not callable(record_attr) or getattr(self.search_algorithm, "pending_trial", True) is None:
            return
        for field_name in _RECORD_FIELDS:
            record_attr(_ATTR + field_name, getattr(record, field_name))

    # -- the composed model --------------------------------------------------------------------
    def _check_composed(self) -> None:
        """Re-check all winners together; back off the worst trade-offs until the threshold holds.

        Backing off a group first tries its more accurate feasible trials (e.g. a larger rank), so a
        layer is only reverted to dense when nothing it was tried with is safer. With margin left
        over (shared drops rarely add up exactly), :meth:`_spend_margin` then tries cheaper trials.
        """
        baseline = self.results.baseline_accuracy
        kept = {g.name: r for g in self._groups if (r := self.results.best_record(g.name)) is not None}
        while kept:
            accuracy = self._composed_accuracy(kept)
            if accuracy >= self.accuracy_threshold:  # type: ignore[operator]
                if self.share_accuracy_drop:
                    self._spend_margin(kept, accuracy)
                return
            worst = max(kept, key=lambda g: self._cost_per_gain(kept[g], baseline))
            safer = self._safer_record(worst, kept[worst])
            if safer is not None:
                kept[worst] = safer
                self.results.chosen[worst] = safer.trial
                logger.warning("composed accuracy %.4f < threshold %.4f: %s steps up to trial %d (%s)", accuracy,
                               self.accuracy_threshold, worst, safer.trial, describe(safer.params))
                continue
            del kept[worst]
            self.results.chosen.pop(worst, None)
            self.results.reverted.append(worst)
            logger.warning("composed accuracy %.4f < threshold %.4f: reverting %s to dense", accuracy,
                           self.accuracy_threshold, worst)

    def _composed_accuracy(self, kept: Mapping[str, TrialRecord]) -> float:
        """Accuracy of the model with every group in ``kept`` sketched as its record says."""
        accuracy = self._measure_composed(kept, self.accuracy_eval_func)
        self.results.composed_accuracy = accuracy
        logger.info("all %d tuned groups together: accuracy %.4f", len(kept), accuracy)
        return accuracy

    def _measure_composed(self, kept: Mapping[str, TrialRecord], func: Callable[..., float]) -> float:
        """``func`` on the model with ``kept`` installed; NaN (never accepted) if that raises."""
        candidates = {name: self._build(name, record.params, self._group(gname).copy_weights)
                      for gname, record in kept.items() for name in self._group(gname).layers}
        try:
            with self._swapped(candidates):
                value, _ = measure(func, self.model, self.num_runs_per_param, self._resource)
        except Exception as exc:
            logger.warning("the composed model raised %s: %s; treating it as missing the threshold",
                           type(exc).__name__, exc)
            return math.nan
        return value

    def _spend_margin(self, kept: Dict[str, TrialRecord], accuracy: float) -> None:
        """Use what the composed model has above the threshold for cheaper trials, one check each.

        The candidate saving the most weights per unit of extra drop goes first; a failed check
        rules out that group's trials at or below the failed size. With ``optmization_eval_func``
        a candidate must also make the composed model score higher on it (measured), since fewer
        weights need not mean faster. At most one check per group, so this costs little next to
        the search.
        """
        speed_func = self.optimization_eval_func
        speed: Optional[float] = None  # the composed model's, measured once a candidate needs it
        floor: Dict[str, int] = {}  # group -> weights at which a composed check failed
        for _ in range(len(self._groups)):
            options = self._cheaper_options(kept, accuracy - self.accuracy_threshold, floor)  # type: ignore[operator]
            if not options:
                return
            if speed_func is not None and speed is None:
                speed = self._measure_composed(kept, speed_func)
            name, record = max(options, key=lambda o: (o[0], -o[2].trial))[1:]
            trial = {**kept, name: record}
            trial_accuracy = self._composed_accuracy(trial)
            trial_speed = None
            if trial_accuracy >= self.accuracy_threshold and speed is not None:  # type: ignore[operator]
                trial_speed = self._measure_composed(trial, speed_func)  # type: ignore[arg-type]
            if trial_accuracy >= self.accuracy_threshold and (speed is None or trial_speed > speed):  # type: ignore[operator]
                kept[name], accuracy, speed = record, trial_accuracy, trial_speed
                self.results.chosen[name] = record.trial
                logger.info("spare margin: %s takes trial %d (%s), composed accuracy %.4f", name, record.trial,
                            describe(record.params), accuracy)
            else:
                floor[name] = record.weights  # type: ignore[assignment]
                self.results.composed_accuracy = accuracy

    def _cheaper_options(self, kept: Mapping[str, TrialRecord], margin: float,
                         floor: Mapping[str, int]) -> List[Tuple[float, str, TrialRecord]]:
        """``(weights saved per unit of drop, group, trial)`` for trials cheaper than each group's choice.

        A trial qualifies if it met the whole-model threshold alone, stores fewer weights than the
        group's current choice (dense if none) and more than ``floor``, is not measured slower, and
        its extra drop (measured alone) fits ``margin``.
        """
        options = []
        for group in self._groups:
            if group.name in self.results.reverted:
                continue
            current = kept.get(group.name)
            current_weights = current.weights if current is not None else self._dense_weights(group)
            current_accuracy = current.accuracy if current is not None else self.results.baseline_accuracy
            for r in self.results.records:
                if (r.group != group.name or r.status == "failed" or r.accuracy is None or r.weights is None
                        or r.accuracy < self.accuracy_threshold  # type: ignore[operator]
                        or not floor.get(group.name, -1) < r.weights < current_weights):  # type: ignore[operator]
                    continue
                if current is not None and None not in (current.speed, r.speed) and r.speed < current.speed:  # type: ignore[operator]
                    continue  # measured slower: not cheaper where it counts
                drop = max(current_accuracy - r.accuracy, 0.0)  # type: ignore[operator]
                if drop <= margin:
                    options.append(((current_weights - r.weights) / (drop + 1e-12), group.name, r))  # type: ignore[operator]
        return options

    def _safer_record(self, group: str, current: TrialRecord) -> Optional[TrialRecord]:
        """The best-scoring feasible trial of ``group`` measured more accurate than ``current``."""
        safer = [r for r in self.results.records if r.group == group and r.feasible and r.status != "failed"
                 and r.accuracy is not None and r.accuracy > current.accuracy]  # type: ignore[operator]
        return min(safer, key=lambda r: (-(r.score or 0.0), r.weights or 0, r.trial), default=None)

    @staticmethod
    def _cost_per_gain(record: TrialRecord, baseline: Optional[float]) -> float:
        drop = max((baseline if baseline is not None else record.accuracy) - record.accuracy, 0.0)  # type: ignore[operator]
        saved = max(record.dense_weights - record.weights, 1)  # type: ignore[operator]
        return (drop + 1e-12) / saved

    def _group(self, name: str) -> TuningGroup:
        return next(g for g in self._groups if g.name == name)

    # -- installing ----------------------------------------------------------------------------
    def _put(self, modules: Mapping[str, nn.Module]) -> None:
        for name, module in modules.items():
            if self.model.get_submodule(name) is not module:
                replace_module(self.model, name, module)

    @contextlib.contextmanager
    def _swapped(self, candidates: Mapping[str, nn.Module]) -> Iterator[None]:
        self._put(candidates)
        try:
            yield
        finally:
            self._put({name: self._originals[name] for name in candidates})

    def apply_best_params(self) -> nn.Module:
        """Install the best sketch of every tuned layer (layers without one get their dense layer back)."""
        best = self.get_best_params()
        if not best:
            warnings.warn("no tuned parameters to apply (no trial met the threshold, or tune() was not run); "
                          "the model keeps its dense layers", stacklevel=2)
        copy_weights = {name: g.copy_weights for g in self._groups for name in g.layers}
        for name in copy_weights:
            module = self._build(name, best[name], copy_weights[name]) if name in best else self._originals[name]
            self._put({name: module})
            self._installed[name] = module
        return self.model

    def replace_without_tuning(self) -> nn.Module:
        """Install sketches built from every spec's first value (Categorical: first choice; Int/Float: low)."""
        for group in self._groups:
            params = {name: spec.default() for name, spec in group.space.items()}
            for name in group.layers:
                module = self._build(name, params, group.copy_weights)
                self._put({name: module})
                self._installed[name] = module
        return self.model

    # -- results -------------------------------------------------------------------------------
    def get_best_params(self) -> Dict[str, Dict[str, Any]]:
        """``{layer: params}`` of the selected trial per layer (see the composed check), minus reverted ones."""
        best: Dict[str, Dict[str, Any]] = {}
        for group, layers in self.results.groups.items():
            record = self.results.selected_record(group)
            if record is not None:
                best.update({name: dict(record.params) for name in layers})
        return best

    @property
    def reverted_layers(self) -> List[str]:
        """Layers whose tuned sketch was dropped because the composed model missed the threshold."""
        return [name for group in self.results.reverted for name in self.results.groups.get(group, [])]

    def best_plan(self) -> Dict[str, Dict[str, Any]]:
        """The best parameters as a :mod:`panther.nn.rebuild` plan ``{layer: {"type", "params"}}``."""
        return {name: {"type": self._classes[name].__name__, "params": params}  # type: ignore[union-attr]
                for name, params in self.get_best_params().items()}

    def save_plan(self, path: Union[str, os.PathLike]) -> None:
        """Write :meth:`best_plan` as JSON; ``panther.nn.rebuild.apply_plan`` re-applies it to a fresh model."""
        from panther.nn.rebuild import save_plan

        save_plan(self.best_plan(), path)

    def get_results_dataframe(self) -> Any:
        """All trials, one row per layer (``layer_name``, parameters, ``score``, ``accuracy``, ``speed``, ...)."""
        return results_dataframe(self.results)

    def summary(self) -> str:
        """A table per layer: chosen parameters, accuracy, speed, weights kept and the outcome."""
        return summary_table(self.results)

    def save_tuning_results(self, file_path: Union[str, os.PathLike]) -> None:
        """Save the results as a pickle of plain data (loading it never runs code)."""
        self.results.save(file_path)

    def load_tuning_results(self, file_path: Union[str, os.PathLike]) -> None:
        """Load results saved by :meth:`save_tuning_results` for this model's tuned layers."""
        results = TuningResults.load(file_path)
        unknown = {name for layers in results.groups.values() for name in layers} - set(self._originals)
        if unknown:
            raise ValueError(f"results file tunes layers {sorted(unknown)} that this tuner does not tune")
        self.results = results

    # -- progress ------------------------------------------------------------------------------
    def _log_trial(self, record: TrialRecord) -> None:
        if record.status == "failed":
            logger.info("[%s] trial %d: %s -> failed (%s)", record.group, record.trial, describe(record.params),
                        record.error)
            return
        speed = "" if record.speed is None else f", speed {record.speed:.4g}"
        outcome = f"score {record.score:.4g}" if record.feasible else "below the accuracy threshold"
        logger.info("[%s] trial %d: %s -> accuracy %.4f±%.4f%s, weights %d/%d, %s", record.group, record.trial,
                    describe(record.params), record.accuracy, record.accuracy_std, speed, record.weights,
                    record.dense_weights, outcome)

    @contextlib.contextmanager
    def _progress_output(self) -> Iterator[None]:
        """With ``verbose``, show the tuner's INFO log lines on stdout for the duration of a run."""
        if not self.verbose:
            yield
            return
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        level = logger.level
        logger.addHandler(handler)
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
