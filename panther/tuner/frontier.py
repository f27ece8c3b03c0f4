"""The trade-offs an allocating tune found: every evaluated plan, the feasible Pareto set, one figure.

The tuner installs one plan, but every plan it evaluated is a measured whole-model trade-off
(``results.plans``). :func:`pareto_plans` keeps the feasible ones that no other feasible plan beats
on both accuracy and gain (measured speed with a speed function, else bytes saved), so a user can
pick a more accurate or a cheaper plan after tuning, without tuning again
(:meth:`SKAutoTuner.apply_plan <panther.tuner.SKAutoTuner.apply_plan>`). :func:`plot_frontier` draws
accuracy against the gain, the frontier joined and the chosen plan marked (matplotlib: the
``plots`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from panther.tuner.results import PlanRecord

__all__ = ["gain_of", "pareto_plans", "plot_frontier"]


def _by_speed(plans: Sequence[PlanRecord]) -> bool:
    return any(p.speed is not None for p in plans)


def _measured(plan: PlanRecord) -> bool:
    return plan.accuracy is not None and math.isfinite(plan.accuracy)


def gain_of(plan: PlanRecord, by_speed: bool) -> float | None:
    """What a plan buys: its measured speed (``by_speed``), else the bytes it saves; ``None`` if unmeasured."""
    if by_speed:
        return plan.speed
    return None if plan.bytes is None else float(plan.dense_bytes - plan.bytes)  # type: ignore[operator]


def pareto_plans(plans: Sequence[PlanRecord], by_speed: bool | None = None) -> list[PlanRecord]:
    """The feasible plans no other feasible plan matches or beats on both accuracy and gain, most accurate first.

    ``plans`` are ``results.plans`` records. ``by_speed`` (default: whether any plan has a speed)
    chooses the gain: measured speed, or bytes saved. Plans replacing nothing, and (by speed) plans
    without a measured speed (sensitivity probes), have no gain to compare and are left out. Of two
    plans with equal accuracy and gain the earlier is kept.
    """
    by_speed = _by_speed(plans) if by_speed is None else by_speed
    points = [(p, p.accuracy, gain_of(p, by_speed)) for p in plans if p.feasible and p.choices and _measured(p)]
    points = [(p, a, g) for p, a, g in points if g is not None and math.isfinite(g)]

    def beaten(i: int) -> bool:
        _, accuracy, gain = points[i]
        for j, (_, a, g) in enumerate(points):
            better = a > accuracy or g > gain
            if j != i and a >= accuracy and g >= gain and (better or j < i):
                return True
        return False

    front = [points[i] for i in range(len(points)) if not beaten(i)]
    return [p for p, _, _ in sorted(front, key=lambda point: (-point[1], point[2]))]


def plot_frontier(results: Any, ax: Any = None) -> Any:
    """Accuracy against gain of every evaluated plan, the frontier joined, the chosen plan marked.

    ``results`` is a :class:`~panther.tuner.results.TuningResults` of an allocating tune. Returns
    the matplotlib ``Axes`` (a new figure's when ``ax`` is ``None``).
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError("plot_frontier() needs matplotlib: pip install 'panther-sketch[plots]'") from err
    plans = results.plans
    if not plans:
        raise ValueError("no whole-model plan was evaluated (plot_frontier needs an allocating tune())")
    by_speed = _by_speed(plans)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    shown = [p for p in plans if _measured(p) and gain_of(p, by_speed) is not None]
    styles = {True: {"marker": "o", "color": "tab:blue"}, False: {"marker": "x", "color": "tab:gray"}}
    for feasible, style in styles.items():
        group = [p for p in shown if p.feasible == feasible]
        ax.scatter([gain_of(p, by_speed) for p in group], [p.accuracy for p in group], s=20,
                   label="feasible plans" if feasible else "below the threshold", **style)
    front = sorted(pareto_plans(plans, by_speed), key=lambda p: gain_of(p, by_speed))  # type: ignore[arg-type,return-value]
    ax.plot([gain_of(p, by_speed) for p in front], [p.accuracy for p in front], "-", color="tab:orange",
            label="Pareto frontier")
    chosen = next((p for p in plans if p.number == results.chosen_plan), None)
    if chosen is not None:
        ax.scatter([gain_of(chosen, by_speed)], [chosen.accuracy], marker="*", s=200, color="tab:red",
                   zorder=3, label=f"chosen (plan {chosen.number})")
    if results.baseline_accuracy is not None:
        ax.axhline(results.baseline_accuracy, linestyle=":", color="black", linewidth=1, label="dense model")
    ax.set_xlabel("speed (optmization_eval_func)" if by_speed else "bytes saved")
    ax.set_ylabel("accuracy")
    ax.legend(loc="best", fontsize="small")
    return ax
