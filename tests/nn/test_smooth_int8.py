"""SmoothInt8Linear: SmoothQuant-style smoothing folded into an int8 weight, against float64 references."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from panther.nn.calibration import collect_input_covariances
from panther.nn.quantized import Int8Linear, SmoothInt8Linear, smoothing_scales

ACTIVATION_LEVELS = 127  # reduce_range: 7-bit activations


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.double() * scale.double()[:, None]


def outlier_inputs(rows: int, dim: int, outliers: list[int], factor: float, seed: int = 0) -> torch.Tensor:
    """Gaussian rows whose ``outliers`` channels are ``factor`` times the rest (as FFN inputs show)."""
    x = torch.randn(rows, dim, generator=torch.Generator().manual_seed(seed))
    x[:, outliers] *= factor
    return x


def test_scales_follow_the_smoothquant_formula():
    gen = torch.Generator().manual_seed(0)
    weight, rms = torch.randn(12, 20, generator=gen), torch.rand(20, generator=gen) * 5 + 0.1
    for alpha in (0.0, 0.5, 0.8):
        expected = rms.double() ** alpha / weight.double().abs().amax(dim=0) ** (1 - alpha)
        torch.testing.assert_close(smoothing_scales(rms, weight, alpha), expected.float())
    with pytest.raises(ValueError, match="alpha"):
        smoothing_scales(rms, weight, 1.5)


def test_output_equals_its_dequantized_float64_reference_up_to_activation_rounding():
    torch.manual_seed(1)
    dense = nn.Linear(48, 32)
    x = outlier_inputs(64, 48, [3, 17], 50.0)
    layer = SmoothInt8Linear.from_dense(dense, x.T @ x / len(x)).eval()
    scales = smoothing_scales((x.T @ x / len(x)).diagonal().sqrt(), dense.weight)
    torch.testing.assert_close(layer.input_scale, 1 / scales)
    weight = dequantized(layer.weight_int8, layer.weight_scale)  # what it stores: W·diag(s), int8
    step = weight.abs().amax(dim=1, keepdim=True) / 127
    assert ((weight - dense.weight.double() * scales.double()).abs() <= step / 2 + 1e-7).all()
    smoothed = x.double() * layer.input_scale.double()  # what the kernel quantizes
    reference = smoothed @ weight.T + dense.bias.double()
    with torch.no_grad():
        output = layer(x).double()
    delta = (smoothed.max().clamp_min(0) - smoothed.min().clamp_max(0)) / ACTIVATION_LEVELS
    bound = delta / 2 * weight.abs().sum(dim=1)
    assert ((output - reference).abs() <= bound + 1e-4).all()
    torch.testing.assert_close(layer.to_dense().weight.double(), weight / scales.double(), rtol=1e-6, atol=1e-7)


def test_state_dict_reloads_into_a_fresh_layer_exactly():
    dense = nn.Linear(16, 8)
    x = outlier_inputs(40, 16, [2], 80.0)
    layer = SmoothInt8Linear.from_dense(dense, x.T @ x / len(x)).eval()
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["_extra_state"]["class"] == "SmoothInt8Linear"
    fresh = SmoothInt8Linear(16, 8).eval()
    fresh.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), layer(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="checkpoint holds SmoothInt8Linear"):
        Int8Linear(16, 8).load_state_dict({**state, "_extra_state": state["_extra_state"]}, strict=False)


def test_without_statistics_nothing_is_smoothed_and_a_wrong_shape_is_refused():
    dense = nn.Linear(4, 3)
    placeholder = SmoothInt8Linear.from_dense(dense).eval()
    assert (placeholder.input_scale == 1).all()
    x = torch.randn(5, 4)
    with torch.no_grad():
        torch.testing.assert_close(placeholder(x), Int8Linear.from_dense(dense).eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="4x4"):
        SmoothInt8Linear.from_dense(dense, torch.eye(5))


def planted_outlier_model() -> nn.Sequential:
    """A block whose hidden activations have 4 of 96 channels 100x the rest, and whose next layer
    reads them with weights 100x smaller, as LayerNorm'd transformer activations and their FFNs do."""
    torch.manual_seed(2)
    first, second = nn.Linear(32, 96), nn.Linear(96, 32)
    outliers = [5, 40, 41, 77]
    with torch.no_grad():
        first.weight[outliers] *= 100
        first.bias[outliers] *= 100
        second.weight[:, outliers] /= 100
    return nn.Sequential(first, nn.GELU(), second).eval()


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return F.cosine_similarity(a.double(), b.double(), dim=-1).mean().item()


def test_smoothing_holds_where_plain_dynamic_int8_collapses_on_planted_outliers():
    model = planted_outlier_model()
    calibration = [torch.randn(64, 32, generator=torch.Generator().manual_seed(s)) for s in range(4)]
    held_out = torch.randn(256, 32, generator=torch.Generator().manual_seed(99))
    covs = collect_input_covariances(model, ["0", "2"], calibration)
    with torch.no_grad():
        dense_out = model(held_out)
        plain = nn.Sequential(Int8Linear.from_dense(model[0]), nn.GELU(), Int8Linear.from_dense(model[2])).eval()
        smooth = nn.Sequential(SmoothInt8Linear.from_dense(model[0], covs["0"]), nn.GELU(),
                               SmoothInt8Linear.from_dense(model[2], covs["2"])).eval()
        hidden = model[1](model[0](held_out))
    rms = hidden.square().mean(dim=0).sqrt()
    assert rms[[5, 40, 41, 77]].min() > 50 * rms.median()  # the planted outliers are there
    plain_cos, smooth_cos = cosine(plain(held_out), dense_out), cosine(smooth(held_out), dense_out)
    assert plain_cos <= 1.0 - 0.3, plain_cos
    assert smooth_cos >= 1.0 - 0.02, smooth_cos
