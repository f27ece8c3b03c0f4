"""The linear kind's smoothed int8 (``method="int8_smooth"``): built from the calibration statistics,
weighed by the allocation beside plain int8 and chosen only where it measures better."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from panther.kinds import kind_named, kind_of_class_name, kind_of_replacement
from panther.nn.quantized import Int8Linear, SmoothInt8Linear
from panther.plans import rebuild_sketched_layers, sketch_plan
from panther.space import Categorical
from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

KIND = kind_named("SKLinear")
SMOOTH = {"method": "int8_smooth"}


def test_smooth_builds_from_the_covariance_and_its_plan_and_state_name_it_again():
    dense = nn.Linear(24, 16)
    x = torch.randn(100, 24)
    x[:, 3] *= 100
    cov = x.T @ x / len(x)
    built = KIND.build(dense, SMOOTH, input_cov=cov)
    assert type(built) is SmoothInt8Linear and kind_of_replacement(built) is KIND
    assert kind_of_class_name("SmoothInt8Linear") is KIND
    assert built.input_scale[3] < built.input_scale.median() / 3  # the outlier channel is scaled down
    state = built.get_extra_state()
    assert KIND.plan_params(built) == SMOOTH == KIND.plan_params_from_state(state["hyperparameters"], state["class"])
    assert KIND.canonical_params({**SMOOTH, "num_terms": 2, "low_rank": 4}) == SMOOTH
    assert KIND.is_cheaper(dense, SMOOTH) and KIND.uses_input_cov(SMOOTH)
    assert KIND.plan_type(SMOOTH) == "SmoothInt8Linear"
    assert KIND.inference_only_in({"method": Categorical(["sketch", "int8_smooth"])})
    fresh = KIND.build(dense, SMOOTH, copy_weights=False)
    assert type(fresh) is SmoothInt8Linear and (fresh.input_scale == 1).all()
    with pytest.raises(ValueError, match="input covariance"):  # checked before the model is touched
        KIND.check_space({"method": Categorical(["int8", "int8_smooth"])}, calibrated=False)


@pytest.mark.parametrize("data_aware", [False, True])
def test_auto_offers_smooth_beside_int8_only_with_calibration_data(data_aware):
    space = KIND.auto_space(nn.Linear(64, 48), copy_weights=True, data_aware=data_aware, methods=True)
    assert ("int8_smooth" in space["method"].values()) is data_aware
    assert "int8" in space["method"].values()


def planted_outlier_model() -> nn.Sequential:
    """Hidden activations with 4 of 96 channels 100x the rest, read by weights 100x smaller."""
    torch.manual_seed(2)
    first, second = nn.Linear(32, 96), nn.Linear(96, 32)
    with torch.no_grad():
        first.weight[[5, 40, 41, 77]] *= 100
        first.bias[[5, 40, 41, 77]] *= 100
        second.weight[:, [5, 40, 41, 77]] /= 100
    return nn.Sequential(first, nn.GELU(), second).eval()


def test_the_allocation_smooths_the_layer_with_outliers_only_and_the_checkpoint_reloads():
    model = planted_outlier_model()
    x = torch.randn(256, 32, generator=torch.Generator().manual_seed(7))
    reference = model(x).detach()

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), reference, dim=-1).mean())

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["0", "2"], "auto", separate=True)]), cosine,
                        accuracy_threshold=0.99, calibration_data=list(x.split(64)))
    assert tuner.allocates
    tuner.tune()
    tuner.apply_best_params()
    # layer 0's inputs have no outliers: plain int8 measures as well and stores less;
    # layer 2's outlier channels make plain int8 (and int8 sketches) miss, the smoothed int8 holds
    assert type(model[0]) is Int8Linear and type(model[2]) is SmoothInt8Linear
    assert cosine(model) >= 0.99
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    fresh = rebuild_sketched_layers(planted_outlier_model(), state)
    fresh.load_state_dict(state, strict=True)
    assert sketch_plan(fresh) == sketch_plan(model)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
