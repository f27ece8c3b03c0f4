"""A whole-model trial budget spent where it helps most.

Without a budget every group runs until its search is finished (``n_trials`` each), so a model
with many layers costs ``layers × n_trials`` validations. With ``max_total_trials`` (and/or
``time_budget_s``) the tuner first probes every group, one probe per group per round so that a
tight budget still reaches every layer:

* a group whose only open choice is a cost-increasing size (its kinds' ``size_params``, e.g. the
  rank of the ``params="auto"`` spaces: :meth:`panther.kinds.LayerKind.ordered_axis`) is bisected
  for the smallest value that meets its accuracy threshold (:class:`Bisection`; accuracy grows with the size, so about
  ``log2(#values)`` probes settle it);
* any other group gets its cheapest and a middle configuration (:class:`FixedProbes`).

The remaining trials go to the search, in proportion to what a group can still gain: its dense
size, weighted by how open the question is (nothing, for a settled bisection).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from panther.space import ParamSpec
from panther.tuner.results import TrialRecord

#: How much is left to find out, by probe outcome (with an accuracy threshold).
_OPEN_QUESTION = {
    "cheapest_feasible": 0.0,  # the cheapest configuration already meets the threshold
    "middle_feasible": 1.0,  # the answer lies between the cheapest and the middle one
    "none_feasible": 0.5,  # only large ranks may work; worth fewer trials
}


def probe_params(space: dict[str, ParamSpec]) -> list[dict[str, Any]]:
    """The cheapest configuration (every spec's first value) and a middle one (deduplicated)."""
    cheapest = {name: spec.default() for name, spec in space.items()}
    middle = {}
    for name, spec in space.items():
        values = spec.values()
        if values is None:
            middle[name] = (spec.low + spec.high) / 2  # type: ignore[attr-defined]  # continuous Float
        else:
            middle[name] = values[len(values) // 2]
    return [cheapest] if middle == cheapest else [cheapest, middle]


class FixedProbes:
    """The cheapest configuration and a middle one, in that order."""

    def __init__(self, space: dict[str, ParamSpec]) -> None:
        self._queue = probe_params(space)

    def next_params(self) -> dict[str, Any] | None:
        return self._queue[0] if self._queue else None

    def tell(self, record: TrialRecord) -> None:
        self._queue.pop(0)

    @property
    def settled(self) -> bool:
        return False


class Bisection:
    """The smallest value of an ordered axis meeting the threshold, assuming accuracy grows with it."""

    def __init__(self, space: dict[str, ParamSpec], name: str, values: list[Any]) -> None:
        self._base = {key: spec.default() for key, spec in space.items()}
        self._name, self._values = name, values
        self._infeasible = -1  # largest index known to miss the threshold
        self._feasible = len(values)  # smallest index known to meet it (len: none yet)

    def next_params(self) -> dict[str, Any] | None:
        if self.settled:
            return None
        return {**self._base, self._name: self._values[self._middle]}

    def tell(self, record: TrialRecord) -> None:
        if record.status != "failed" and record.feasible:
            self._feasible = self._middle
        else:  # too inaccurate, or could not be built: look at larger values
            self._infeasible = self._middle

    @property
    def _middle(self) -> int:
        return (self._infeasible + self._feasible) // 2

    @property
    def settled(self) -> bool:
        return self._feasible - self._infeasible <= 1


Prober = FixedProbes | Bisection


def prober_for(space: dict[str, ParamSpec], threshold: float | None,
               axis: tuple[str, list[Any]] | None) -> Prober:
    """Bisection where it applies (an ordered ``axis``, from the group's kinds, and an accuracy
    threshold), else fixed probes."""
    if threshold is None or axis is None:
        return FixedProbes(space)
    return Bisection(space, *axis)


def potential(probes: Sequence[TrialRecord], dense_bytes: int, threshold: float | None,
              settled: bool = False) -> float:
    """How many trials a group deserves, relative to the others (0: nothing left to learn)."""
    if settled:
        return 0.0
    if threshold is None:
        return float(dense_bytes)
    ok = [r for r in probes if r.status != "failed"]
    if ok and ok[0].feasible:
        key = "cheapest_feasible"
    elif any(r.feasible for r in ok):
        key = "middle_feasible"
    else:
        key = "none_feasible"
    return _OPEN_QUESTION[key] * dense_bytes


class Budget:
    """Counts trials and time against the optional whole-model limits."""

    def __init__(self, max_total_trials: int | None, time_budget_s: float | None) -> None:
        self.max_total_trials = max_total_trials
        self.time_budget_s = time_budget_s
        self.used = 0
        self._start = time.monotonic()

    @property
    def active(self) -> bool:
        return self.max_total_trials is not None or self.time_budget_s is not None

    def spend(self) -> None:
        self.used += 1

    def exhausted(self) -> bool:
        if self.max_total_trials is not None and self.used >= self.max_total_trials:
            return True
        return self.time_budget_s is not None and time.monotonic() - self._start >= self.time_budget_s

    def share(self, weight: float, remaining_weight: float) -> int | None:
        """Trials for a group of ``weight`` out of the groups still waiting (``None``: no trial limit).

        A group with nothing left to learn (weight 0) gets none, even under a time budget alone.
        """
        if weight <= 0:
            return 0
        if self.max_total_trials is None:
            return None
        left = self.max_total_trials - self.used
        if remaining_weight <= 0 or left <= 0:
            return 0
        return round(left * weight / remaining_weight)
