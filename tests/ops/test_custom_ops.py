"""The panther:: custom ops on CPU (schema/fake/autograd via opcheck) and when the CUDA build happens."""

from __future__ import annotations

import warnings

import pytest
import torch
from sketch_reference import make_factors, per_term_reference

from panther.ops import _cuda_ext, pack_left, pack_right, sketched_linear

forward_op = torch.ops.panther.sketched_linear_forward
backward_op = torch.ops.panther.sketched_linear_backward


def _packed(f):
    return pack_left(f["S1s"].detach(), f["U2s"]), pack_right(f["U1s"], f["S2s"].detach())


@pytest.mark.parametrize("bias", [True, False])
def test_forward_op_passes_opcheck(bias):
    f = make_factors(2, 7, 3, 5, bias=bias)
    A, B = _packed(f)
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(forward_op, (x, f["S1s"], f["S2s"], A, B, f["bias"], 0.25, True))
    frozen = [t.detach() if t is not None else None for t in (x, f["S1s"], f["S2s"], f["bias"])]
    torch.library.opcheck(forward_op, (*frozen[:3], A, B, frozen[3], 0.25, False))  # inference: no hidden


def test_backward_op_passes_opcheck():
    f = make_factors(2, 7, 3, 5)
    A, B = _packed(f)
    x = torch.randn(4, 7, dtype=torch.float64)
    hidden = x @ A
    grad_y = torch.randn(4, 5, dtype=torch.float64)
    for needs in [(True, True, True, True), (False, True, False, False), (False, False, True, True)]:
        torch.library.opcheck(backward_op, (grad_y, x, hidden, A, B, 0.25, 6, *needs))


def test_forward_op_autograd_matches_reference():
    f = make_factors(3, 9, 2, 6)
    A, B = _packed(f)
    x = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    y, hidden = forward_op(x, f["S1s"], f["S2s"], A, B, f["bias"], 1 / 6, True)
    expected = per_term_reference(x, f["S1s"], f["S2s"], f["U1s"], f["U2s"], f["bias"])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(hidden, x.detach() @ A)
    learnable = [x, f["S1s"], f["S2s"], f["bias"]]
    weight = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad((y * weight).sum(), learnable),
                         torch.autograd.grad((expected * weight).sum(), learnable), strict=True):
        torch.testing.assert_close(got, want)


def test_backward_without_saved_hidden_is_a_clear_error():
    f = make_factors(1, 4, 2, 3)
    A, B = _packed(f)
    x = torch.randn(2, 4, dtype=torch.float64)
    y, _ = forward_op(x, f["S1s"], f["S2s"], A, B, f["bias"], 0.5, False)
    with pytest.raises(RuntimeError, match="hidden"):
        y.sum().backward()


@pytest.fixture
def forbid_cuda_build(monkeypatch):
    """Replace the loader with one that records calls; the extension state starts fresh."""
    calls = []
    monkeypatch.setattr(_cuda_ext, "_module", None)
    monkeypatch.setattr(_cuda_ext, "_failed", False)
    monkeypatch.setattr(_cuda_ext, "_load", lambda: calls.append("load") or pytest.fail("CUDA build triggered"))
    return calls


def test_cpu_tensors_never_trigger_the_cuda_build(forbid_cuda_build):
    f = make_factors(2, 6, 2, 4)
    A, B = _packed(f)
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    sketched_linear(x, f["S1s"], f["S2s"], A, B, f["bias"], 0.25).sum().backward()
    with torch.no_grad():
        sketched_linear(x, f["S1s"], f["S2s"], A, B, f["bias"], 0.25)
    forward_op(x, f["S1s"], f["S2s"], A, B, f["bias"], 0.25, True)[0].sum().backward()
    assert forbid_cuda_build == []
    assert _cuda_ext._module is None and not _cuda_ext._failed


def test_failed_build_warns_once_and_falls_back(monkeypatch):
    calls = []

    def failing_build():
        calls.append("load")
        raise RuntimeError("nvcc exploded")

    monkeypatch.setattr(_cuda_ext, "_module", None)
    monkeypatch.setattr(_cuda_ext, "_failed", False)
    monkeypatch.setenv("PANTHER_CUDA_KERNELS", "1")
    monkeypatch.setattr(_cuda_ext, "_load", failing_build)
    with pytest.warns(RuntimeWarning, match="nvcc exploded"):
        assert _cuda_ext.cuda_extension() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda_ext.cuda_extension() is None
    assert calls == ["load"]


def test_extension_is_never_loaded_without_opt_in(monkeypatch, forbid_cuda_build):
    monkeypatch.delenv("PANTHER_CUDA_KERNELS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _cuda_ext.cuda_extension() is None
    assert forbid_cuda_build == []


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("PANTHER_EXTENSIONS_DIR", str(tmp_path))
    assert _cuda_ext.cache_dir().parent == tmp_path
    monkeypatch.delenv("PANTHER_EXTENSIONS_DIR")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "te"))
    assert _cuda_ext.cache_dir().parent == tmp_path / "te" / "panther"


def test_sources_are_the_shipped_kernels():
    names = sorted(p.rsplit("/", 1)[-1] for p in _cuda_ext.cuda_sources())
    assert names == ["sketch_binding.cpp", "sketch_fused.cu", "sketch_gemm.cu"]
