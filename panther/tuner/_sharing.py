"""Reuse of earlier results: this run's, a resumed study's, and other workers' sharing one storage.

The search owns where results are kept and how workers find each other's
(:meth:`~panther.tuner.search.base.SearchAlgorithm.known_result`, ``stored_results``, ``publish``);
this module turns what it finds into the run's trial records.
"""

from __future__ import annotations

import logging
from typing import Any

from panther.tuner._evaluation import describe
from panther.tuner._groups import TuningGroup
from panther.tuner._trials import RECORD_FIELDS, TrialRunner
from panther.tuner.results import TrialRecord
from panther.tuner.search.base import KnownResult, SearchAlgorithm

logger = logging.getLogger(__name__)


def record_fields(record: TrialRecord) -> dict[str, Any]:
    """What the search stores with a trial: the fields another run needs to reuse it."""
    return {name: getattr(record, name) for name in RECORD_FIELDS}


class SharedTrials:
    """Finds results for proposals before they are evaluated, and publishes the ones evaluated here."""

    def __init__(self, search: SearchAlgorithm, runner: TrialRunner) -> None:
        self.search, self.runner = search, runner

    def result_for(self, group: TuningGroup, params: dict[str, Any]) -> TrialRecord | None:
        """An earlier result for identical ``params``, or ``None`` if they must be evaluated."""
        record = self.runner.known(group, params)
        if record is None:
            known = self.search.known_result(params)
            record = None if known is None else self._adopt(group, known)
        if record is None:
            return None
        results = self.runner.results
        results.reused_trials[group.name] = results.reused_trials.get(group.name, 0) + 1
        logger.debug("[%s] %s: already evaluated (trial %d), reusing its result", group.name, describe(params),
                     record.trial)
        return record

    def import_stored(self, group: TuningGroup) -> None:
        """Results already in the group's storage: known, and part of the best choice."""
        for known in self.search.stored_results():
            if set(known.params) == set(group.space) and self.runner.known(group, known.params) is None:
                self._adopt(group, known)

    def publish(self, record: TrialRecord) -> None:
        self.search.publish(record_fields(record))

    def _adopt(self, group: TuningGroup, known: KnownResult) -> TrialRecord:
        fields = {name: known.record.get(name) for name in RECORD_FIELDS}
        return self.runner.new_record(group, known.params, "storage", score=known.score, **fields)
