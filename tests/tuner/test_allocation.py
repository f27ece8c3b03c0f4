"""Allocation groundwork: predicted rank errors against built layers, path points against brute force."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
from torch import nn

from panther.kinds import kind_of
from panther.nn import SKLinear, factorize
from panther.nn.calibration import collect_input_covariances
from panther.nn.rank_curves import rank_error_curve, sketch_rank
from panther.tuner._allocation import AllocationPath, Option


def relative_output_error(sketch: nn.Module, dense: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        reference = dense(x)
        return float((sketch(x) - reference).norm() / reference.norm())


def dense_layer(in_features: int = 40, out_features: int = 24, seed: int = 0) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=False, dtype=torch.float64)


def isotropic_inputs(rows: int, dim: int, seed: int = 1) -> torch.Tensor:
    """Rows whose second moment is exactly a multiple of the identity (orthogonal columns)."""
    generator = torch.Generator().manual_seed(seed)
    return 2.5 * torch.linalg.qr(torch.randn(rows, dim, generator=generator, dtype=torch.float64)).Q


def correlated_inputs(rows: int, dim: int, seed: int = 2) -> torch.Tensor:
    """Inputs concentrated on a few directions, so the whitened spectrum differs from the plain one.

    Their covariance stays well conditioned (eigenvalues spanning 1e-4), far above the whitening's
    1e-6 ridge, so the prediction and the built layer see the same metric.
    """
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(0, -2, dim, dtype=torch.float64)
    mixing = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64)).Q
    return (torch.randn(rows, dim, generator=generator, dtype=torch.float64) * scales) @ mixing


# -- error curves ------------------------------------------------------------------------------

@pytest.mark.parametrize(("num_terms", "low_rank"), [(1, 1), (1, 3), (1, 7), (2, 2), (1, 12), (3, 4)])
def test_svd_prediction_equals_measured_error_on_isotropic_inputs(num_terms: int, low_rank: int) -> None:
    layer = dense_layer()
    x = isotropic_inputs(500, 40)
    curve = rank_error_curve(layer.weight)
    sketch = SKLinear.from_dense(layer, num_terms=num_terms, low_rank=low_rank, init="svd")
    predicted = curve[min(sketch_rank(num_terms, low_rank), curve.numel() - 1)]
    assert relative_output_error(sketch, layer, x) == pytest.approx(float(predicted), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("low_rank", [1, 2, 5, 9])
def test_data_svd_prediction_equals_measured_error_on_the_calibration_inputs(low_rank: int) -> None:
    layer = dense_layer()
    x = correlated_inputs(2000, 40)
    cov = collect_input_covariances(nn.Sequential(layer), ["0"], x.split(250))["0"]
    curve = rank_error_curve(layer.weight, cov)
    sketch = SKLinear.from_dense(layer, num_terms=1, low_rank=low_rank, init="data_svd", input_cov=cov)
    measured = relative_output_error(sketch, layer, x)
    assert measured == pytest.approx(float(curve[2 * low_rank]), rel=1e-9)
    # The plain spectrum would mispredict these inputs: the whitening is what makes the match.
    assert not math.isclose(float(rank_error_curve(layer.weight)[2 * low_rank]), measured, rel_tol=0.05)


def test_curve_ends_and_shape() -> None:
    layer = dense_layer(12, 30)
    curve = rank_error_curve(layer.weight)
    assert curve.shape == (13,) and curve.dtype == torch.float64
    assert float(curve[0]) == pytest.approx(1.0) and float(curve[-1]) == 0.0
    assert bool((curve[1:] <= curve[:-1]).all())
    assert bool((rank_error_curve(torch.zeros(5, 7)) == 0).all())


def test_float32_layer_prediction_matches_its_sketch() -> None:
    torch.manual_seed(3)
    layer = nn.Linear(48, 32)
    x = isotropic_inputs(400, 48).float()
    sketch = SKLinear.from_dense(layer, num_terms=1, low_rank=6, init="svd")
    with torch.no_grad():  # the bias is copied unchanged: compare the bias-free outputs
        measured = float((sketch(x) - layer(x)).norm() / (x @ layer.weight.T).norm())
    assert measured == pytest.approx(float(rank_error_curve(layer.weight)[12]), rel=1e-4)


def test_one_decomposition_serves_the_curve_and_every_rank_built_after_it(monkeypatch: pytest.MonkeyPatch) -> None:
    layer = dense_layer(seed=11)  # fresh content: not in the decomposition cache yet
    calls = []
    factorise = factorize._factorize
    monkeypatch.setattr(factorize, "_factorize", lambda *a, **kw: calls.append(1) or factorise(*a, **kw))
    rank_error_curve(layer.weight)
    for low_rank in (1, 4, 7):  # every rank up to the break-even rank 40·24/64 = 15, what a tuner builds
        SKLinear.from_dense(layer, num_terms=1, low_rank=low_rank, init="svd")
    assert len(calls) == 1


def test_the_linear_kind_predicts_the_error_of_the_layers_it_builds() -> None:
    layer = dense_layer()
    x = correlated_inputs(1000, 40)
    cov = x.T @ x / x.shape[0]
    kind = kind_of(layer)
    for params in ({"num_terms": 1, "low_rank": 2, "init": "data_svd"}, {"num_terms": 2, "low_rank": 3,
                                                                        "init": "data_svd"}):
        built = kind.build(layer, {**params, "input_cov": cov})
        assert relative_output_error(built, layer, x) == pytest.approx(kind.predicted_error(layer, params, cov),
                                                                       rel=1e-9, abs=1e-12)
    plain = {"num_terms": 1, "low_rank": 30, "init": "svd"}  # rank 60 > min(40, 24): exact
    assert kind.predicted_error(layer, plain, cov) == 0.0
    # what it cannot know without running the layer: left to measurement
    assert kind.predicted_error(layer, {"low_rank": 4, "init": "sketch"}, None) is None
    assert kind.predicted_error(layer, {"low_rank": 4, "init": "svd", "quantize": True}, None) is None
    assert kind.predicted_error(layer, {"low_rank": None, "quantize": True}, None) is None
    assert kind.predicted_error(layer, {"low_rank": 4, "init": "data_svd"}, None) is None


# -- path --------------------------------------------------------------------------------------

def random_instance(rng: random.Random, layers: int, options: int) -> dict[str, list[Option]]:
    instance = {}
    for index in range(layers):
        full = rng.uniform(50, 150)
        choices = [Option(None, 0.0, full)]
        choices += [Option({"k": j}, rng.uniform(0.0, 1.0), rng.uniform(0.0, full * 1.1)) for j in range(options - 1)]
        instance[f"layer{index}"] = choices
    return instance


def brute_force_cost(instance: dict[str, list[Option]], budget: float) -> float:
    """Least total cost over every combination whose summed error is within ``budget``."""
    best = math.inf
    for combo in itertools.product(*instance.values()):
        if sum(o.error for o in combo) <= budget + 1e-12:
            best = min(best, sum(o.cost for o in combo))
    return best


INSTANCES = [random_instance(random.Random(seed), layers=rng_layers, options=4)
             for seed, rng_layers in enumerate([1, 2, 3, 4, 4, 4, 3, 4])]


@pytest.mark.parametrize("instance", INSTANCES)
def test_every_point_on_the_path_is_the_exact_optimum_for_its_error(instance: dict[str, list[Option]]) -> None:
    path = AllocationPath(instance)
    for position in range(len(path)):
        point = path.point(position)
        assert point.cost == pytest.approx(brute_force_cost(instance, point.error), rel=1e-12)


@pytest.mark.parametrize("instance", INSTANCES)
def test_budget_point_is_feasible_and_within_one_step_of_the_optimum(instance: dict[str, list[Option]]) -> None:
    path = AllocationPath(instance)
    rng = random.Random(7)
    for budget in [0.0] + [rng.uniform(0, 2.5) for _ in range(30)]:
        position = path.position_for_budget(budget)
        point, optimum = path.point(position), brute_force_cost(instance, budget)
        assert point.error <= budget
        assert point.cost >= optimum - 1e-9
        if position > 0:  # the point just before it was over budget, and is a lower bound (LP relaxation)
            assert path.point(position - 1).error > budget
            assert path.point(position - 1).cost <= optimum + 1e-9


@pytest.mark.parametrize("instance", INSTANCES)
def test_points_are_monotone_in_the_knobs(instance: dict[str, list[Option]]) -> None:
    path = AllocationPath(instance)
    points = [path.point(p) for p in range(len(path))]
    assert all(a.error >= b.error and a.cost <= b.cost for a, b in itertools.pairwise(points))
    budgets = sorted(random.Random(1).uniform(0, 3) for _ in range(50))
    costs = [path.point(path.position_for_budget(b)).cost for b in budgets]
    assert all(a >= b for a, b in itertools.pairwise(costs))
    lams = sorted(random.Random(2).uniform(0, 2000) for _ in range(50))
    positions = [path.position_for_tradeoff(lam) for lam in lams]
    assert positions == sorted(positions)


@pytest.mark.parametrize("instance", INSTANCES)
def test_tradeoff_point_minimises_the_lagrangian(instance: dict[str, list[Option]]) -> None:
    path = AllocationPath(instance)
    for lam in [0.0, 1.0, 30.0, 100.0, 400.0, 1e6]:
        point = path.point(path.position_for_tradeoff(lam))
        best = sum(min(o.cost + lam * o.error for o in options) for options in instance.values())
        assert point.cost + lam * point.error == pytest.approx(best, rel=1e-12)


def test_hand_checked_two_layer_case() -> None:
    # a: dense 100; "half" saves 60 for 0.2 error (300 per unit), "quarter" 10 more for 0.3 more (33.3 per
    #    unit), "waste" is dominated (dearer and worse than "half").
    # b: dense 100; "small" saves 90 for 0.1 error (900 per unit).
    half, quarter, waste = Option({"r": 8}, 0.2, 40.0), Option({"r": 2}, 0.5, 30.0), Option({"r": 1}, 0.6, 45.0)
    small = Option({"r": 4}, 0.1, 10.0)
    dense_a, dense_b = Option(None, 0.0, 100.0), Option(None, 0.0, 100.0)
    path = AllocationPath({"a": [dense_a, half, quarter, waste], "b": [dense_b, small]})
    assert len(path) == 4
    expected = [({"a": quarter, "b": small}, 0.6, 40.0),  # cheapest
                ({"a": half, "b": small}, 0.3, 50.0),  # a: quarter → half, 10 for 0.3 error
                ({"a": dense_a, "b": small}, 0.1, 110.0),  # a: half → dense, 60 for 0.2
                ({"a": dense_a, "b": dense_b}, 0.0, 200.0)]  # b: small → dense, 90 for 0.1
    for position, (choices, error, cost) in enumerate(expected):
        point = path.point(position)
        assert point.choices == choices
        assert (point.error, point.cost) == (pytest.approx(error), pytest.approx(cost))
    assert path.position_for_budget(0.35) == 1
    assert path.position_for_budget(0.05) == 3
    assert path.position_for_tradeoff(100.0) == 1 and path.position_for_tradeoff(300.0) == 2
    with pytest.raises(ValueError, match="no point"):
        AllocationPath({"a": [half]}).position_for_budget(0.1)
    with pytest.raises(IndexError):
        path.point(4)


# -- options tied in cost (timing noise) ----------------------------------------------------------

def tied_layer(int8_cost: float, smooth_cost: float) -> list[Option]:
    """Dense, and two options of about the same cost: "int8" (more error), "smooth" (less)."""
    return [Option(None, 0.0, 100.0), Option({"m": "int8"}, 0.04, int8_cost),
            Option({"m": "smooth"}, 0.01, smooth_cost)]


def chosen_methods(path: AllocationPath) -> list[dict]:
    """Every point's choices as params (``None``: dense), independent of the costs' exact values."""
    return [{name: option.params for name, option in path.point(p).choices.items()} for p in range(len(path))]


@pytest.mark.parametrize("faster", ["int8", "smooth"])
def test_options_timed_within_the_tie_give_the_more_accurate_one_whichever_was_faster(faster: str) -> None:
    costs = (50.0, 51.0) if faster == "int8" else (51.0, 50.0)  # 2 % apart: within a 3 % tie
    other = [Option(None, 0.0, 80.0), Option({"r": 4}, 0.02, 30.0)]
    path = AllocationPath({"a": tied_layer(*costs), "b": other}, tie=0.03)
    smooth, dense = {"m": "smooth"}, None
    assert chosen_methods(path) == [{"a": smooth, "b": {"r": 4}}, {"a": smooth, "b": dense},
                                    {"a": dense, "b": dense}]
    # without the tie the faster one is on the path too: which one a point takes depends on the timing
    untied = chosen_methods(AllocationPath({"a": tied_layer(*costs), "b": other}))
    assert any(p["a"] == {"m": "int8"} for p in untied) == (faster == "int8")


def test_a_tie_of_equal_errors_goes_to_the_option_listed_first() -> None:
    first, second = Option({"m": "first"}, 0.01, 50.0), Option({"m": "second"}, 0.01, 49.0)
    for options in ([first, second], [second, first]):
        assert AllocationPath({"a": options}, tie=0.03).point(0).choices["a"] is options[0]
    assert AllocationPath({"a": [first, second]}).point(0).choices["a"] is second  # no tie: the cheaper


def test_outside_the_tie_the_faster_option_still_wins() -> None:
    path = AllocationPath({"a": tied_layer(40.0, 50.0)}, tie=0.03)  # int8 20 % faster: not noise
    assert chosen_methods(path) == [{"a": {"m": "int8"}}, {"a": {"m": "smooth"}}, {"a": None}]
    assert path.point(path.position_for_budget(0.05)).choices["a"].params == {"m": "int8"}  # both errors fit
    assert path.point(path.position_for_budget(0.02)).choices["a"].params == {"m": "smooth"}
    # an option dearer than a more accurate one is dropped, tie or not
    assert chosen_methods(AllocationPath({"a": tied_layer(50.0, 40.0)}, tie=0.03)) == [{"a": {"m": "smooth"}},
                                                                                      {"a": None}]
    with pytest.raises(ValueError, match="tie"):
        AllocationPath({"a": tied_layer(40.0, 50.0)}, tie=-0.1)
