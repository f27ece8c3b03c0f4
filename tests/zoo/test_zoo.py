"""Every zoo architecture through the public API: exact at full rank, trainable, reloadable, tunable.

1. Every tunable layer sketched at full rank with ``init="svd"`` reproduces the dense outputs in
   eval mode: the sketches run, and nothing (a fused fast path, a parent reading ``.weight``)
   bypasses them.
2. The ``"auto"`` config with ``replace_without_tuning()``: eval and train forward, backward,
   finite gradients in every sketched parameter.
3. State dict -> ``rebuild_sketched_layers`` on a fresh dense model -> strict load -> same outputs.
4. A short ``tune()`` leaves the model dense; ``apply_best_params()`` meets the threshold.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn
from zoo_models import zoo_params

from panther.nn import SKConv2d, SketchedModule, SKLinear
from panther.nn.dense import is_linear_like, linear_dims
from panther.plans import rebuild_sketched_layers
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

pytestmark = pytest.mark.parametrize("zoo_model", zoo_params(), indirect=True)


def auto_configs(zoo_model) -> TuningConfigs:
    return TuningConfigs([LayerConfig(layer_names={"type": zoo_model.layer_types}, params="auto")])


def tunable_layers(model: nn.Module, zoo_model) -> dict[str, nn.Module]:
    """What the tuner will sketch (its own resolution: attention internals and tied layers left out)."""
    probe = {"num_terms": [1], "low_rank": [1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = SKAutoTuner(model, [{"layer_names": {"type": zoo_model.layer_types}, "params": probe}],
                            lambda m: 1.0)
    return {name: model.get_submodule(name) for config in tuner.getConfigs() for name in config.layer_names}


def full_rank(layer: nn.Module) -> int:
    """The smallest ``low_rank`` (one term) whose rank ``2k`` reaches the dense layer's rank bound."""
    if is_linear_like(layer):
        bound = min(linear_dims(layer))
    else:
        assert isinstance(layer, nn.Conv2d)
        kh, kw = layer.kernel_size
        bound = min(layer.in_channels // layer.groups * kh * kw, layer.out_channels // layer.groups)
    return math.ceil(bound / 2)


def sketched_modules(model: nn.Module) -> list[SketchedModule]:
    return [m for m in model.modules() if isinstance(m, SketchedModule)]


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.nn.functional.cosine_similarity(a.flatten().double(), b.flatten().double(), dim=0).item()


def test_full_rank_svd_sketches_reproduce_the_dense_outputs(zoo_model):
    model, inputs = zoo_model.build(), zoo_model.inputs()
    with torch.no_grad():
        dense_out = zoo_model.run(model, inputs)
    layers = tunable_layers(model, zoo_model)
    configs = [LayerConfig(name, {"num_terms": [1], "low_rank": [full_rank(layer)], "init": ["svd"]})
               for name, layer in layers.items()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SKAutoTuner(model, TuningConfigs(configs), lambda m: 1.0).replace_without_tuning()
    assert len(sketched_modules(model)) == len(layers) > 0
    with torch.no_grad():
        sketched_out = zoo_model.run(model, inputs)
    assert sketched_out.shape == dense_out.shape
    torch.testing.assert_close(sketched_out, dense_out, atol=2e-4, rtol=2e-4)


def test_auto_config_trains_with_finite_gradients(zoo_model):
    model, inputs = zoo_model.build(), zoo_model.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = SKAutoTuner(model, auto_configs(zoo_model), lambda m: 1.0)
    tuner.replace_without_tuning()
    sketched = sketched_modules(model)
    assert sketched and all(isinstance(m, (SKLinear, SKConv2d)) for m in sketched)
    with torch.no_grad():
        assert torch.isfinite(zoo_model.run(model.eval(), inputs)).all()
    model.train()
    zoo_model.run(model, inputs).float().pow(2).mean().backward()
    for module in sketched:
        for name, param in module.named_parameters():
            assert param.grad is not None and torch.isfinite(param.grad).all(), f"{type(module).__name__}.{name}"
    assert any(param.grad.abs().sum() > 0 for module in sketched for param in module.parameters())


def test_state_dict_reloads_into_a_fresh_dense_model(zoo_model):
    model, inputs = zoo_model.build(seed=0), zoo_model.inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        SKAutoTuner(model, auto_configs(zoo_model), lambda m: 1.0).replace_without_tuning()
    state = model.state_dict()
    fresh = zoo_model.build(seed=1)  # other weights: only the loaded state can make it equal
    rebuild_sketched_layers(fresh, state)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(zoo_model.run(fresh.eval(), inputs), zoo_model.run(model.eval(), inputs),
                                   atol=0, rtol=0)


def agreement_with(zoo_model, model: nn.Module, inputs) -> Callable[[nn.Module], float]:
    """``f(m)``: cosine of ``m``'s outputs on ``inputs`` to ``model``'s outputs now (the dense reference)."""
    with torch.no_grad():
        reference = zoo_model.run(model, inputs)

    def agreement(m: nn.Module) -> float:
        with torch.no_grad():
            return cosine(zoo_model.run(m, inputs), reference)

    return agreement


def test_short_tune_leaves_the_model_dense_and_the_plan_meets_the_threshold(zoo_model):
    model, inputs = zoo_model.build(), zoo_model.inputs()
    agreement = agreement_with(zoo_model, model, inputs)

    before = dict(model.named_modules())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = SKAutoTuner(model, auto_configs(zoo_model), agreement, accuracy_threshold=0.98,
                            search_algorithm=OptunaSearch(n_trials=2, seed=0), max_total_trials=8)
    tuner.tune()
    assert dict(model.named_modules()) == before
    assert tuner.results.records and not any(r.status == "failed" for r in tuner.results.records)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.apply_best_params()
    assert agreement(model) >= 0.98
    assert len(sketched_modules(model)) == len(tuner.get_best_params())
    summary = tuner.summary()
    for name, reason in tuner.results.skipped.items():
        assert f"{name}: {reason}" in summary


def test_allocated_plan_holds_its_threshold_and_reloads(zoo_model):
    """5. The default strategy (whole-model allocation, int8 on CPU) on every architecture."""
    model, inputs = zoo_model.build(), zoo_model.inputs()
    agreement = agreement_with(zoo_model, model, inputs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner = SKAutoTuner(model, auto_configs(zoo_model), agreement, accuracy_threshold=0.98, max_total_trials=8,
                            calibration_data=[inputs], calibration_forward=zoo_model.run)
    assert tuner.allocates
    tuner.tune()
    assert 1 <= len(tuner.results.plans) <= 8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tuner.apply_best_params()
    assert agreement(model) >= 0.98
    assert agreement(model) == pytest.approx(tuner.results.composed_accuracy, abs=1e-6)
    state = model.state_dict()
    fresh = zoo_model.build(seed=1)
    rebuild_sketched_layers(fresh, state)
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(zoo_model.run(fresh.eval(), inputs), zoo_model.run(model.eval(), inputs),
                                   atol=0, rtol=0)
