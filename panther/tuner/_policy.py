"""Whole-model accuracy policy: per-group thresholds and the composed-model check with back-off.

Each group is tuned with the others dense, so the winners must be checked together. The policy is
pure: it reads trial records and calls a ``measure`` function (the tuner's installs the given
winners, evaluates the model and restores it; NaN when that fails), so it is testable alone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

from panther.tuner._evaluation import describe
from panther.tuner.results import TrialRecord, TuningResults

logger = logging.getLogger(__name__)

#: ``measure(kept)``: a value (accuracy or speed) of the model with each group in ``kept`` sketched as
#: its record says, every other group dense.
Measure = Callable[[Mapping[str, TrialRecord]], float]


def group_thresholds(baseline: float, threshold: float, dense_bytes: Mapping[str, int]) -> dict[str, float]:
    """Per-group accuracy thresholds that share the allowed drop ``baseline - threshold`` by size.

    Drops of separately sketched layers roughly add up, so groups that each lose no more than their
    share should meet ``threshold`` together; the share follows the dense bytes because that is
    where the savings are. Without a margin to share (a NaN baseline, or one already below the
    threshold) every group gets ``threshold`` itself.
    """
    total = sum(dense_bytes.values())
    if len(dense_bytes) == 1 or not math.isfinite(baseline) or baseline <= threshold or total <= 0:
        return {name: threshold for name in dense_bytes}  # (one group: exactly the threshold)
    return {name: baseline - (baseline - threshold) * size / total for name, size in dense_bytes.items()}


class ComposedCheck:
    """Re-check all winners together; back off the worst trade-offs until the threshold holds.

    Backing off a group first tries its more accurate feasible trials (e.g. a larger rank), so a
    layer is only reverted to dense when nothing it was tried with is safer. With margin left over
    (shared drops rarely add up exactly), :meth:`_spend_margin` then tries cheaper trials. The
    decisions are written to ``results`` (``chosen``, ``reverted``, ``composed_accuracy``).

    Args:
        results: the run's records; its decisions are updated in place.
        dense_bytes: stored bytes of each group's dense layers, in the groups' order.
        threshold: the whole model's accuracy threshold.
        measure_accuracy: accuracy of a composed model (see :data:`Measure`).
        measure_speed: its speed, or ``None`` when the tuner has no ``optmization_eval_func``.
    """

    def __init__(self, results: TuningResults, dense_bytes: Mapping[str, int], threshold: float,
                 measure_accuracy: Measure, measure_speed: Measure | None) -> None:
        self.results, self.dense_bytes, self.threshold = results, dict(dense_bytes), threshold
        self.measure_accuracy, self.measure_speed = measure_accuracy, measure_speed

    def run(self, spend_margin: bool) -> None:
        baseline = self.results.baseline_accuracy
        kept = {g: r for g in self.dense_bytes if (r := self.results.best_record(g)) is not None}
        while kept:
            accuracy = self._composed_accuracy(kept)
            if accuracy >= self.threshold:
                if spend_margin:
                    self._spend_margin(kept, accuracy)
                return
            worst = max(kept, key=lambda g: cost_per_gain(kept[g], baseline))
            safer = self._safer_record(worst, kept[worst])
            if safer is not None:
                kept[worst] = safer
                self.results.chosen[worst] = safer.trial
                logger.warning("composed accuracy %.4f < threshold %.4f: %s steps up to trial %d (%s)", accuracy,
                               self.threshold, worst, safer.trial, describe(safer.params))
                continue
            del kept[worst]
            self.results.chosen.pop(worst, None)
            self.results.reverted.append(worst)
            logger.warning("composed accuracy %.4f < threshold %.4f: reverting %s to dense", accuracy,
                           self.threshold, worst)

    def _composed_accuracy(self, kept: Mapping[str, TrialRecord]) -> float:
        accuracy = self.measure_accuracy(kept)
        self.results.composed_accuracy = accuracy
        logger.info("all %d tuned groups together: accuracy %.4f", len(kept), accuracy)
        return accuracy

    def _spend_margin(self, kept: dict[str, TrialRecord], accuracy: float) -> None:
        """Use what the composed model has above the threshold for cheaper trials, one check each.

        The candidate saving the most bytes per unit of extra drop goes first; a failed check
        rules out that group's trials at or below the failed size. With a speed measure a candidate
        must also make the composed model score higher on it (measured), since fewer bytes need
        not mean faster. At most one check per group, so this costs little next to the search.
        """
        speed: float | None = None  # the composed model's, measured once a candidate needs it
        floor: dict[str, int] = {}  # group -> bytes at which a composed check failed
        for _ in range(len(self.dense_bytes)):
            options = self._cheaper_options(kept, accuracy - self.threshold, floor)
            if not options:
                return
            if self.measure_speed is not None and speed is None:
                speed = self.measure_speed(kept)
            name, record = max(options, key=lambda o: (o[0], -o[2].trial))[1:]
            trial = {**kept, name: record}
            trial_accuracy = self._composed_accuracy(trial)
            trial_speed = None
            if trial_accuracy >= self.threshold and speed is not None:
                trial_speed = self.measure_speed(trial)  # type: ignore[misc]
            if trial_accuracy >= self.threshold and (speed is None or trial_speed > speed):  # type: ignore[operator]
                kept[name], accuracy, speed = record, trial_accuracy, trial_speed
                self.results.chosen[name] = record.trial
                logger.info("spare margin: %s takes trial %d (%s), composed accuracy %.4f", name, record.trial,
                            describe(record.params), accuracy)
            else:
                floor[name] = record.bytes  # type: ignore[assignment]
                self.results.composed_accuracy = accuracy

    def _cheaper_options(self, kept: Mapping[str, TrialRecord], margin: float,
                         floor: Mapping[str, int]) -> list[tuple[float, str, TrialRecord]]:
        """``(bytes saved per unit of drop, group, trial)`` for trials cheaper than each group's choice.

        A trial qualifies if it met the whole-model threshold alone, stores fewer bytes than the
        group's current choice (dense if none) and more than ``floor``, is not measured slower, and
        its extra drop (measured alone) fits ``margin``.
        """
        options = []
        for group, dense_bytes in self.dense_bytes.items():
            if group in self.results.reverted:
                continue
            current = kept.get(group)
            current_bytes = current.bytes if current is not None else dense_bytes
            current_accuracy = current.accuracy if current is not None else self.results.baseline_accuracy
            for r in self.results.records:
                if (r.group != group or r.status == "failed" or r.accuracy is None or r.bytes is None
                        or r.accuracy < self.threshold
                        or not floor.get(group, -1) < r.bytes < current_bytes):  # type: ignore[operator]
                    continue
                if current is not None and None not in (current.speed, r.speed) and r.speed < current.speed:  # type: ignore[operator]
                    continue  # measured slower: not cheaper where it counts
                drop = max(current_accuracy - r.accuracy, 0.0)  # type: ignore[operator]
                if drop <= margin:
                    options.append(((current_bytes - r.bytes) / (drop + 1e-12), group, r))  # type: ignore[operator]
        return options

    def _safer_record(self, group: str, current: TrialRecord) -> TrialRecord | None:
        """The best-scoring feasible trial of ``group`` measured more accurate than ``current``."""
        safer = [r for r in self.results.records if r.group == group and r.feasible and r.status != "failed"
                 and r.accuracy is not None and r.accuracy > current.accuracy]  # type: ignore[operator]
        return min(safer, key=lambda r: (-(r.score or 0.0), r.bytes or 0, r.trial), default=None)


def cost_per_gain(record: TrialRecord, baseline: float | None) -> float:
    """Accuracy lost per byte saved: the group backed off first is the one where this is largest."""
    drop = max((baseline if baseline is not None else record.accuracy) - record.accuracy, 0.0)  # type: ignore[operator]
    saved = max(record.dense_bytes - record.bytes, 1)  # type: ignore[operator]
    return (drop + 1e-12) / saved
