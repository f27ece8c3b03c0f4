"""SKConv2d against independent references: nn.Conv2d, explicit sums over its factors, truncated SVDs."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from panther.nn.conv import SKConv2d, conv_flops_ratio, conv_is_cheaper

f64 = torch.float64


def reference_kernel(layer: SKConv2d) -> torch.Tensor:
    """``W[o] = 1/(2T) Σ_{l,j} U1s[l, j, o] · S1s[group(o)·2Tk + l·k + j]``, spelled out entry by entry."""
    T, k, g = layer.num_terms, layer.low_rank, layer.groups
    out_per_group = layer.out_channels // g
    weight = torch.zeros(layer.out_channels, *layer.S1s.shape[1:], dtype=layer.S1s.dtype)
    for o in range(layer.out_channels):
        group = o // out_per_group
        for term in range(2 * T):
            for j in range(k):
                weight[o] += layer.U1s[term, j, o] * layer.S1s[group * 2 * T * k + term * k + j]
    return weight.detach() / (2 * T)


def reference_conv(layer: SKConv2d, args: dict[str, Any]) -> nn.Conv2d:
    """A plain nn.Conv2d built from the same arguments, holding the reference kernel and the bias."""
    dense = nn.Conv2d(**args, dtype=layer.S1s.dtype)
    with torch.no_grad():
        dense.weight.copy_(reference_kernel(layer))
        if layer.bias is not None:
            dense.bias.copy_(layer.bias)
    return dense


CONFIGS = [
    dict(kernel_size=3),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 2)),
    dict(kernel_size=3, dilation=2, padding=2),
    dict(kernel_size=3, padding="valid"),
    dict(kernel_size=2, padding="same"),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=(2, 3), padding="same", dilation=(1, 2)),
    dict(kernel_size=4, padding="same", dilation=3),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=(2, 1), padding_mode="replicate"),
    dict(kernel_size=3, padding=1, padding_mode="circular", stride=2),
    dict(kernel_size=4, padding="same", padding_mode="reflect"),
    dict(kernel_size=2, padding="same", padding_mode="circular", dilation=2),
    dict(kernel_size=3, padding=1, groups=2),
    dict(kernel_size=3, padding=1, groups=4, out_channels=8),  # depthwise, 2 outputs per channel
    dict(kernel_size=(1, 3), bias=False, groups=2, padding_mode="replicate", padding=1),
    dict(kernel_size=1, bias=False),
]


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # PyTorch's own note
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_forward_equals_dense_conv_with_reference_kernel(config: dict[str, Any]) -> None:
    args = {"in_channels": 4, "out_channels": 6, **config}
    layer = SKConv2d(**args, num_terms=2, low_rank=3, dtype=f64)
    x = torch.randn(2, 4, 9, 8, dtype=f64)
    expected = reference_conv(layer, args)(x)
    torch.testing.assert_close(layer(x), expected)
    torch.testing.assert_close(layer.effective_weight(), reference_kernel(layer))
    torch.testing.assert_close(layer.to_dense()(x), expected)


def test_unbatched_and_non_contiguous_inputs_match_batched() -> None:
    args = dict(in_channels=4, out_channels=6, kernel_size=3, padding=1, padding_mode="circular", groups=2)
    layer = SKConv2d(**args, num_terms=1, low_rank=2, dtype=f64)
    reference = reference_conv(layer, args)
    x = torch.randn(3, 4, 7, 7, dtype=f64)
    torch.testing.assert_close(layer(x[1]), reference(x[1:2])[0])
    transposed = torch.randn(3, 4, 7, 7, dtype=f64).transpose(2, 3)
    assert not transposed.is_contiguous()
    torch.testing.assert_close(layer(transposed), reference(transposed.contiguous()))
    channels_last = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(channels_last), reference(x))


def test_state_dict_layout_and_semantics_match_original_panther() -> None:
    """Original: ``S1s (2Tk, in, kh, kw)`` conv, then ``mean_l Σ_j U1s[l, j, o]·hidden[l, j]`` + bias."""
    T, k = 3, 2
    layer = SKConv2d(5, 7, (3, 2), stride=2, padding=1, num_terms=T, low_rank=k, dtype=f64)
    shapes = {name: tuple(t.shape) for name, t in layer.state_dict().items() if name != "_extra_state"}
    assert shapes == {"S1s": (2 * T * k, 5, 3, 2), "U1s": (2 * T, k, 7), "bias": (7,)}
    assert [name for name, _ in layer.named_parameters()] == ["S1s", "bias"]
    x = torch.randn(2, 5, 8, 9, dtype=f64)
    hidden = F.conv2d(x, layer.S1s, stride=2, padding=1)
    hidden = hidden.view(2, 2 * T, k, *hidden.shape[-2:])
    original = torch.einsum("blkhw,lko->blohw", hidden, layer.U1s).mean(dim=1) + layer.bias.view(1, -1, 1, 1)
    torch.testing.assert_close(layer(x), original)

    old_checkpoint = {name: t.clone() for name, t in layer.state_dict().items() if name != "_extra_state"}
    fresh = SKConv2d(5, 7, (3, 2), stride=2, padding=1, num_terms=T, low_rank=k, dtype=f64)
    fresh.load_state_dict(old_checkpoint, strict=True)
    torch.testing.assert_close(fresh(x), original)


def truncated_svd_error(weight: torch.Tensor, groups: int, rank: int) -> float:
    """Frobenius error of the best per-group rank-``rank`` approximation (Eckart–Young)."""
    blocks = weight.reshape(groups, weight.shape[0] // groups, -1)
    return math.sqrt(sum(float((torch.linalg.svdvals(b)[rank:] ** 2).sum()) for b in blocks))


@pytest.mark.parametrize("groups", [1, 2])
def test_svd_init_reaches_the_truncated_svd_optimum(groups: int) -> None:
    dense = nn.Conv2d(4, 16, 3, padding=1, groups=groups, dtype=f64)  # per-group rank min(16/g, 36/g) = 8
    for T, k in [(1, 1), (2, 1), (1, 3)]:
        layer = SKConv2d.from_dense(dense, num_terms=T, low_rank=k)
        error = float((layer.effective_weight() - dense.weight.detach()).norm())
        optimum = truncated_svd_error(dense.weight.detach(), groups, 2 * T * k)
        assert optimum > 1e-3
        assert error == pytest.approx(optimum, rel=1e-9)


def test_svd_init_is_exact_at_full_rank() -> None:
    dense = nn.Conv2d(6, 4, 2, groups=2, padding="same", padding_mode="reflect", dtype=f64)
    layer = SKConv2d.from_dense(dense, num_terms=2, low_rank=1)  # 2Tk = 4 > out/groups = 2
    x = torch.randn(2, 6, 5, 5, dtype=f64)
    torch.testing.assert_close(layer(x), dense(x))


def patch_error(layer_out: torch.Tensor, dense_out: torch.Tensor) -> float:
    return float(((layer_out - dense_out) ** 2).sum().detach())


def test_data_svd_minimises_the_output_error_on_the_covariance_inputs() -> None:
    groups, kernel = 2, 2
    dense = nn.Conv2d(4, 6, kernel, groups=groups, dtype=f64)
    mixing = torch.randn(4, 4, dtype=f64) * torch.tensor([3.0, 0.1, 1.0, 0.02], dtype=f64)
    x = torch.einsum("nchw,cd->ndhw", torch.randn(64, 4, 6, 6, dtype=f64), mixing)
    patches = F.unfold(x, kernel).transpose(1, 2).reshape(-1, 4 * kernel * kernel)  # channel-major rows
    cov = patches.T @ patches  # full (in·kh·kw)² second moment, no normalisation
    rank = 2
    layer = SKConv2d.from_dense(dense, num_terms=1, low_rank=1, init="data_svd", input_cov=cov)
    error = patch_error(layer(x), dense(x))

    f = 2 * kernel * kernel
    optimum = 0.0
    for g in range(groups):
        block = cov[g * f:(g + 1) * f, g * f:(g + 1) * f]
        evals, evecs = torch.linalg.eigh(block)
        root = evecs @ torch.diag(evals.clamp_min(0).sqrt()) @ evecs.T
        target = root @ dense.weight[g * 3:(g + 1) * 3].detach().reshape(3, f).T
        optimum += float((torch.linalg.svdvals(target)[rank:] ** 2).sum())
    assert error == pytest.approx(optimum, rel=1e-6)
    svd_error = patch_error(SKConv2d.from_dense(dense, num_terms=1, low_rank=1)(x), dense(x))
    assert error < 0.9 * svd_error

    per_group = torch.stack([cov[g * f:(g + 1) * f, g * f:(g + 1) * f] for g in range(groups)])
    same = SKConv2d.from_dense(dense, num_terms=1, low_rank=1, init="data_svd", input_cov=per_group)
    torch.testing.assert_close(same.effective_weight(), layer.effective_weight())


def test_sketch_init_is_unbiased() -> None:
    weight = torch.randn(6, 2, 3, 3, dtype=f64)
    draws = torch.stack([
        SKConv2d(2, 6, 3, num_terms=1, low_rank=2, W_init=weight, dtype=f64,
                 generator=torch.Generator().manual_seed(seed)).effective_weight()
        for seed in range(1000)
    ])
    relative = lambda w: float((w - weight).norm() / weight.norm())  # noqa: E731
    assert relative(draws[0]) > 0.3  # one draw is noisy ...
    assert relative(draws.mean(0)) < 0.1  # ... their average converges to W (std ≈ 0.035 here)


def test_sketch_projection_is_scaled_random_signs() -> None:
    layer = SKConv2d(3, 5, 3, num_terms=2, low_rank=4, dtype=f64)
    torch.testing.assert_close(layer.U1s.abs(), torch.full_like(layer.U1s, 0.5))
    assert 0.3 < float((layer.U1s > 0).double().mean()) < 0.7


def test_gradcheck_input_and_learnable_parameters() -> None:
    layer = SKConv2d(4, 2, 3, padding=1, groups=2, padding_mode="reflect", num_terms=1, low_rank=2, dtype=f64)
    x = torch.randn(1, 4, 5, 4, dtype=f64, requires_grad=True)

    def run(x: torch.Tensor, S1s: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(layer, {"S1s": S1s, "bias": bias}, (x,))

    S1s = layer.S1s.detach().clone().requires_grad_()
    bias = layer.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (x, S1s, bias))


def test_only_learnable_factors_receive_gradients() -> None:
    layer = SKConv2d(3, 4, 3, num_terms=2, low_rank=2)
    grad_out = torch.randn(2, 4, 4, 4)
    layer(torch.randn(2, 3, 6, 6)).backward(grad_out)
    assert not layer.U1s.requires_grad and layer.U1s.grad is None
    assert layer.S1s.grad is not None and layer.S1s.grad.abs().sum() > 0
    torch.testing.assert_close(layer.bias.grad, grad_out.sum((0, 2, 3)))
    assert layer.num_parameters() == layer.S1s.numel() + 4


def test_from_dense_copies_configuration_bias_dtype_and_device() -> None:
    dense = nn.Conv2d(4, 6, (3, 1), stride=(1, 2), padding=(2, 0), dilation=(2, 1), groups=2,
                      padding_mode="replicate", dtype=f64)
    layer = SKConv2d.from_dense(dense, num_terms=1, low_rank=4)
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(layer, name) == getattr(dense, name), name
    assert (layer.num_terms, layer.low_rank, layer.init) == (1, 4, "svd")
    assert layer.S1s.dtype == layer.U1s.dtype == layer.bias.dtype == f64
    assert layer.S1s.device == dense.weight.device
    torch.testing.assert_close(layer.bias, dense.bias)
    assert SKConv2d.from_dense(nn.Conv2d(2, 3, 1, bias=False), low_rank=2).bias is None
    with pytest.raises(TypeError):
        SKConv2d.from_dense(nn.Linear(2, 3))


def test_to_dense_is_an_equivalent_conv() -> None:
    layer = SKConv2d(4, 6, 4, padding="same", dilation=2, groups=2, padding_mode="circular", num_terms=1,
                     low_rank=2, dtype=f64)
    dense = layer.to_dense()
    assert isinstance(dense, nn.Conv2d) and (dense.padding, dense.padding_mode, dense.groups) == ("same", "circular", 2)
    x = torch.randn(2, 4, 7, 6, dtype=f64)
    torch.testing.assert_close(dense(x), layer(x))


def test_state_dict_round_trip_through_hyperparameters() -> None:
    layer = SKConv2d(4, 6, (2, 3), stride=1, padding="same", dilation=(1, 2), groups=2, bias=True,
                     padding_mode="reflect", num_terms=2, low_rank=3, init="sketch")
    hyper = json.loads(json.dumps(layer.hyperparameters()))
    fresh = SKConv2d(**hyper)
    fresh.load_state_dict(layer.state_dict(), strict=True)
    x = torch.randn(2, 4, 6, 7)
    torch.testing.assert_close(fresh(x), layer(x))
    assert fresh.hyperparameters() == layer.hyperparameters()

    other = SKConv2d(**{**hyper, "padding_mode": "zeros"})
    with pytest.raises(ValueError, match="padding_mode"):
        other.load_state_dict(layer.state_dict())


@pytest.mark.parametrize("bad", [
    dict(in_channels=0), dict(out_channels=-1), dict(kernel_size=0), dict(kernel_size=(3,)),
    dict(kernel_size=2.5), dict(stride=0), dict(dilation=(1, 0)), dict(padding=-1), dict(padding="full"),
    dict(padding="same", stride=2), dict(groups=3), dict(groups=0), dict(padding_mode="mirror"),
    dict(num_terms=0), dict(low_rank=0), dict(low_rank=True), dict(init="qr"), dict(init="data_svd"),
    dict(input_cov=torch.eye(36)), dict(W_init=torch.zeros(6, 4, 3)),
    dict(init="data_svd", input_cov=torch.eye(5)),
], ids=repr)
def test_bad_arguments_raise_value_error(bad: dict[str, Any]) -> None:
    args = {"in_channels": 4, "out_channels": 6, "kernel_size": 3, **bad}
    with pytest.raises(ValueError):
        SKConv2d(**args)


def test_autocast_matches_nn_conv2d_behaviour() -> None:
    layer = SKConv2d(4, 6, 3, padding=1, num_terms=1, low_rank=4)
    dense = layer.to_dense()
    x = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, dense_out = layer(x), dense(x)
    assert out.dtype == dense_out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), layer(x), rtol=0.05, atol=0.05)


def test_reset_parameters_draws_a_kaiming_kernel_and_bias() -> None:
    layer = SKConv2d(2, 3, 3, num_terms=2, low_rank=2, init="svd", dtype=f64)  # 2Tk = 4 >= rank 3: exact
    layer.reset_parameters(generator=torch.Generator().manual_seed(5))
    bound = 1 / math.sqrt(2 * 3 * 3)  # nn.Conv2d's kaiming_uniform(a=sqrt(5)) and bias bound
    weight = layer.effective_weight()
    assert float(weight.abs().max()) <= bound + 1e-12 and float(weight.abs().max()) > 0.8 * bound
    assert float(layer.bias.detach().abs().max()) <= bound
    twin = SKConv2d(2, 3, 3, num_terms=2, low_rank=2, init="svd", dtype=f64)
    twin.reset_parameters(generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(twin.effective_weight(), weight)
    torch.testing.assert_close(twin.bias, layer.bias)


def test_constructor_with_w_init_still_initialises_the_bias() -> None:
    layer = SKConv2d(2, 3, 3, low_rank=2, W_init=torch.randn(3, 2, 3, 3))
    bias = layer.bias.detach()
    assert torch.isfinite(bias).all() and 0 < float(bias.abs().max()) <= 1 / math.sqrt(2 * 3 * 3)


def test_extra_repr_names_the_configuration() -> None:
    text = repr(SKConv2d(4, 6, 2, padding="same", groups=2, bias=False, num_terms=2, low_rank=3))
    for part in ("4, 6", "kernel_size=(2, 2)", "padding='same'", "groups=2", "bias=False", "num_terms=2",
                 "low_rank=3", "init='sketch'"):
        assert part in text


def counted_flops(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops()


@pytest.mark.parametrize("in_ch, out_ch, kernel, groups, T, k", [
    (8, 16, 3, 1, 1, 2), (8, 8, (3, 1), 2, 2, 1), (16, 32, 3, 4, 1, 3), (4, 4, 1, 1, 2, 4),
])
def test_flops_ratio_matches_counted_flops(in_ch: int, out_ch: int, kernel: Any, groups: int, T: int, k: int) -> None:
    layer = SKConv2d(in_ch, out_ch, kernel, padding="same", groups=groups, bias=False, num_terms=T, low_rank=k)
    x = torch.randn(1, in_ch, 6, 6)
    measured = counted_flops(layer, x) / counted_flops(layer.to_dense(), x)
    assert conv_flops_ratio(in_ch, out_ch, kernel, groups, T, k) == pytest.approx(measured)
    assert conv_is_cheaper(in_ch, out_ch, kernel, groups, T, k) == (measured < 1)


def test_flops_ratio_rejects_bad_arguments() -> None:
    assert conv_is_cheaper(256, 256, 3, 1, 1, 16) and not conv_is_cheaper(16, 16, 3, 1, 2, 16)
    with pytest.raises(ValueError):
        conv_flops_ratio(6, 8, 3, 4, 1, 2)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_forward_and_autocast_follow_nn_conv2d() -> None:
    dense = nn.Conv2d(8, 16, 3, padding=1, device="cuda")
    layer = SKConv2d.from_dense(dense, num_terms=2, low_rank=4)  # 2Tk = 16 = full rank
    assert layer.S1s.is_cuda and layer.U1s.is_cuda and layer.bias.is_cuda
    x = torch.randn(2, 8, 10, 10, device="cuda")
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-2, atol=1e-2)  # TF32 convolutions
    with torch.autocast("cuda", dtype=torch.float16):
        assert layer(x).dtype == dense(x).dtype == torch.float16
    assert SKConv2d(8, 16, 3, device="cuda").U1s.is_cuda  # sketch init draws its signs on the device
