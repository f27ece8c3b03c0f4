"""One trial: build a group's candidates, swap them in, score them, swap them out, record the outcome.

Both strategies measure through :meth:`TrialRunner.measure`, so a search trial (a one-group plan,
:class:`~panther.tuner.results.TrialRecord`) and an allocation's whole-model plan
(:class:`~panther.tuner.results.PlanRecord`) hold the same measured fields, measured the same way.

Objective (higher is better): accuracy without a threshold; with one, ``optmization_eval_func``
(e.g. throughput) if given, else the fraction of the layers' stored bytes saved. A trial below its
threshold keeps its measured accuracy, its speed is never measured, and its score is
``INFEASIBLE_SCORE + (accuracy - threshold)``: below every feasible score, yet ordered by accuracy
so a search still learns where to go.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from panther.tuner._evaluation import EvalFunc, describe, measure
from panther.tuner._groups import TuningGroup
from panther.tuner._installer import LayerInstaller, params_key
from panther.tuner._layers import layer_bytes
from panther.tuner.results import MeasuredPlan, PlanRecord, TrialRecord, TuningResults

logger = logging.getLogger(__name__)

#: Score offset told to the search for trials below the accuracy threshold.
INFEASIBLE_SCORE = -1.0e6
#: The fields of a trial's record that travel with it through a search's storage.
RECORD_FIELDS = ("status", "accuracy", "accuracy_std", "speed", "speed_std", "feasible", "bytes", "error")


class TrialRunner:
    """Evaluates candidates and keeps every record of the run in ``results`` (trials and plans).

    Args:
        installer: swaps candidates in and out.
        accuracy_func, speed_func: the user's evaluation functions.
        runs: evaluations per candidate (mean used, spread recorded).
        resource: the search's resource getter, or ``None``.
        threshold_of: the accuracy a trial of a group must reach (``None``: no threshold).
        results: where records go.
    """

    def __init__(self, installer: LayerInstaller, accuracy_func: EvalFunc, speed_func: EvalFunc | None,
                 runs: int, resource: Callable[[], Any] | None, threshold_of: Callable[[str], float | None],
                 results: TuningResults) -> None:
        self.installer, self.accuracy_func, self.speed_func = installer, accuracy_func, speed_func
        self.runs, self.resource, self.threshold_of, self.results = runs, resource, threshold_of, results
        self.cache: dict[str, dict[tuple, TrialRecord]] = {}
        self.counter = 0
        self.dense_evaluates = False  # set once the functions are known to work on the dense model
        self.on_trial: Callable[[TrialRecord], None] = lambda record: None  # after each evaluation

    def known(self, group: TuningGroup, params: Mapping[str, Any]) -> TrialRecord | None:
        """This run's record for identical ``params``, if any."""
        return self.cache.get(group.name, {}).get(params_key(params))

    def new_record(self, group: TuningGroup, params: Mapping[str, Any], phase: str, **fields: Any) -> TrialRecord:
        """A record numbered in this run, cached and appended to the results."""
        self.counter += 1
        record = TrialRecord(group=group.name, layer_names=list(group.layers), trial=self.counter,
                             params=dict(params), phase=phase,
                             dense_bytes=self.installer.dense_bytes(group.layers), **fields)
        self.results.records.append(record)
        self.cache.setdefault(group.name, {})[params_key(params)] = record
        return record

    def new_plan(self, groups: Mapping[str, TuningGroup], choices: Mapping[str, Mapping[str, Any]], phase: str,
                 **fields: Any) -> PlanRecord:
        """A whole-model plan record (``groups``: the tuned groups by name) numbered in this run and
        appended to ``results.plans``; ``dense_bytes`` counts the layers ``choices`` replaces."""
        choices = {group: dict(params) for group, params in choices.items()}
        layers = [name for group in choices for name in groups[group].layers]
        record = PlanRecord(number=len(self.results.plans) + 1, choices=choices, phase=phase,
                            **{"dense_bytes": self.installer.dense_bytes(layers), **fields})
        self.results.plans.append(record)
        return record

    def evaluate_plan(self, groups: Mapping[str, TuningGroup], choices: Mapping[str, Mapping[str, Any]],
                      phase: str, threshold: float, timed: bool = True, **fields: Any) -> PlanRecord:
        """Build, install, measure and remove the whole-model plan ``choices`` (see :meth:`measure`)."""
        started = time.perf_counter()
        candidates = {name: self.installer.build(name, params, groups[group].copy_weights)
                      for group, params in choices.items() for name in groups[group].layers}
        record = self.new_plan(groups, choices, phase, **fields)
        self.measure(record, candidates, threshold, timed, started=started)
        return record

    def measure_baseline(self) -> float:
        accuracy, _ = measure(self.accuracy_func, self.installer.model, self.runs, self.resource)
        self.dense_evaluates = True  # so a candidate that raises is the candidate's fault
        return accuracy

    def evaluate(self, group: TuningGroup, params: dict[str, Any], phase: str) -> TrialRecord:
        """Build, install, evaluate and remove the candidates for ``params``; record the outcome."""
        record = self.new_record(group, params, phase)
        started = time.perf_counter()
        try:
            candidates = {name: self.installer.build(name, params, group.copy_weights) for name in group.layers}
        except Exception as exc:  # a combination the layer rejects (e.g. a rank above its size)
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            log_trial(record)
            self.on_trial(record)
            return record
        self.measure(record, candidates, self.threshold_of(record.group), started=started)
        record.score = self._score(record, self.threshold_of(record.group))
        log_trial(record)
        self.on_trial(record)
        return record

    def measure(self, record: MeasuredPlan, candidates: Mapping[str, nn.Module], threshold: float | None,
                timed: bool = True, started: float | None = None) -> None:
        """The one measuring step of both strategies: swap ``candidates`` in, measure, restore the model.

        Fills ``record``: ``bytes`` of the candidates, accuracy, and speed when it meets ``threshold``
        (and ``timed``); ``feasible`` when it meets the threshold with any speed it needs measured;
        ``status``/``error`` when an evaluation raised or gave NaN (the user's functions failing on
        the dense model too re-raise instead); ``duration_s`` since ``started`` (default: now).
        """
        started = time.perf_counter() if started is None else started
        record.bytes = sum(layer_bytes(c) for c in candidates.values())
        model = self.installer.model
        needs_speed = timed and threshold is not None and self.speed_func is not None
        try:
            with self.installer.swapped(candidates):
                record.accuracy, record.accuracy_std = measure(self.accuracy_func, model, self.runs, self.resource)
                meets = not math.isnan(record.accuracy) and (threshold is None or record.accuracy >= threshold)
                if meets and needs_speed:
                    record.speed, record.speed_std = measure(self.speed_func, model, self.runs, self.resource)  # type: ignore[arg-type]
        except Exception as exc:
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            logger.debug("candidates %s raised", sorted(candidates), exc_info=True)
            self.check_dense_evaluates(exc)
            return
        except BaseException as exc:  # KeyboardInterrupt & co: the model is restored by swapped()
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.duration_s = time.perf_counter() - started
        if math.isnan(record.accuracy):
            record.status, record.error = "failed", "accuracy is NaN"
        elif meets and needs_speed and (record.speed is None or math.isnan(record.speed)):
            record.status, record.error = "failed", "optimization score is NaN"
        else:
            record.feasible = meets

    def measure_composed(self, kept: Mapping[str, TrialRecord], groups: Mapping[str, TuningGroup],
                         func: EvalFunc) -> float:
        """``func`` on the model with every group in ``kept`` sketched as its record says; NaN if that raises."""
        candidates = {name: self.installer.build(name, record.params, groups[gname].copy_weights)
                      for gname, record in kept.items() for name in groups[gname].layers}
        try:
            with self.installer.swapped(candidates):
                value, _ = measure(func, self.installer.model, self.runs, self.resource)
        except Exception as exc:
            logger.warning("the composed model raised %s: %s; treating it as missing the threshold",
                           type(exc).__name__, exc)
            return math.nan
        return value

    def check_dense_evaluates(self, candidate_error: Exception) -> None:
        """Re-raise when the evaluation functions fail on the dense model too: the bug is not the candidate's."""
        if self.dense_evaluates:
            return
        try:
            measure(self.accuracy_func, self.installer.model, 1, self.resource)
            if self.speed_func is not None:
                measure(self.speed_func, self.installer.model, 1, self.resource)
        except Exception as dense_error:
            raise dense_error from candidate_error
        self.dense_evaluates = True

    def _score(self, record: TrialRecord, threshold: float | None) -> float | None:
        """The value the search is told for a measured trial (see the module docstring); ``None`` if it failed."""
        if record.status == "failed":
            return None
        if threshold is None:
            return record.accuracy
        if not record.feasible:
            return INFEASIBLE_SCORE + (record.accuracy - threshold)  # type: ignore[operator]
        if self.speed_func is not None:
            return record.speed
        return 1.0 - record.bytes / record.dense_bytes  # type: ignore[operator]


def log_trial(record: TrialRecord) -> None:
    if record.status == "failed":
        logger.info("[%s] trial %d: %s -> failed (%s)", record.group, record.trial, describe(record.params),
                    record.error)
        return
    speed = "" if record.speed is None else f", speed {record.speed:.4g}"
    outcome = f"score {record.score:.4g}" if record.feasible else "below the accuracy threshold"
    logger.info("[%s] trial %d: %s -> accuracy %.4f±%.4f%s, bytes %d/%d, %s", record.group, record.trial,
                describe(record.params), record.accuracy, record.accuracy_std, speed, record.bytes,
                record.dense_bytes, outcome)
