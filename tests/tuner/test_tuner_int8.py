"""Int8 per-layer methods through SKAutoTuner: tuning ``method``, installing and re-planning it, backing off."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from panther.nn.linear import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.plans import apply_plan
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

METHODS = {"method": ["sketch", "sketch_int8", "int8"], "num_terms": [1], "low_rank": [16], "init": ["svd"]}


def stored_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def inverse_bytes(model: nn.Module) -> float:
    """A deterministic stand-in for measured speed: fewer stored bytes, faster."""
    return 1.0 / stored_bytes(model)


def test_method_is_tuned_installed_and_re_planned(digits_model, accuracy_fn, dense_accuracy):
    dense = copy.deepcopy(digits_model)
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1", "fc2"], METHODS, separate=True)]),
                        accuracy_fn, OptunaSearch(n_trials=40, seed=0),
                        strategy="search", accuracy_threshold=dense_accuracy - 0.03,
                        optmization_eval_func=inverse_bytes)
    tuner.tune()
    tried = {(r.group, r.params["method"]): r for r in tuner.results.records}
    assert {k[1] for k in tried} == {"sketch", "sketch_int8", "int8"}
    assert not [r for r in tried.values() if r.status == "failed"]  # every combination builds
    best = tuner.get_best_params()
    tuner.apply_best_params()
    expected = {"sketch": SKLinear, "sketch_int8": Int8SKLinear, "int8": Int8Linear}
    for name, params in best.items():
        assert type(digits_model.get_submodule(name)) is expected[params["method"]]
        assert tuner.best_plan()[name]["type"] == expected[params["method"]].__name__
    assert any(p["method"] != "sketch" for p in best.values())  # int8 stores fewer bytes: it wins where accurate
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


@pytest.mark.parametrize("space,values", [
    ({"num_terms": [1], "low_rank": [16, None], "init": ["svd"], "quantize": [False, True]},
     "low_rank=None, quantize=False"),
    ({"method": ["sketch", "int8"], "low_rank": [None]}, "method='sketch', low_rank=None"),
    ({"method": ["int8"], "quantize": [True]}, "method='int8' and quantize=True: cannot use both"),
], ids=["old form, full rank without int8", "sketch without a rank", "method and quantize"])
def test_a_space_holding_a_combination_that_builds_nothing_is_refused_before_the_model_is_touched(
        digits_model, space, values):
    before = [type(m) for m in digits_model.modules()]
    with pytest.raises(ValueError, match=f"configs\\[0\\]: 'fc1' \\(SKLinear\\): {values}"):
        SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1", "fc2"], space, separate=True)]),
                    lambda m: 1.0, accuracy_threshold=0.5)
    assert [type(m) for m in digits_model.modules()] == before


def test_the_old_low_rank_quantize_form_still_tunes_and_installs_int8(digits_model):
    space = {"num_terms": [1], "low_rank": [16, None], "init": ["svd"], "quantize": [True]}
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1"], space)]), lambda m: 1.0,
                        OptunaSearch(n_trials=2, seed=0))
    tuner.tune()
    assert {r.params["low_rank"] for r in tuner.results.records if r.status != "failed"} == {16, None}
    tuner.apply_best_params()
    assert type(digits_model.fc1) in (Int8SKLinear, Int8Linear)
