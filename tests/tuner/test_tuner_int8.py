"""Int8 per-layer methods through SKAutoTuner: tuning ``quantize``, installing and re-planning it, backing off."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from panther.nn.linear import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.nn.rebuild import apply_plan
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

METHODS = {"num_terms": [1], "low_rank": [16, None], "init": ["svd"], "quantize": [False, True]}


def stored_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def inverse_bytes(model: nn.Module) -> float:
    """A deterministic stand-in for measured speed: fewer stored bytes, faster."""
    return 1.0 / stored_bytes(model)


def test_quantize_is_tuned_installed_and_re_planned(digits_model, accuracy_fn, dense_accuracy):
    dense = copy.deepcopy(digits_model)
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1", "fc2"], METHODS, separate=True)]),
                        accuracy_fn, OptunaSearch(n_trials=40, seed=0),
                        strategy="search", accuracy_threshold=dense_accuracy - 0.03,
                        optmization_eval_func=inverse_bytes)
    tuner.tune()
    tried = {(r.group, r.params["low_rank"], r.params["quantize"]): r for r in tuner.results.records}
    assert {k[1:] for k in tried} == {(16, False), (16, True), (None, False), (None, True)}
    assert all(r.status == "failed" and "low_rank=None" in r.error for k, r in tried.items() if k[1:] == (None, False))
    best = tuner.get_best_params()
    tuner.apply_best_params()
    expected = {(16, False): SKLinear, (16, True): Int8SKLinear, (None, True): Int8Linear}
    for name, params in best.items():
        assert type(digits_model.get_submodule(name)) is expected[params["low_rank"], params["quantize"]]
    assert any(p["quantize"] for p in best.values())  # int8 stores fewer bytes: it wins where accurate enough
    assert accuracy_fn(digits_model) >= dense_accuracy - 0.03 - 1e-9
    apply_plan(dense, tuner.best_plan())
    x = torch.rand(8, 64)
    with torch.no_grad():
        torch.testing.assert_close(dense.eval()(x), digits_model.eval()(x), rtol=0, atol=0)


def fake_accuracy(model: nn.Module) -> float:
    """1 minus 0.03 per int8 layer and 0.01 per fp32 sketch: each group alone passes 0.95, two int8 do not."""
    kinds = [type(m) for m in model.modules()]
    return 1.0 - 0.03 * (kinds.count(Int8Linear) + kinds.count(Int8SKLinear)) - 0.01 * kinds.count(SKLinear)


@pytest.mark.parametrize("space,fallback", [
    ({"num_terms": [1], "low_rank": [16], "init": ["svd"], "quantize": [False, True]}, SKLinear),
    ({"low_rank": [None], "quantize": [True]}, nn.Linear),
], ids=["sketch+int8 steps back to the fp32 sketch", "int8 reverts to the fp32 dense layer"])
def test_composed_check_backs_off_int8_to_fp32(digits_model, space, fallback):
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1", "fc2"], space, separate=True)]),
                        fake_accuracy, OptunaSearch(n_trials=10, seed=0), strategy="search", accuracy_threshold=0.95,
                        optmization_eval_func=inverse_bytes,
                        share_accuracy_drop=False)
    tuner.tune()
    tuner.apply_best_params()
    int8 = Int8SKLinear if fallback is SKLinear else Int8Linear
    assert {type(digits_model.fc1), type(digits_model.fc2)} == {int8, fallback}  # one group backed off
    assert tuner.results.composed_accuracy == pytest.approx(0.96 if fallback is SKLinear else 0.97)
    assert (tuner.reverted_layers != []) == (fallback is nn.Linear)
