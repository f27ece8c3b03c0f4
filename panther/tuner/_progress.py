"""What a ``verbose`` tuner shows while it runs: a progress bar on a terminal, log lines otherwise.

On a terminal, a ``tqdm`` bar counts the evaluations (of the whole-model budget when there is one)
and shows the current layer group and the best weight saving found so far; the per-trial lines go
above it. When stdout is not a terminal (a log file, CI), each trial is one INFO line instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Any, Iterator, Optional

from panther.tuner.results import TrialRecord

#: The package logger: its handler shows the lines of every tuner module (their `__name__` loggers are children).
LOGGER_NAME = "panther.tuner"


class _TqdmHandler(logging.Handler):
    """Writes log lines above the bar instead of through it."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stdout)


class TuningProgress:
    """Progress of one ``tune()`` run; a no-op unless ``verbose``.

    Args:
        verbose: show anything at all.
        total: evaluations expected (``None`` when unknown).
    """

    def __init__(self, verbose: bool, total: Optional[int]) -> None:
        self.verbose, self.total = verbose, total
        self._bar: Any = None
        self._best_saving = 0.0

    @contextlib.contextmanager
    def shown(self) -> Iterator["TuningProgress"]:
        """For the run: the tuner's INFO lines on stdout, and the bar when stdout is a terminal."""
        if not self.verbose:
            yield self
            return
        logger = logging.getLogger(LOGGER_NAME)
        on_terminal = sys.stdout.isatty()
        if on_terminal:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc="sketch tuning", unit="trial", file=sys.stdout, leave=True)
        handler: logging.Handler = _TqdmHandler() if on_terminal else logging.StreamHandler(sys.stdout)
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
        """One more evaluation: advance the bar, with the group and the best saving so far."""
        if self._bar is None:
            return
        if record.feasible and record.weight_ratio is not None:
            self._best_saving = max(self._best_saving, 1.0 - record.weight_ratio)
        self._bar.set_postfix_str(f"group {record.group}, best saving {self._best_saving:.0%}", refresh=False)
        self._bar.update(1)
