"""Points of the allocation path from per-layer options: least cost for a summed predicted error.

Each layer offers options (dense at zero error and full cost, cheaper replacements with
predicted errors). Choosing one per layer to minimise total cost under a budget on the summed
error is a multiple-choice knapsack; :class:`AllocationPath` solves its Lagrangian relaxation
``min Σ cost + λ·Σ error`` for every ``λ`` at once. Per layer only the lower convex hull of its
(error, cost) points can win; its edges are *steps* that buy an error reduction at a marginal cost
per unit of error (the edge's slope). Sorting all layers' steps by that rate gives one path from the
cheapest point to the most accurate one; every prefix of it is Lagrangian-optimal, hence the exact
least-cost choice for its own total error (Everett), and for any other budget the first prefix that
fits costs at most one step more than the optimum.

Measured costs (times) carry noise: with a ``tie`` band, options of one layer whose costs are within
it of each other are taken as equally priced, and the one with the lower error wins (equal errors:
the one earlier in the layer's sequence, the caller's order of preference), whichever was timed
faster; the others are not on the layer's hull. So noise cannot flip a layer between such options.

Along the path error only falls and cost only rises, so a caller can bisect the position (or
``λ``, or the budget) with a few full evaluations of the model, correcting the prediction instead of
probing each layer. Errors are added as given: the caller chooses what to sum (relative output
errors, their squares, measured losses).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One way to build a layer: ``params`` for its kind (``None``: stay dense), predicted ``error``, ``cost``."""

    params: Mapping[str, Any] | None
    error: float
    cost: float


@dataclass(frozen=True)
class PathPoint:
    """One position on the path: one option per layer, with the sums the path traded off."""

    choices: dict[str, Option]
    error: float
    cost: float


@dataclass(frozen=True)
class _Step:
    rate: float  # cost added per unit of error removed
    layer: str
    index: int  # position on the layer's hull after the step


def _untied(options: Sequence[Option], tie: float) -> list[Option]:
    """``options`` less those a preferred one beats: one at most as wrong (equal: earlier in the
    sequence) that costs at most ``1 + tie`` times as much. ``tie=0``: the Pareto filter."""
    kept: list[Option] = []
    for option in sorted(options, key=lambda o: o.error):  # stable: equal errors keep the caller's order
        if all(k.cost > option.cost * (1.0 + tie) for k in kept):
            kept.append(option)
    return kept


def _hull(options: Sequence[Option], tie: float = 0.0) -> list[Option]:
    """The options a Lagrangian can pick, from cheapest (most error) to most accurate (most cost).

    Options tied in cost lose to the preferred one (:func:`_untied`), then the Pareto filter (no
    other option is at most as costly and as wrong), then the lower convex hull in the (error, cost)
    plane. Points on a hull edge are kept, so the path can stop between them.
    """
    if not options:
        raise ValueError("every layer needs at least one option")
    frontier: list[Option] = []
    for option in sorted(_untied(options, tie), key=lambda o: (o.cost, o.error)):
        if not frontier or option.error < frontier[-1].error:
            frontier.append(option)
    hull: list[Option] = []
    for option in frontier:
        while len(hull) >= 2 and _above_chord(hull[-2], hull[-1], option):
            hull.pop()
        hull.append(option)
    return hull


def _above_chord(a: Option, b: Option, c: Option) -> bool:
    """Whether ``b`` lies strictly above the segment from ``a`` to ``c`` (errors fall a → b → c)."""
    return (b.cost - a.cost) * (a.error - c.error) > (c.cost - a.cost) * (a.error - b.error)


class AllocationPath:
    """All Lagrangian-optimal points for ``layers`` (name → options), ordered by rising cost.

    ``point(0)`` takes every layer's cheapest option; ``point(len(self) - 1)`` the most accurate.
    ``tie``: the relative cost difference within which a layer's options count as equally priced
    (see the module docstring); each layer's options are listed in the caller's order of preference.
    Building costs one sort of all hull edges; each point is then a lookup.
    """

    def __init__(self, layers: Mapping[str, Sequence[Option]], tie: float = 0.0) -> None:
        if tie < 0:
            raise ValueError(f"tie must be >= 0, got {tie}")
        self._hulls = {name: _hull(options, tie) for name, options in layers.items()}
        steps: list[_Step] = []
        for name, hull in self._hulls.items():
            rate = 0.0
            for index, (a, b) in enumerate(zip(hull, hull[1:], strict=False)):
                # Slopes rise along a convex hull; the running max only absorbs rounding on
                # near-collinear points, so that the stable sort keeps each layer's steps in order.
                rate = max(rate, (b.cost - a.cost) / (a.error - b.error))
                steps.append(_Step(rate, name, index + 1))
        self._steps = sorted(steps, key=lambda step: step.rate)
        self._rates = [step.rate for step in self._steps]
        self._errors = [self.point(position).error for position in range(len(self))]

    def __len__(self) -> int:
        """Number of distinct points on the path (steps + 1)."""
        return len(self._steps) + 1

    def point(self, position: int) -> PathPoint:
        """The point after the ``position`` cheapest steps (``0 ≤ position < len(self)``)."""
        if not 0 <= position < len(self):
            raise IndexError(f"position must be in [0, {len(self) - 1}], got {position}")
        at = {name: 0 for name in self._hulls}
        for step in self._steps[:position]:
            at[step.layer] = step.index
        choices = {name: self._hulls[name][index] for name, index in at.items()}
        return PathPoint(choices, sum(o.error for o in choices.values()), sum(o.cost for o in choices.values()))

    def position_for_tradeoff(self, lam: float) -> int:
        """Position of the point minimising ``cost + lam·error`` (ties: the more accurate point).

        Non-decreasing in ``lam``: the knob to bisect when ``lam`` is the price of one unit of error.
        """
        if lam < 0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        return bisect.bisect_right(self._rates, lam)

    def position_for_budget(self, budget: float) -> int:
        """Position of the cheapest point on the path whose summed error is at most ``budget``.

        Non-increasing in ``budget``, so the point's cost is too. Raises ``ValueError`` when even the
        most accurate point exceeds the budget.
        """
        if self._errors[-1] > budget:
            raise ValueError(f"no point has summed error <= {budget}; the least is {self._errors[-1]}")
        # _errors never rises along the path: search its negation, which never falls.
        return bisect.bisect_left([-e for e in self._errors], -budget)
