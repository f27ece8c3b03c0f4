"""The frontier of an allocating tune: the feasible Pareto set, installing any plan of it, the figure."""

from __future__ import annotations

import math

import pytest
from test_tuner_allocation import SENSITIVITY, FourLayers, KnownAccuracy, allocating_tuner

from panther.nn import SKLinear
from panther.tuner import layer_bytes
from panther.tuner.frontier import pareto_plans
from panther.tuner.results import PlanRecord


def entry(number, accuracy, speed=None, saved=10, feasible=True, choices=True, phase="bisect"):
    return PlanRecord(number=number, phase=phase, choices={"g": {"low_rank": number}} if choices else {},
                      accuracy=accuracy, speed=speed, feasible=feasible, bytes=100 - saved, dense_bytes=100)


def test_pareto_set_of_known_points_by_size():
    plans = [entry(1, 0.90, saved=60), entry(2, 0.95, saved=40), entry(3, 0.94, saved=30),  # 3: beaten by 2
             entry(4, 0.99, saved=10), entry(5, 0.80, saved=90, feasible=False),  # 5: infeasible
             entry(6, 0.999, saved=0, choices=False), entry(7, 0.95, saved=40),  # 6: replaces nothing; 7: same as 2
             entry(8, math.nan, saved=95)]
    assert [p.number for p in pareto_plans(plans)] == [4, 2, 1]


def test_pareto_set_of_known_points_by_speed():
    plans = [entry(1, 0.90, speed=3.0), entry(2, 0.95, speed=2.0), entry(3, 0.96, speed=2.0),  # 2 beaten by 3
             entry(4, 0.99, speed=1.0), entry(5, 0.999, speed=None, phase="sensitivity"),  # 5: speed never measured
             entry(6, 0.97, speed=0.5)]  # 6: beaten by 4
    assert [p.number for p in pareto_plans(plans)] == [4, 3, 1]
    assert [p.number for p in pareto_plans(plans, by_speed=False)] == [5]  # all save 10 bytes: the most accurate


@pytest.fixture(scope="module")
def tuned():
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = allocating_tuner(model, accuracy, 0.97)
    tuner.tune()
    return model, accuracy, tuner


def test_any_frontier_plan_installs_with_its_measured_accuracy_and_bytes(tuned):
    model, accuracy, tuner = tuned
    frontier = tuner.results.frontier()
    assert frontier and tuner.results.chosen_plan in [p.number for p in frontier]  # by size the choice is on it
    for plan in frontier:
        tuner.apply_plan(plan)
        installed = {n: getattr(model, n) for n in SENSITIVITY}
        assert {n for n, m in installed.items() if isinstance(m, SKLinear)} == set(plan.choices)
        assert accuracy.of_modules(installed) == pytest.approx(plan.accuracy, rel=1e-6)
        assert accuracy.of_modules(installed) >= 0.97
        saved = sum(layer_bytes(accuracy.dense[n]) - layer_bytes(installed[n]) for n in SENSITIVITY)
        assert saved == plan.dense_bytes - plan.bytes
    tuner.apply_plan(tuner.results.chosen_plan)  # by number
    assert {n: getattr(model, n).low_rank for n in tuner.get_best_params()} == {
        n: p["low_rank"] for n, p in tuner.get_best_params().items()}


def test_an_unknown_plan_is_refused_before_the_model_is_touched(tuned):
    model, _, tuner = tuned
    before = {n: getattr(model, n) for n in SENSITIVITY}
    with pytest.raises(ValueError, match="no evaluated plan 999"):
        tuner.apply_plan(999)
    assert {n: getattr(model, n) for n in SENSITIVITY} == before


def test_the_figure_marks_the_chosen_plan(tuned):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    _, _, tuner = tuned
    ax = tuner.plot_frontier()
    chosen = next(p for p in tuner.results.plans if p.number == tuner.results.chosen_plan)
    star = next(c for c in ax.collections if c.get_label().startswith("chosen"))
    assert star.get_offsets().tolist() == [[chosen.dense_bytes - chosen.bytes, chosen.accuracy]]
    (line,) = [line for line in ax.get_lines() if line.get_label() == "Pareto frontier"]
    assert len(line.get_xdata()) == len(tuner.results.frontier())
