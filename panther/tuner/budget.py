"""A whole-model trial budget spent where it helps most.

Without a budget every group runs until its search is finished (``n_trials`` each), so a model
with many layers costs ``layers × n_trials`` validations. With ``max_total_trials`` (and/or
``time_budget_s``) the tuner first probes every group cheaply (its cheapest and a middle
configuration: a sensitivity pass), then hands the remaining trials out in proportion to what a
group can still gain: its dense size, weighted by how open the question is.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Sequence

from panther.tuner.params import ParamSpec
from panther.tuner.results import TrialRecord

#: How much is left to find out, by probe outcome (with an accuracy threshold).
_OPEN_QUESTION = {
    "cheapest_feasible": 0.0,  # the cheapest configuration already meets the threshold
    "middle_feasible": 1.0,  # the answer lies between the cheapest and the middle one
    "none_feasible": 0.5,  # only large ranks may work; worth fewer trials
}


def probe_params(space: Dict[str, ParamSpec]) -> List[Dict[str, Any]]:
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


def potential(probes: Sequence[TrialRecord], dense_weights: int, threshold: Optional[float]) -> float:
    """How many trials a group deserves, relative to the others (0: nothing left to learn)."""
    if threshold is None:
        return float(dense_weights)
    ok = [r for r in probes if r.status != "failed"]
    if ok and ok[0].feasible:
        key = "cheapest_feasible"
    elif any(r.feasible for r in ok):
        key = "middle_feasible"
    else:
        key = "none_feasible"
    return _OPEN_QUESTION[key] * dense_weights


class Budget:
    """Counts trials and time against the optional whole-model limits."""

    def __init__(self, max_total_trials: Optional[int], time_budget_s: Optional[float]) -> None:
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

    def share(self, weight: float, remaining_weight: float) -> Optional[int]:
        """Trials for a group of ``weight`` out of the groups still waiting (``None``: no trial limit)."""
        if self.max_total_trials is None:
            return None
        left = self.max_total_trials - self.used
        if remaining_weight <= 0 or left <= 0:
            return 0
        return round(left * weight / remaining_weight)
