"""What a ``verbose`` tuner shows while it runs: a progress bar on a terminal, log lines otherwise.

On a terminal, a ``tqdm`` bar counts the evaluations out of the most the run can make
(:func:`planned_trials`) and shows the current layer group and the best gain found so far; the
per-trial lines go above it. When stdout is not a terminal (a log file, CI), each trial is one INFO
line instead. Callers that own the console (the Lightning plugin follows the trainer's
``enable_progress_bar``) can force the bar off or on.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from panther.tuner._groups import TuningGroup
from panther.tuner.results import PlanRecord, TrialRecord
from panther.tuner.search.base import SearchAlgorithm

#: The package logger: its handler shows the lines of every tuner module (their `__name__` loggers are children).
LOGGER_NAME = "panther.tuner"


class _TqdmHandler(logging.Handler):
    """Writes log lines above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stdout)


def planned_trials(groups: Sequence[TuningGroup], search: SearchAlgorithm, max_total_trials: int | None) -> int | None:
    """The most evaluations one ``tune()`` can make (the bar's total), ``None`` when unbounded.

    A group evaluates each combination at most once, so a finite space bounds it; a search with
    budget per group (:meth:`~panther.tuner.search.base.SearchAlgorithm.planned_trials`, repeated
    proposals included) bounds it too; a whole-model ``max_total_trials`` bounds the sum. Runs sharing
    a study, or searches that stop early, end below it.
    """
    per_search = search.planned_trials()
    caps = []
    for group in groups:
        values = [spec.values() for spec in group.space.values()]
        space = None if any(v is None for v in values) else math.prod(len(v) for v in values)  # type: ignore[arg-type]
        bounds = [b for b in (per_search, space) if b is not None]
        caps.append(min(bounds) if bounds else None)
    by_groups = None if None in caps else sum(caps)  # type: ignore[arg-type]
    bounds = [b for b in (max_total_trials, by_groups) if b is not None]
    return min(bounds) if bounds else None


class TuningProgress:
    """Progress of one ``tune()`` run; a no-op unless ``verbose``.

    Args:
        verbose: show anything at all.
        total: evaluations expected (``None`` when unknown).
        bar: ``None`` (auto): a bar when stdout is a terminal; ``False``: never (INFO lines only);
            ``True``: a bar even when stdout is not a terminal.
    """

    def __init__(self, verbose: bool, total: int | None, bar: bool | None = None) -> None:
        self.verbose, self.total, self.bar = verbose, total, bar
        self._bar: Any = None
        self._best_saving = 0.0
        self._best_speed: float | None = None

    @contextlib.contextmanager
    def shown(self) -> Iterator[TuningProgress]:
        """For the run: the tuner's INFO lines on stdout, and the bar (see ``bar``)."""
        if not self.verbose:
            yield self
            return
        logger = logging.getLogger(LOGGER_NAME)
        with_bar = sys.stdout.isatty() if self.bar is None else self.bar
        if with_bar:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="sketch tuning", unit="trial", file=sys.stdout, leave=True)
        handler: logging.Handler = _TqdmHandler() if with_bar else logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        level = logger.level
        logger.addHandler(handler)
        if not logger.isEnabledFor(logging.INFO):
            logger.setLevel(logging.INFO)
        try:
            yield self
        finally:
            self.close_bar()
            logger.removeHandler(handler)
            logger.setLevel(level)

    def close_bar(self) -> None:
        """End the bar (before the summary is printed under it)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def trial_done(self, record: TrialRecord) -> None:
        """One more evaluation: advance the bar, with the group and the best gains so far.

        The gains are the largest weight saving and, when a speed function is measured, the highest
        speed among trials meeting the threshold.
        """
        self._advance(f"group {record.group}", record.feasible, record.size_ratio, record.speed)

    def plan_done(self, plan: PlanRecord) -> None:
        """One more whole-model plan evaluated (``strategy="allocate"``, see ``results.plans``)."""
        self._advance(f"plan {plan.number} ({plan.phase})", plan.feasible, plan.size_ratio, plan.speed)

    def _advance(self, label: str, feasible: bool, size_ratio: float | None, speed: float | None) -> None:
        if self._bar is None:
            return
        if feasible and size_ratio is not None:
            self._best_saving = max(self._best_saving, 1.0 - size_ratio)
        if feasible and speed is not None:
            self._best_speed = max(speed, self._best_speed or speed)
        best_speed = "" if self._best_speed is None else f", best speed {self._best_speed:.3g}"
        self._bar.set_postfix_str(f"{label}, best saving {self._best_saving:.0%}{best_speed}", refresh=False)
        self._bar.update(1)
