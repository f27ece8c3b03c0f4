"""Smoke run of bench/tune_quality.py's building blocks on the digits MLP (tiny budgets, ~10 s)."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

from compression import layer_ratio, rank_for_ratio, sketched_copy  # noqa: E402

from panther.nn import SKLinear  # noqa: E402
from panther.plans import apply_plan  # noqa: E402


def _load_bench():
    spec = importlib.util.spec_from_file_location("tune_quality", ROOT / "bench" / "tune_quality.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tune_quality"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


tune_quality = _load_bench()


@pytest.fixture(scope="module")
def work():
    torch.set_num_threads(1)
    return tune_quality.digits_workload(seed=0, epochs=15)


def _expected_weights(layer: nn.Linear, num_terms: int, low_rank: int) -> int:
    """SKLinear stores S1, S2, U1, U2 (each ``T·k·d``) and a bias."""
    return 2 * num_terms * low_rank * (layer.in_features + layer.out_features) + layer.out_features


def test_original_procedure_spends_an_even_split_and_uses_sketch_init(work):
    budget = 7  # 3 layers -> 2 evaluations each
    result = tune_quality.original_procedure(work, budget, seed=0)
    assert result.evaluations == (budget // len(work.layers)) * len(work.layers)
    assert all(entry["params"]["init"] == "sketch" for entry in result.plan.values())
    assert set(result.plan) <= set(work.layers)


def test_autotuner_procedure_stays_within_budget_and_meets_threshold_composed(work):
    result = tune_quality.autotuner_procedure(work, budget=12, seed=0)
    assert 1 <= result.evaluations <= 12
    assert result.plan, "with svd init the digits MLP compresses at a one-point accuracy drop"
    composed = apply_plan(copy.deepcopy(work.model), result.plan)
    assert work.tune_metric(composed) >= work.threshold  # the tuner re-checked the composition


def test_outcome_reports_the_weight_ratio_of_the_plan(work):
    plan = {"0": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 4, "init": "svd"}}}
    search = tune_quality.SearchResult(plan, evaluations=3, wall_s=0.0)
    row = tune_quality.outcome(work, "fixed", search, threads=1)
    layers = {name: work.model.get_submodule(name) for name in work.layers}
    dense = sum(layer.weight.numel() + layer.bias.numel() for layer in layers.values())
    sketched = _expected_weights(layers["0"], 1, 4) + sum(
        layer.weight.numel() + layer.bias.numel() for name, layer in layers.items() if name != "0")
    assert row.layer_ratio == pytest.approx(sketched / dense)
    assert row.evaluations == 3 and row.threshold_met == (row.final_metric >= work.threshold)
    assert "| fixed |" in tune_quality.markdown([row])


def test_counting_metric_counts_every_call():
    metric = tune_quality.CountingMetric(lambda model: 0.5)
    for _ in range(3):
        assert metric(nn.Identity()) == 0.5
    assert metric.calls == 3


def test_sketched_copy_leaves_the_original_and_rejects_odd_ranks():
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4))
    copy_ = sketched_copy(model, {"0": 6}, "svd")  # rank 6 = min(8, 6): exact
    assert isinstance(copy_[0], SKLinear) and isinstance(model[0], nn.Linear)
    x = torch.randn(5, 8)
    torch.testing.assert_close(copy_(x), model(x), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="even ranks"):
        sketched_copy(model, {"0": 3}, "svd")


def test_rank_for_ratio_and_layer_ratio_agree():
    layer = nn.Linear(384, 1536)
    rank = rank_for_ratio(layer, 0.31)
    assert rank % 2 == 0
    model = nn.Sequential(layer)
    ratio = layer_ratio(model, sketched_copy(model, {"0": rank}, "svd"), ["0"])
    assert ratio == pytest.approx(0.31, abs=0.01)


def test_stored_bytes_counts_the_packed_int8_weights_of_torch_ao():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8))
    quantized = tune_quality.torch_ao_int8(copy.deepcopy(model), ["0"], per_channel=False)
    # layer 0: int8 weight + one (scale, zero point) + fp32 bias; layer 2 unchanged
    assert tune_quality.stored_bytes(quantized[0]) == 64 * 32 + 8 + 32 * 4
    assert tune_quality.stored_bytes(quantized) == 64 * 32 + 8 + 32 * 4 + (32 * 8 + 8) * 4
    per_channel = tune_quality.torch_ao_int8(copy.deepcopy(model), ["0"], per_channel=True)
    assert tune_quality.stored_bytes(per_channel[0]) == 64 * 32 + 8 * 32 + 32 * 4


def test_accuracy_aware_int8_puts_layers_back_until_the_bound_holds(work):
    easy = tune_quality.accuracy_aware_int8(work, bound=0.0)
    assert easy.evaluations == 1  # everything int8 already holds it
    impossible = tune_quality.accuracy_aware_int8(work, bound=2.0)
    # one all-int8 check, one recovery measurement per layer, then one check per layer put back
    assert impossible.evaluations == 1 + 2 * len(work.layers) - 1
    restored = impossible.build(copy.deepcopy(work.model))
    assert all(type(restored.get_submodule(n)) is nn.Linear for n in work.layers)


def test_allocating_tuner_meets_its_bound_within_the_budget(work):
    bound = work.threshold + 0.005
    result = tune_quality.allocating_tuner(work, bound, budget=12)
    assert 1 <= result.evaluations <= 12
    tuned = result.build(copy.deepcopy(work.model))
    assert work.tune_metric(tuned) >= bound
    assert all(type(work.model.get_submodule(n)) is nn.Linear for n in work.layers)  # the workload stays dense
    profile, evaluations, rest = result.split
    assert profile > 0 and evaluations > 0 and rest >= 0
    assert profile + evaluations + rest == pytest.approx(result.wall_s)


def test_the_spec_call_allocates_within_its_n_trials(work):
    bound = work.threshold + 0.005
    result = tune_quality.allocating_tuner(work, bound, budget=12, spec_call=True)
    search = result.tuner.search_algorithm
    assert result.tuner.allocates and type(search) is tune_quality.OptunaSearch and search.n_trials == 12
    assert 1 <= result.evaluations <= 12 + 1  # n_trials plans plus the dense baseline
    assert work.tune_metric(result.build(copy.deepcopy(work.model))) >= bound
    assert len(search.study.trials) == result.evaluations - 1  # every plan is a trial of its study


def test_cost_split_separates_the_users_calls_from_the_tuners_work():
    metric, speed = tune_quality.CountingMetric(lambda m: 1.0), tune_quality.CountingMetric(lambda m: 2.0)
    metric.spans = [(0.0, 1.0), (5.0, 6.0), (8.0, 9.0)]  # baseline, then two plans
    speed.spans = [(6.0, 7.0)]
    # profile: 1 -> 5; evaluations: 3 + 1; rest: 12 - 4 - 4
    assert tune_quality.cost_split(12.0, metric, speed) == (4.0, 4.0, 4.0)


def test_free_layers_cost_nothing_and_keep_shapes(work):
    free = tune_quality.free_layers(work).build(copy.deepcopy(work.model))
    x = torch.randn(5, 64)
    assert free(x).shape == work.model(x).shape and not free(x).any()
