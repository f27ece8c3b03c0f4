"""SKLinear against independent references: the defining formula, the SVD optimum, nn.Linear."""

import copy

import pytest
import torch
from torch import nn

from panther.nn import SKLinear


def reference_output(layer: SKLinear, x: torch.Tensor) -> torch.Tensor:
    """``1/(2T) Σ_i (x·S1_i·U1_i + x·U2_i·S2_i) + bias`` term by term in float64."""
    x = x.double()
    total = 0
    for i in range(layer.num_terms):
        total = total + x @ layer.S1s[i].double() @ layer.U1s[i].double()
        total = total + x @ layer.U2s[i].double() @ layer.S2s[i].double()
    out = total / (2 * layer.num_terms)
    return out + layer.bias.double() if layer.bias is not None else out


@pytest.mark.parametrize("T,k,bias", [(1, 3, True), (2, 5, False), (3, 8, True)])
def test_forward_matches_defining_formula(T, k, bias):
    layer = SKLinear(17, 11, T, k, bias=bias)
    x = torch.randn(6, 17)
    torch.testing.assert_close(layer(x).double(), reference_output(layer, x), rtol=1e-5, atol=1e-5)


def test_any_leading_shape_one_dim_and_non_contiguous_input():
    layer = SKLinear(12, 7, 2, 3, dtype=torch.float64)
    x = torch.randn(2, 3, 4, 12, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, 3, 4, 7)
    torch.testing.assert_close(out, reference_output(layer, x.reshape(-1, 12)).view(2, 3, 4, 7))
    vec = torch.randn(12, dtype=torch.float64)
    assert layer(vec).shape == (7,)
    torch.testing.assert_close(layer(vec), reference_output(layer, vec[None])[0])
    wide = torch.randn(12, 10, dtype=torch.float64)
    non_contiguous = wide.T  # (10, 12) with strides (1, 10)
    assert not non_contiguous.is_contiguous()
    torch.testing.assert_close(layer(non_contiguous), reference_output(layer, non_contiguous))


def test_gradcheck_learnable_tensors_and_input():
    layer = SKLinear(6, 5, 2, 2, dtype=torch.float64)
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)

    def run(inp, s1, s2, b):
        layer.S1s, layer.S2s, layer.bias = s1, s2, b
        return layer(inp)

    params = [nn.Parameter(p.detach().clone()) for p in (layer.S1s, layer.S2s, layer.bias)]
    assert torch.autograd.gradcheck(run, (x, *params))


def test_gradients_match_autograd_of_the_formula_and_sketches_stay_fixed():
    layer = SKLinear(9, 4, 3, 2, dtype=torch.float64)
    x = torch.randn(5, 9, dtype=torch.float64)
    weights = torch.randn(5, 4, dtype=torch.float64)
    (layer(x) * weights).sum().backward()
    ref = copy.deepcopy(layer)
    for p in ref.parameters():
        p.grad = None
    (reference_output(ref, x) * weights).sum().backward()
    for name in ("S1s", "S2s", "bias"):
        torch.testing.assert_close(getattr(layer, name).grad, getattr(ref, name).grad)
    assert not layer.U1s.requires_grad and not layer.U2s.requires_grad
    assert {n for n, _ in layer.named_parameters()} == {"S1s", "S2s", "bias"}


@pytest.mark.parametrize("T,k", [(1, 2), (2, 3), (1, 12)])
def test_svd_init_reaches_the_truncated_svd_optimum(T, k):
    weight = torch.randn(20, 30, dtype=torch.float64)
    layer = SKLinear(30, 20, T, k, W_init=weight, init="svd", dtype=torch.float64)
    singular_values = torch.linalg.svdvals(weight)
    rank = 2 * T * k
    optimum = singular_values[rank:].pow(2).sum().sqrt()
    error = (layer.effective_weight() - weight).norm()
    torch.testing.assert_close(error, optimum, rtol=1e-7, atol=1e-9)


def test_sketch_init_is_unbiased_with_the_predicted_error():
    d_in, d_out, T, k = 24, 16, 2, 3
    weight = torch.randn(d_out, d_in, dtype=torch.float64)
    samples = [
        SKLinear(d_in, d_out, T, k, W_init=weight, dtype=torch.float64,
                 generator=torch.Generator().manual_seed(seed)).effective_weight()
        for seed in range(400)
    ]
    stacked = torch.stack(samples)
    rel_sq_errors = ((stacked - weight).flatten(1).norm(dim=1) ** 2) / weight.norm() ** 2
    predicted = ((d_in - 1) + (d_out - 1)) / (4 * T * k)
    assert rel_sq_errors.mean().item() == pytest.approx(predicted, rel=0.1)
    # Averaging n independent sketches shrinks the error like 1/n if (and only if) it is unbiased.
    mean_error = ((stacked.mean(0) - weight).norm() ** 2 / weight.norm() ** 2).item()
    assert mean_error == pytest.approx(predicted / len(samples), rel=0.3)


def test_data_svd_minimises_output_error_on_correlated_inputs():
    torch.manual_seed(1)
    d_in, d_out = 16, 12
    mixing = torch.randn(d_in, d_in, dtype=torch.float64) * torch.logspace(0, -3, d_in, dtype=torch.float64)
    x = torch.randn(2000, d_in, dtype=torch.float64) @ mixing
    cov = x.T @ x / len(x)
    dense = nn.Linear(d_in, d_out, dtype=torch.float64)
    plain = SKLinear.from_dense(dense, 1, 2, init="svd")
    aware = SKLinear.from_dense(dense, 1, 2, init="data_svd", input_cov=cov)
    target = dense(x)
    plain_err = (plain(x) - target).pow(2).mean()
    aware_err = (aware(x) - target).pow(2).mean()
    assert aware_err < 0.5 * plain_err
    # The closed-form optimum: whiten, truncate, unwhiten.
    evals, evecs = torch.linalg.eigh(cov)
    root = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    u, s, vh = torch.linalg.svd(root @ dense.weight.T.detach(), full_matrices=False)
    best = torch.linalg.solve(root, u[:, :4] * s[:4] @ vh[:4])
    best_err = (x @ best - x @ dense.weight.T.detach()).pow(2).mean()
    torch.testing.assert_close(aware_err, best_err, rtol=1e-6, atol=1e-12)


def test_from_dense_copies_bias_dtype_and_is_exact_at_full_rank():
    dense = nn.Linear(10, 6, dtype=torch.float64)
    layer = SKLinear.from_dense(dense, num_terms=2, low_rank=3)
    assert layer.S1s.dtype == torch.float64 and layer.S1s.device == dense.weight.device
    torch.testing.assert_close(layer.bias, dense.bias)
    x = torch.randn(3, 10, dtype=torch.float64)
    torch.testing.assert_close(layer(x), dense(x))
    torch.testing.assert_close(layer.to_dense()(x), dense(x))
    no_bias = SKLinear.from_dense(nn.Linear(10, 6, bias=False), 1, 2)
    assert no_bias.bias is None


def test_hyperparameters_extra_repr_and_parameter_count():
    layer = SKLinear(40, 30, 2, 4, init="svd")
    assert layer.hyperparameters() == {"in_features": 40, "out_features": 30, "num_terms": 2, "low_rank": 4,
                                       "bias": True, "init": "svd"}
    assert "num_terms=2" in repr(layer) and "low_rank=4" in repr(layer)
    assert layer.num_parameters() == 2 * 40 * 4 + 2 * 4 * 30 + 30
    assert layer.S1s.shape == (2, 40, 4) and layer.S2s.shape == (2, 4, 30)
    assert layer.U1s.shape == (2, 4, 30) and layer.U2s.shape == (2, 40, 4)


def test_state_dict_without_extra_state_loads_strictly():
    """State dicts of the original design have only S1s, S2s, U1s, U2s and bias."""
    source = SKLinear(8, 5, 2, 2)
    legacy = {k: v for k, v in source.state_dict().items() if not k.endswith("_extra_state")}
    target = SKLinear(8, 5, 2, 2)
    target.load_state_dict(legacy, strict=True)
    x = torch.randn(3, 8)
    torch.testing.assert_close(target(x), source(x))


def test_loading_a_differently_shaped_sketch_names_the_mismatch():
    with pytest.raises(ValueError, match="low_rank"):
        SKLinear(8, 5, 1, 3).load_state_dict(SKLinear(8, 5, 1, 2).state_dict())


def test_inference_cache_follows_optimizer_steps_and_loads():
    layer = SKLinear(8, 4, 1, 2)
    x = torch.randn(3, 8)
    with torch.no_grad():
        before = layer(x)
    optimizer = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer(x).pow(2).sum().backward()
    optimizer.step()
    with torch.no_grad():
        after = layer(x)
        torch.testing.assert_close(after.double(), reference_output(layer, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(before, after)
    other = SKLinear(8, 4, 1, 2)
    with torch.no_grad():
        other(x)  # fill other's cache, then overwrite its weights
    other.load_state_dict(layer.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other(x), after)
        layer.S1s.mul_(2)
        torch.testing.assert_close(layer(x).double(), reference_output(layer, x), rtol=1e-5, atol=1e-5)


def test_dtype_conversion_and_autocast():
    layer = SKLinear(16, 8, 1, 4).to(torch.float64)
    x = torch.randn(2, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x), reference_output(layer, x))
    layer = layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(torch.randn(2, 16))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "kwargs",
    [dict(in_features=0), dict(out_features=-1), dict(num_terms=0), dict(low_rank=1.5), dict(init="qr"),
     dict(W_init=torch.zeros(3, 3)), dict(init="data_svd")],
)
def test_bad_arguments_raise_value_error(kwargs):
    args = dict(in_features=4, out_features=5, num_terms=1, low_rank=2) | kwargs
    with pytest.raises(ValueError):
        SKLinear(**args)


def test_wrong_input_width_is_a_clear_error():
    with pytest.raises(ValueError, match="last dimension 4"):
        SKLinear(4, 2, 1, 1)(torch.randn(3, 5))


def test_from_dense_rejects_other_layers():
    with pytest.raises(TypeError):
        SKLinear.from_dense(nn.Conv2d(1, 1, 1))


def test_parameter_count_below_dense_when_rank_is_small():
    dense = nn.Linear(256, 256)
    layer = SKLinear.from_dense(dense, 1, 16)
    # Learnable: S1 (256x16) + S2 (16x256) + bias; the fixed sketches are buffers, not parameters.
    assert layer.num_parameters() == 256 * 16 + 16 * 256 + 256


def test_layer_built_under_inference_mode_runs_in_and_out_of_it():
    dense = nn.Linear(8, 4)
    with torch.inference_mode():
        layer = SKLinear.from_dense(dense, 1, 4)
        x = torch.randn(3, 8)
        inside = layer(x)
        expected = dense(x)
    torch.testing.assert_close(inside, expected, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), inside)
