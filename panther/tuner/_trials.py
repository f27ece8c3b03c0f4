"""One trial: build a group's candidates, swap them in, score them, swap them out, record the outcome.

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
from dataclasses import dataclass
from typing import Any

from torch import nn

from panther.tuner._evaluation import EvalFunc, describe, measure
from panther.tuner._groups import TuningGroup
from panther.tuner._installer import LayerInstaller
from panther.tuner._layers import layer_bytes
from panther.tuner.results import TrialRecord, TuningResults

logger = logging.getLogger(__name__)

#: Score offset told to the search for trials below the accuracy threshold.
INFEASIBLE_SCORE = -1.0e6
#: The fields of a trial's record that travel with it through a search's storage.
RECORD_FIELDS = ("status", "accuracy", "accuracy_std", "speed", "speed_std", "feasible", "bytes", "error")


def params_key(params: Mapping[str, Any]) -> tuple:
    return tuple(sorted((name, repr(value)) for name, value in params.items()))


@dataclass
class Measurement:
    """What one evaluation of installed candidates gave: the one measuring step of both strategies.

    ``speed`` is only measured when the accuracy meets the threshold (and timing was asked for);
    ``error`` is set when the candidates made the evaluation raise.
    """

    accuracy: float = math.nan
    accuracy_std: float | None = None
    speed: float | None = None
    speed_std: float | None = None
    meets_threshold: bool = False
    error: str | None = None


class TrialRunner:
    """Evaluates candidates and keeps every record of the run in ``results``.

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
        record.bytes = sum(layer_bytes(c) for c in candidates.values())
        try:
            self._score(record, self.measure_candidates(candidates, self.threshold_of(record.group)))
        except BaseException as exc:  # KeyboardInterrupt & co: the model is restored by swapped()
            record.status, record.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            record.duration_s = time.perf_counter() - started
        log_trial(record)
        self.on_trial(record)
        return record

    def measure_candidates(self, candidates: Mapping[str, nn.Module], threshold: float | None,
                           timed: bool = True) -> Measurement:
        """Swap ``candidates`` in, measure accuracy, and speed when it meets ``threshold`` (and
        ``timed``); the model is restored. A candidate that makes the evaluation raise gives
        ``error`` (the user's functions failing on the dense model too re-raise instead)."""
        result = Measurement()
        model = self.installer.model
        try:
            with self.installer.swapped(candidates):
                result.accuracy, result.accuracy_std = measure(self.accuracy_func, model, self.runs, self.resource)
                result.meets_threshold = not math.isnan(result.accuracy) and (
                    threshold is None or result.accuracy >= threshold)
                if result.meets_threshold and timed and threshold is not None and self.speed_func is not None:
                    result.speed, result.speed_std = measure(self.speed_func, model, self.runs, self.resource)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
            logger.debug("candidates %s raised", sorted(candidates), exc_info=True)
            self.check_dense_evaluates(exc)
        return result

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

    def _score(self, record: TrialRecord, result: Measurement) -> None:
        """Fill ``record`` from ``result``: status, feasibility and the score the search is told."""
        if result.error is not None:
            if not math.isnan(result.accuracy):  # the speed function raised after the accuracy was measured
                record.accuracy, record.accuracy_std = result.accuracy, result.accuracy_std
            record.status, record.error = "failed", result.error
            return
        accuracy = result.accuracy
        record.accuracy, record.accuracy_std = accuracy, result.accuracy_std
        if math.isnan(accuracy):
            record.status, record.error = "failed", "accuracy is NaN"
            return
        threshold = self.threshold_of(record.group)
        if threshold is None:
            record.feasible, record.score = True, accuracy
        elif accuracy < threshold:
            record.feasible, record.score = False, INFEASIBLE_SCORE + (accuracy - threshold)
        elif self.speed_func is not None:
            record.speed, record.speed_std = result.speed, result.speed_std
            if result.speed is None or math.isnan(result.speed):
                record.status, record.error = "failed", "optimization score is NaN"
                return
            record.feasible, record.score = True, result.speed
        else:
            record.feasible, record.score = True, 1.0 - record.bytes / record.dense_bytes  # type: ignore[operator]


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
