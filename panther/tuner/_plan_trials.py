"""Every whole-model plan the allocation evaluates, as a trial of the search's Optuna study.

So the spec's tools work after an allocating tune as after a search: ``tuner.search_algorithm.study``,
``get_trials_dataframe()``, ``optuna.visualization.*`` and ``optuna-dashboard``. The study is the
search's group ``"allocation"`` (``f"{study_name}::allocation"``, in the search's storage).

A trial per evaluated plan
    One categorical parameter per tuned layer: its option's label (:func:`option_labels`, e.g.
    ``"dense"``, ``"low_rank=64"``, ``"quantize"``, ``"low_rank=64+quantize"``) among all of that
    layer's options, fixed for the study, so parameter importances and slices compare layers. User
    attributes: ``plan`` (its number in ``results.plans``), ``phase``, ``role``, ``accuracy``,
    ``speed``, ``bytes``, ``dense_bytes``, ``feasible``, ``predicted_error``, ``duration_s``.

The value, and why an infeasible plan is never the study's best
    The tuner's objective, as the search path tells it (:mod:`panther.tuner._trials`): with a speed
    function the measured speed, otherwise the fraction of the tuned layers' dense bytes the plan
    saves. A plan below the threshold gets ``INFEASIBLE_SCORE + (accuracy - threshold)``: below
    every feasible value on any Optuna version (no reliance on constrained ``best_trial``), yet
    ordered by accuracy. A plan that is not a candidate (a sensitivity probe, which replaces one
    role only and is never installed, or a plan replacing nothing) is ``PRUNED`` with its accuracy
    as the intermediate value at step 0; a plan whose evaluation raised or gave NaN is ``FAIL``.
    So ``study.best_params`` / ``best_value`` are the chosen plan whenever the choice is the best
    objective: always by size; by speed, the tuner prefers the most accurate plan within
    ``SPEED_TIE`` of the fastest (timing noise), which may be a plan just below the study's best.
    The chosen plan's number is the study's user attribute ``chosen_plan`` in every case.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from panther.tuner._trials import INFEASIBLE_SCORE, params_key
from panther.tuner.params import Categorical
from panther.tuner.search.optuna_search import OptunaSearch

#: The search's group (study suffix) holding the allocation's plans.
ALLOCATION_GROUP = "allocation"
#: The label of a layer left dense.
DENSE = "dense"
_ATTRS = ("plan", "phase", "role", "accuracy", "speed", "bytes", "dense_bytes", "feasible", "predicted_error",
          "duration_s")


def option_labels(options: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short distinct labels of one layer's options (canonical params of its kind), in order.

    Generic over kinds: a parameter with one value in every option that has it is left out; a
    ``True`` flag is its name, ``False`` / ``None`` (off, absent) are left out; the rest is
    ``name=value``, joined by ``+``. When two options would read the same, every label is the
    option's whole ``name=value`` list instead.
    """
    seen: dict[str, set] = {}
    for params in options:
        for name, value in params.items():
            seen.setdefault(name, set()).add(repr(value))

    def short(params: Mapping[str, Any]) -> str:
        parts = []
        for name, value in params.items():
            if value is None or value is False or (len(seen[name]) == 1 and value is not True):
                continue
            parts.append(name if value is True else f"{name}={value}")
        return "+".join(parts)

    labels = [short(p) for p in options]
    if len(set(labels)) < len(labels) or "" in labels or DENSE in labels:
        labels = [",".join(f"{k}={v}" for k, v in p.items()) or "default" for p in options]
    return labels


class PlanTrials:
    """Records the allocation's evaluated plans in ``search``'s study (see the module docstring).

    Args:
        search: the tuner's ``OptunaSearch`` (default or given).
        threshold: the whole model's accuracy threshold.
        by_speed: whether the objective is the speed function (else bytes saved).
    """

    def __init__(self, search: OptunaSearch, threshold: float, by_speed: bool) -> None:
        self.search, self.threshold, self.by_speed = search, threshold, by_speed
        self._labels: dict[str, dict[tuple, str]] = {}  # layer -> params key -> label
        self._groups: dict[str, list[str]] = {}  # group -> its layers
        self._distributions: dict[str, CategoricalDistribution] = {}
        self._dense_total = 0

    def open(self, options: Mapping[str, Sequence[Mapping[str, Any]]], groups: Mapping[str, Sequence[str]],
             dense_total: int) -> None:
        """Start the study: ``options`` per group (canonical params), ``groups`` their layers,
        ``dense_total`` the dense bytes of every allocated layer."""
        self._groups = {g: list(layers) for g, layers in groups.items()}
        self._dense_total = dense_total
        space = {}
        for group, layers in self._groups.items():
            labels = dict(zip((params_key(p) for p in options[group]), option_labels(options[group]), strict=True))
            for layer in layers:
                self._labels[layer] = labels
                space[layer] = Categorical([DENSE, *labels.values()])
        if not space:
            return  # every group stays dense: no plan will be evaluated
        self.search.start_group(ALLOCATION_GROUP, space)
        self._distributions = {layer: spec.to_optuna() for layer, spec in space.items()}  # type: ignore[misc]

    def params(self, choices: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Every layer's label in the plan ``{group: params}`` (groups not chosen are dense)."""
        labels = {layer: DENSE for layers in self._groups.values() for layer in layers}
        for group, params in choices.items():
            for layer in self._groups[group]:
                labels[layer] = self._labels[layer][params_key(params)]
        return labels

    def value(self, entry: Mapping[str, Any]) -> tuple[TrialState, float | None]:
        """The trial's state and value for a ``results.plans`` entry (see the module docstring)."""
        accuracy, speed = entry["accuracy"], entry["speed"]
        if not math.isfinite(accuracy) or (speed is not None and not math.isfinite(speed)):
            return TrialState.FAIL, None
        if entry["phase"] == "sensitivity" or not entry["choices"]:
            return TrialState.PRUNED, None
        if not entry["feasible"]:
            return TrialState.COMPLETE, INFEASIBLE_SCORE + (accuracy - self.threshold)
        if self.by_speed:
            return TrialState.COMPLETE, float(speed)
        saved = entry["dense_bytes"] - entry["bytes"]
        return TrialState.COMPLETE, saved / self._dense_total if self._dense_total else 0.0

    def record(self, entry: Mapping[str, Any]) -> None:
        """Add the evaluated plan ``entry`` (a ``results.plans`` entry) as a finished trial."""
        if not self._distributions:
            return
        state, value = self.value(entry)
        accuracy = entry["accuracy"]
        steps = {0: accuracy} if state == TrialState.PRUNED else None
        attrs = {name: _plain(entry.get(name)) for name in _ATTRS}
        study = self.search.study
        study.add_trial(create_trial(state=state, value=value, params=self.params(entry["choices"]),  # type: ignore[union-attr]
                                     distributions=self._distributions, user_attrs=attrs,
                                     intermediate_values=steps))

    def chose(self, entry: Mapping[str, Any] | None) -> None:
        """Name the chosen plan on the study (``None``: none met the threshold)."""
        if not self._distributions:
            return
        self.search.study.set_user_attr("chosen_plan", None if entry is None else entry["plan"])  # type: ignore[union-attr]


def _plain(value: Any) -> Any:
    """JSON-safe (RDB storages keep user attributes as JSON): NaN becomes ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
