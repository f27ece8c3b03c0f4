"""The trial loop: every group asks the search for parameters until its budget or the search ends.

Without a whole-model budget, each group runs its search to the end in turn. With one
(``max_total_trials`` / ``time_budget_s``, see :mod:`panther.tuner._budget`), groups are first probed
round-robin, so a tight budget still reaches each one, and what remains is shared in proportion
to what a group can still gain.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Sequence

from panther.tuner._budget import Budget, Prober, potential, prober_for
from panther.tuner._groups import TuningGroup
from panther.tuner._sharing import SharedTrials, record_fields
from panther.tuner._trials import TrialRunner
from panther.tuner.results import TrialRecord
from panther.tuner.search.base import SearchAlgorithm, param_space_for

logger = logging.getLogger(__name__)


class SearchLoop:
    """Runs the search over ``groups`` with ``runner`` evaluating proposals.

    Args:
        search: the search algorithm (one study per group).
        groups: the tuning groups, in order.
        runner: evaluates and records trials.
        threshold_of: each group's accuracy threshold (``None`` without one).
    """

    def __init__(self, search: SearchAlgorithm, groups: Sequence[TuningGroup], runner: TrialRunner,
                 threshold_of: Callable[[str], float | None]) -> None:
        self.search, self.groups, self.runner, self.threshold_of = search, list(groups), runner, threshold_of
        self.shared = SharedTrials(search, runner)

    def run(self, budget: Budget) -> None:
        if budget.active:
            self._run_with_budget(budget)
        else:
            for group in self.groups:
                self._tune_group(group, budget)

    def _run_with_budget(self, budget: Budget) -> None:
        probes = self._probe_rounds(budget)
        weights = {g.name: potential(probes[g.name][1], self.runner.installer.dense_bytes(g.layers),
                                     self.threshold_of(g.name), settled=probes[g.name][0].settled)
                   for g in self.groups}
        order = sorted(self.groups, key=lambda g: -weights[g.name])
        remaining = sum(weights.values())
        for group in order:
            share = budget.share(weights[group.name], remaining)
            remaining -= weights[group.name]
            logger.info("[%s] sensitivity weight %.3g: %s more trials", group.name, weights[group.name],
                        "unlimited" if share is None else share)
            # even with no trial left, the search hears the probes (its study then holds them all)
            self._tune_group(group, budget, max_trials=share, known=probes[group.name][1])

    def _probe_rounds(self, budget: Budget) -> dict[str, tuple[Prober, list[TrialRecord]]]:
        """Probe every group, one trial per group per round, until all are done or the budget is."""
        probes = {g.name: (prober_for(g.space, self.threshold_of(g.name), g.ordered_axis()), []) for g in self.groups}
        pending = list(self.groups)
        while pending and not budget.exhausted():
            for group in list(pending):
                prober, records = probes[group.name]
                params = prober.next_params()
                if params is None:
                    pending.remove(group)
                    continue
                if budget.exhausted():
                    break
                record = self.runner.known(group, params)
                if record is None:
                    record = self.runner.evaluate(group, params, phase="probe")
                    records.append(record)
                    budget.spend()
                prober.tell(record)
        return probes

    def _tune_group(self, group: TuningGroup, budget: Budget, max_trials: int | None = None,
                    known: Sequence[TrialRecord] = ()) -> None:
        search = self.search
        search.start_group(group.name, param_space_for(search, group.space))
        self.shared.import_stored(group)
        for record in known:  # probe results: let the search learn from them too
            if record.status != "failed":
                search.add_known(dict(record.params), record.score, record_fields(record))
        evaluated = 0
        while not search.is_finished() and (max_trials is None or evaluated < max_trials) and not budget.exhausted():
            if self._fully_evaluated(group):
                logger.info("[%s] every combination of its space is evaluated", group.name)
                break
            params = search.get_next_params()
            if params is None:
                break
            try:
                record = self.shared.result_for(group, params)
                if record is None:
                    record = self.runner.evaluate(group, params, phase="search")
                    evaluated += 1
                    budget.spend()
            except BaseException:
                with contextlib.suppress(Exception):  # the pending trial must not stay "running" forever
                    search.update(params, math.nan)
                raise
            self.shared.publish(record)
            search.update(params, record.score if record.status != "failed" else math.nan)
        self.shared.import_stored(group)  # what other workers sharing the study found meanwhile

    def _fully_evaluated(self, group: TuningGroup) -> bool:
        """Whether every combination of a finite space has a result (asking again could only repeat one)."""
        sizes = [spec.values() for spec in group.space.values()]
        if any(values is None for values in sizes):
            return False
        return len(self.runner.cache.get(group.name, {})) >= math.prod(len(values) for values in sizes)  # type: ignore[arg-type]
