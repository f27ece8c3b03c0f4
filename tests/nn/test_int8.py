"""Int8 layers against an independent reference: the stored int8 weights and scales, dequantized in float64.

The kernel quantizes each activation tensor per call (affine, 7-bit range with ``reduce_range``), so
every input entry is off by at most half a step ``Δ = (max(x, 0) - min(x, 0)) / 127`` and output
entry ``i`` by at most ``Δ/2 · Σ_j |W_ij|``: the bound the outputs are checked against.
"""

from __future__ import annotations

import copy
import io
import json

import pytest
import torch
from torch import nn

from panther.nn.int8 import quantize_per_channel
from panther.nn.linear import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.plans import apply_plan, rebuild_sketched_layers, sketch_plan, validate_plan

ACTIVATION_LEVELS = 127  # reduce_range: 7-bit activations


def activation_bound(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-output bound on ``|y - x·Wᵀ|`` from quantizing ``x`` per tensor (weight already exact)."""
    step = (x.max().clamp_min(0) - x.min().clamp_max(0)) / ACTIVATION_LEVELS
    return step / 2 * weight.abs().sum(dim=1)


def dequantized(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.double() * scale.double()[:, None]


def trained_like(d_in: int, d_out: int) -> nn.Linear:
    """A layer whose rows differ in scale by 100x, as trained layers' do (per-tensor scales would fail it)."""
    dense = nn.Linear(d_in, d_out)
    with torch.no_grad():
        dense.weight.mul_(torch.logspace(-1, 1, d_out)[:, None])
    return dense


def test_per_channel_scales_are_each_rows_absmax_over_127():
    weight = trained_like(24, 40).weight.detach()
    q, scale = quantize_per_channel(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and scale.shape == (40,)
    torch.testing.assert_close(scale, weight.abs().amax(dim=1) / 127)
    assert (q.abs().amax(dim=1) == 127).all()  # every row uses its full range
    error = (dequantized(q, scale) - weight.double()).abs()
    assert (error <= scale.double()[:, None] / 2 + 1e-9).all()  # round to nearest


def test_int8_linear_equals_its_dequantized_weights_up_to_activation_rounding():
    dense = trained_like(48, 32)
    layer = Int8Linear.from_dense(dense).eval()
    x = torch.randn(64, 48)
    weight = dequantized(layer.weight_int8, layer.weight_scale)
    reference = x.double() @ weight.T + dense.bias.double()
    with torch.no_grad():
        y = layer(x)
    error = (y.double() - reference).abs()
    assert (error <= activation_bound(x.double(), weight) + 1e-4).all()
    assert error.max() > 0  # the activations really were quantized: this is the kernel, not a float matmul
    torch.testing.assert_close(layer.weight_int8, quantize_per_channel(dense.weight)[0])
    torch.testing.assert_close(layer.bias, dense.bias.detach())


def test_int8_sketch_equals_its_dequantized_factors_up_to_activation_rounding():
    dense = trained_like(40, 36)
    sketch = SKLinear.from_dense(dense, num_terms=2, low_rank=4, init="svd")
    layer = Int8SKLinear.from_sketch(sketch).eval()
    first = dequantized(layer.first_int8, layer.first_scale)
    second = dequantized(layer.second_int8, layer.second_scale)
    x = torch.randn(50, 40).double()
    hidden = x @ first.T
    hidden_bound = activation_bound(x, first)  # per column of the intermediate
    step = (hidden.max().clamp_min(0) - hidden.min().clamp_max(0) + 2 * hidden_bound.max()) / ACTIVATION_LEVELS
    bound = second.abs() @ (hidden_bound + step / 2)
    with torch.no_grad():
        y = layer(x.float())
    reference = hidden @ second.T + sketch.bias.double()
    assert ((y.double() - reference).abs() <= bound + 1e-4).all()
    # the factors are the sketch's, its first one normalised row by row
    torch.testing.assert_close((second @ first).float(), sketch.effective_weight(), atol=0.02, rtol=0.02)
    torch.testing.assert_close(first.norm(dim=1), torch.ones(16, dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(layer.to_dense().weight, (second @ first).float())


def test_input_that_needs_a_gradient_gets_one_through_the_dequantized_weights():
    layer = Int8Linear.from_dense(trained_like(8, 6))
    x = torch.randn(5, 8, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, dequantized(layer.weight_int8, layer.weight_scale).float().sum(dim=0)
                               .expand(5, 8))


def test_inputs_off_the_cpu_are_refused_by_name():
    layer = Int8Linear(8, 6)
    with torch.no_grad(), pytest.raises(RuntimeError, match="Int8Linear runs its int8 kernel on CPU only"):
        layer(torch.empty(2, 8, device="meta"))


def test_loading_new_weights_repacks_and_copies_pack_afresh():
    layer, other = Int8Linear.from_dense(nn.Linear(8, 6)).eval(), Int8Linear.from_dense(nn.Linear(8, 6)).eval()
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
        twin = copy.deepcopy(layer)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x), other(x))
        torch.testing.assert_close(twin(x), before)


#: A plan as written before methods were named (the "SKLinear" type, low_rank/quantize): it still loads.
EVERY_METHOD = {"0": {"type": "SKLinear", "params": {"low_rank": None, "quantize": True}},
                "2": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 4, "init": "svd", "quantize": True}},
                "4": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 2, "init": "svd"}}}
#: The plan written today: each entry names the class it builds and its method.
EVERY_METHOD_NAMED = {"0": {"type": "Int8Linear", "params": {"method": "int8"}},
                      "2": {"type": "Int8SKLinear",
                            "params": {"method": "sketch_int8", "num_terms": 1, "low_rank": 4, "init": "svd"}},
                      "4": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 2, "init": "svd"}}}


def dense_model() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(trained_like(16, 32), nn.ReLU(), trained_like(32, 32), nn.ReLU(), trained_like(32, 8))


def model_with_every_method() -> nn.Sequential:
    return apply_plan(dense_model(), EVERY_METHOD)


def test_checkpoint_loads_with_weights_only_and_rebuilds_a_dense_model_strictly():
    model = model_with_every_method().eval()
    assert [type(m).__name__ for m in model[::2]] == ["Int8Linear", "Int8SKLinear", "SKLinear"]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["0.weight_int8"].dtype == torch.int8 and state["2.second_scale"].dtype == torch.float32
    fresh = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 8))
    rebuild_sketched_layers(fresh, state)
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=0, atol=0)


def test_plan_json_round_trip_rebuilds_the_same_layers():
    model = model_with_every_method()
    plan = validate_plan(json.loads(json.dumps(sketch_plan(model))))
    assert plan == EVERY_METHOD_NAMED  # the plain sketch's entry has no "method": its plans are unchanged
    assert sketch_plan(apply_plan(dense_model(), EVERY_METHOD_NAMED)) == plan
    again = apply_plan(dense_model(), plan)
    assert sketch_plan(again) == plan and sketch_plan(apply_plan(again, plan)) == plan  # installed: left alone
    for mine, theirs in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        if isinstance(mine, torch.Tensor):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


@pytest.mark.parametrize("entry,message", [
    ({"type": "Int8Linear", "params": {"num_terms": 1, "low_rank": 4, "init": "svd"}}, "build a SKLinear"),
    ({"type": "SKLinear", "params": {"low_rank": None}}, "low_rank=None, quantize=False"),
    ({"type": "SKLinear", "params": {"method": "int4"}}, "method='int4' is not valid"),
], ids=["type names another class", "builds nothing", "unknown method"])
def test_a_plan_whose_type_and_params_disagree_is_refused_before_the_model_is_touched(entry, message):
    model = dense_model()
    before = [type(m) for m in model]
    with pytest.raises(ValueError, match=message):
        apply_plan(model, {"2": entry})
    assert [type(m) for m in model] == before
