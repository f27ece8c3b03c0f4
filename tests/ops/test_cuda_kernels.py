"""The CUDA kernels against the float64 per-term formula: every dtype, gradient and awkward shape.

Run on a lent GPU by ``bench/gpu_check.sh``; on CPU the same kernels run under tests/cuda_emulation.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from sketch_reference import make_factors, per_term_reference

from panther.nn import SKLinear
from panther.ops import _cuda_ext, _dispatch, pack_left, pack_right, sketched_linear
from panther.ops._torch_path import torch_forward

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

REAL_SM_COUNT = _dispatch.multiprocessor_count  # the module's fixture replaces it

# Relative Frobenius error allowed per dtype (fp16/bf16 products are accumulated in fp32).
REL_TOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}

# (batch, d_in, d_out, T, k): 2r in the fused ranges 16/32/64, and > 64 (two-GEMM path); none a multiple of 16.
SHAPES = [(1, 33, 17, 1, 3), (7, 45, 29, 3, 5), (19, 70, 131, 2, 13), (33, 129, 65, 3, 24)]


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    got, want = got.double(), want.double()
    err = (got - want).norm() / want.norm().clamp_min(1e-30)
    assert err <= REL_TOL[dtype], f"relative error {err:.3g} > {REL_TOL[dtype]:.1g}"


@pytest.fixture(scope="module", autouse=True)
def extension():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PANTHER_CUDA_KERNELS", "1")  # the kernels are opt-in; these tests are their validation
        # The kernels are under test here, not the dispatch rule: every batch "fills" a 1-SM device.
        patch.setattr(_dispatch, "multiprocessor_count", lambda device: 1)
        ext = _cuda_ext.cuda_extension()
        assert ext is not None, "the CUDA extension failed to build (see the warning above)"
        yield ext


def _case(shape, dtype, bias=True, x_transposed=False):
    batch, d_in, d_out, T, k = shape
    f = make_factors(T, d_in, k, d_out, dtype=dtype, device="cuda", bias=bias)
    x = (torch.randn(d_in, batch, device="cuda", dtype=dtype).T if x_transposed
         else torch.randn(batch, d_in, device="cuda", dtype=dtype))
    return x.requires_grad_(), f


def _check_forward_backward(x, f, dtype):
    A = pack_left(f["S1s"].detach(), f["U2s"])
    B = pack_right(f["U1s"], f["S2s"].detach())
    scale = 1.0 / (2 * f["S1s"].shape[0])
    y = sketched_linear(x, f["S1s"], f["S2s"], A, B, f["bias"], scale)
    as64 = {name: (t.detach().double().requires_grad_(t.requires_grad) if t is not None else None)
            for name, t in f.items()}
    x64 = x.detach().double().requires_grad_()
    expected = per_term_reference(x64, as64["S1s"], as64["S2s"], as64["U1s"], as64["U2s"], as64["bias"])
    assert y.dtype == dtype
    assert_rel_close(y, expected, dtype)
    weight = torch.randn_like(expected)
    learnable = [x, f["S1s"], f["S2s"]] + ([f["bias"]] if f["bias"] is not None else [])
    learnable64 = [x64, as64["S1s"], as64["S2s"]] + ([as64["bias"]] if f["bias"] is not None else [])
    got = torch.autograd.grad((y * weight.to(dtype)).sum(), learnable)
    want = torch.autograd.grad((expected * weight).sum(), learnable64)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        assert_rel_close(g, w, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_match_float64_formula(shape, dtype):
    x, f = _case(shape, dtype)
    _check_forward_backward(x, f, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous_input_and_no_bias(dtype):
    x, f = _case((9, 37, 23, 2, 6), dtype, bias=False, x_transposed=True)
    assert not x.is_contiguous()
    _check_forward_backward(x, f, dtype)


@pytest.mark.parametrize("rank2", [6, 40, 96])
def test_extension_forward_equals_pytorch_path(extension, rank2):
    x = torch.randn(21, 50, device="cuda", dtype=torch.float64)
    A = torch.randn(50, rank2, device="cuda", dtype=torch.float64)
    B = torch.randn(rank2, 30, device="cuda", dtype=torch.float64)
    bias = torch.randn(30, device="cuda", dtype=torch.float64)
    y, hidden = extension.forward(x, A, B, bias, 0.3, True)
    want_y, want_hidden = torch_forward(x, A, B, bias, 0.3)
    torch.testing.assert_close(y, want_y)
    torch.testing.assert_close(hidden, want_hidden)


def test_inference_without_grad_matches_training_forward():
    layer = SKLinear(77, 45, num_terms=2, low_rank=7, device="cuda")
    x = torch.randn(3, 5, 77, device="cuda")
    with torch.no_grad():
        y_inference = layer(x)
    torch.testing.assert_close(y_inference, layer(x).detach())
    assert_rel_close(y_inference, x.double() @ layer.effective_weight().double().T + layer.bias.double(),
                     torch.float32)


def test_torch_compile_matches_eager():
    layer = SKLinear(64, 40, num_terms=1, low_rank=9, device="cuda")
    x = torch.randn(6, 64, device="cuda", requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True)
    y_eager, y_compiled = layer(x), compiled(x)
    torch.testing.assert_close(y_compiled, y_eager)
    g_eager = torch.autograd.grad(y_eager.sum(), [x, layer.S1s, layer.S2s])
    g_compiled = torch.autograd.grad(y_compiled.sum(), [x, layer.S1s, layer.S2s])
    for a, b in zip(g_compiled, g_eager, strict=True):
        torch.testing.assert_close(a, b)


def test_custom_op_opcheck_on_cuda():
    f = make_factors(2, 19, 3, 11, dtype=torch.float32, device="cuda")
    A = pack_left(f["S1s"].detach(), f["U2s"])
    B = pack_right(f["U1s"], f["S2s"].detach())
    x = torch.randn(5, 19, device="cuda", requires_grad=True)
    torch.library.opcheck(torch.ops.panther.sketched_linear_forward,
                          (x, f["S1s"], f["S2s"], A, B, f["bias"], 0.25, True))


@pytest.mark.parametrize("requires", list(itertools.product([False, True], repeat=4)), ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_both_ops_for_every_requires_grad_combination(requires, bias):
    """Defect 1: unrequested gradients shared one empty tensor, which torch.library rejects."""
    f = make_factors(2, 19, 3, 11, dtype=torch.float32, device="cuda", bias=bias)
    need_x, need_s1, need_s2, need_bias = requires
    need_bias = need_bias and bias
    x = torch.randn(5, 19, device="cuda", requires_grad=need_x)
    S1s, S2s = f["S1s"].detach().requires_grad_(need_s1), f["S2s"].detach().requires_grad_(need_s2)
    b = f["bias"].detach().requires_grad_(need_bias) if bias else None
    A, B = pack_left(S1s.detach(), f["U2s"]), pack_right(f["U1s"], S2s.detach())
    torch.library.opcheck(torch.ops.panther.sketched_linear_forward, (x, S1s, S2s, A, B, b, 0.25, True))
    grad_y = torch.randn(5, 11, device="cuda")
    torch.library.opcheck(torch.ops.panther.sketched_linear_backward,
                          (grad_y, x.detach(), x.detach() @ A, A, B, 0.25, 6, need_x, need_s1, need_s2, need_bias))


def test_bias_free_layer_with_frozen_input_trains():
    """Defect 1's common trigger: SKLinear(bias=False) on an input that does not require grad."""
    layer = SKLinear(40, 24, num_terms=2, low_rank=5, bias=False, device="cuda")
    x = torch.randn(7, 40, device="cuda")
    layer(x).sum().backward()
    assert layer.S1s.grad is not None and layer.S2s.grad is not None


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_bias_on_another_device_is_rejected(extension):
    """Defect 4: a cuda:1 bias with a cuda:0 input used to reach the kernel as a foreign pointer."""
    x = torch.randn(3, 8, device="cuda:0")
    A, B = torch.randn(8, 4, device="cuda:0"), torch.randn(4, 6, device="cuda:0")
    with pytest.raises(RuntimeError, match="bias is on cuda:1, expected cuda:0"):
        extension.forward(x, A, B, torch.randn(6, device="cuda:1"), 1.0, False)


class _ForwardSpy:
    """The extension, recording calls of its fused forward."""

    def __init__(self, ext) -> None:
        self.ext, self.calls = ext, 0

    def fused_forward_limits(self, x):
        return self.ext.fused_forward_limits(x)

    def forward(self, *args):
        self.calls += 1
        return self.ext.forward(*args)


def test_dispatch_rule_on_this_device(extension, monkeypatch):
    """With the real SM count, a batch of one block takes the two-GEMM path; a filling batch is fused."""
    monkeypatch.setattr(_dispatch, "multiprocessor_count", REAL_SM_COUNT)
    spy = _ForwardSpy(extension)
    monkeypatch.setattr(_cuda_ext, "_module", spy)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    layer = SKLinear(64, 48, num_terms=1, low_rank=8, device="cuda")
    with torch.no_grad():
        for batch, fused in [(32, False), (32 * sms, True)]:
            spy.calls = 0
            x = torch.randn(batch, 64, device="cuda")
            assert_rel_close(layer(x), x.double() @ layer.effective_weight().double().T + layer.bias.double(),
                             torch.float32)
            assert spy.calls == int(fused)
