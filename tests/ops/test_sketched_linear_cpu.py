"""The CPU sketched-linear op against the independent per-term float64 formula."""

from __future__ import annotations

import pytest
import torch
from sketch_reference import make_factors, per_term_reference

from panther.nn import SKLinear
from panther.ops import pack_left, pack_right, sketched_linear


def _run_op(x, f):
    A = pack_left(f["S1s"].detach(), f["U2s"])
    B = pack_right(f["U1s"], f["S2s"].detach())
    return sketched_linear(x, f["S1s"], f["S2s"], A, B, f["bias"], 1.0 / (2 * f["S1s"].shape[0]))


def _grads(out, tensors):
    return torch.autograd.grad(out, tensors, torch.ones_like(out) if out.dim() == 0 else torch.randn_like(out,
                               generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("batch,d_in,d_out,T,k,bias", [
    (1, 8, 5, 1, 2, True),      # batch 1
    (7, 13, 11, 3, 3, True),    # odd shapes, several terms
    (4, 17, 9, 2, 5, False),    # no bias
])
def test_forward_and_all_gradients_match_per_term_formula(batch, d_in, d_out, T, k, bias):
    f = make_factors(T, d_in, k, d_out, bias=bias)
    x = torch.randn(batch, d_in, dtype=torch.float64, requires_grad=True)
    learnable = [x, f["S1s"], f["S2s"]] + ([f["bias"]] if bias else [])
    y = _run_op(x, f)
    expected = per_term_reference(x, f["S1s"], f["S2s"], f["U1s"], f["U2s"], f["bias"])
    torch.testing.assert_close(y, expected)
    for got, want in zip(_grads(y, learnable), _grads(expected, learnable), strict=True):
        torch.testing.assert_close(got, want)


def test_gradcheck_x_s1_s2_bias():
    f = make_factors(2, 6, 2, 5)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    U1s, U2s = f["U1s"], f["U2s"]

    def fn(x, S1s, S2s, bias):
        A, B = pack_left(S1s.detach(), U2s), pack_right(U1s, S2s.detach())
        return sketched_linear(x, S1s, S2s, A, B, bias, 0.25)

    assert torch.autograd.gradcheck(fn, (x, f["S1s"], f["S2s"], f["bias"]))


def test_fixed_factors_get_no_gradient():
    layer = SKLinear(12, 10, num_terms=2, low_rank=3, dtype=torch.float64)
    layer(torch.randn(4, 12, dtype=torch.float64)).sum().backward()
    assert layer.U1s.grad is None and layer.U2s.grad is None
    assert layer.S1s.grad is not None and layer.S2s.grad is not None and layer.bias.grad is not None


@pytest.mark.parametrize("wanted", [("S1s", "bias"), ("S2s",), ("bias",), ("x",), ("x", "S2s", "bias")])
def test_only_requested_gradients_are_produced(wanted):
    f = make_factors(1, 6, 2, 4)
    x = torch.randn(3, 6, dtype=torch.float64)
    tensors = {"x": x, "S1s": f["S1s"], "S2s": f["S2s"], "bias": f["bias"]}
    for name, tensor in tensors.items():
        tensor.requires_grad_(name in wanted)
    _run_op(x, f).sum().backward()
    expected = per_term_reference(x, f["S1s"], f["S2s"], f["U1s"], f["U2s"], f["bias"])
    wants = torch.autograd.grad(expected.sum(), [tensors[name] for name in wanted])
    for name, want in zip(wanted, wants, strict=True):
        torch.testing.assert_close(tensors[name].grad, want)
    assert all(tensors[name].grad is None for name in tensors if name not in wanted)


def test_non_contiguous_input():
    f = make_factors(2, 9, 3, 7)
    base = torch.randn(9, 10, dtype=torch.float64)
    x = base.T[::2].requires_grad_()  # (5, 9), transposed and strided
    assert not x.is_contiguous()
    y = _run_op(x, f)
    expected = per_term_reference(x, f["S1s"], f["S2s"], f["U1s"], f["U2s"], f["bias"])
    torch.testing.assert_close(y, expected)
    for got, want in zip(_grads(y, [x, f["S1s"]]), _grads(expected, [x, f["S1s"]]), strict=True):
        torch.testing.assert_close(got, want)


def test_inference_path_matches_training_path():
    f = make_factors(2, 10, 3, 6)
    x = torch.randn(4, 10, dtype=torch.float64)
    with torch.no_grad():
        y_inference = _run_op(x, f)
    torch.testing.assert_close(y_inference, _run_op(x, f).detach())


@pytest.mark.parametrize("shape", [(10,), (2, 3, 10), (2, 1, 4, 10)])
def test_sklinear_mixed_leading_dims_match_effective_weight(shape):
    layer = SKLinear(10, 7, num_terms=2, low_rank=2, dtype=torch.float64)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    assert y.shape == (*shape[:-1], 7)
    dense = x @ layer.effective_weight().T + layer.bias
    torch.testing.assert_close(y, dense)
    torch.testing.assert_close(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(dense.sum(), x)[0])
