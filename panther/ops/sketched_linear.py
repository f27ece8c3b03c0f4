"""The sketched-linear op and its packing helpers, dispatched to the fastest path per device.

CUDA tensors go through the ``panther::sketched_linear_forward`` custom op (fused kernels, visible
to ``torch.compile``/export). CPU tensors use a plain :class:`torch.autograd.Function` over the
PyTorch math: the custom-op dispatcher's Python overhead would dominate small CPU batches (see
``bench/bench_layers.py --overhead``).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from panther.ops import _custom_ops  # noqa: F401  - registers the panther:: ops (never builds anything)
from panther.ops._torch_path import torch_backward, torch_forward

_forward_op = torch.ops.panther.sketched_linear_forward.default


def pack_left(S1s: Tensor, U2s: Tensor) -> Tensor:
    """``A = [S1_0 … S1_{T-1} | U2_0 … U2_{T-1}]`` as one ``d_in x 2Tk`` matrix."""
    T, d_in, k = S1s.shape
    return torch.cat([S1s.transpose(0, 1).reshape(d_in, T * k), U2s.transpose(0, 1).reshape(d_in, T * k)], dim=1)


def pack_right(U1s: Tensor, S2s: Tensor) -> Tensor:
    """``B = [U1_0; …; U1_{T-1}; S2_0; …; S2_{T-1}]`` as one ``2Tk x d_out`` matrix."""
    T, k, d_out = U1s.shape
    return torch.cat([U1s.reshape(T * k, d_out), S2s.reshape(T * k, d_out)], dim=0)


class _SketchedLinearFunction(torch.autograd.Function):
    """CPU autograd for :func:`sketched_linear`, computing only the gradients that exist.

    ``A``/``B`` arrive detached; gradients flow to ``S1s``/``S2s``, which are passed alongside so
    that autograd can route them (their values are already inside ``A``/``B``).
    """

    @staticmethod
    def forward(ctx, x, S1s, S2s, A, B, bias, scale):  # type: ignore[override]
        y, hidden = torch_forward(x, A, B, bias, scale)
        ctx.save_for_backward(x, hidden, A, B)
        ctx.scale = scale
        ctx.term_shape = S1s.shape  # (T, d_in, k)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        x, hidden, A, B = ctx.saved_tensors
        T, d_in, k = ctx.term_shape
        need_x, need_s1, need_s2, _, _, need_bias, _ = ctx.needs_input_grad
        grad_x, grad_s1, grad_s2, grad_bias = torch_backward(
            grad_y.contiguous(), x, hidden, A, B, ctx.scale, T * k, need_x, need_s1, need_s2,
            need_bias and ctx.has_bias)
        if grad_s1 is not None:
            grad_s1 = grad_s1.view(d_in, T, k).transpose(0, 1)
        if grad_s2 is not None:
            grad_s2 = grad_s2.view(T, k, -1)
        return grad_x, grad_s1, grad_s2, None, None, grad_bias, None


def sketched_linear(x: Tensor, S1s: Tensor, S2s: Tensor, A: Tensor, B: Tensor,
                    bias: Tensor | None, scale: float) -> Tensor:
    """``scale · (x @ A) @ B + bias`` for a 2-D ``x``, differentiable in ``x``, ``S1s``, ``S2s``, ``bias``.

    ``A``/``B`` must be ``pack_left(S1s, U2s)``/``pack_right(U1s, S2s)`` (detached).
    """
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or S1s.requires_grad or S2s.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if x.is_cuda:
        return _forward_op(x, S1s, S2s, A, B, bias, scale, needs_grad)[0]
    if needs_grad:
        return _SketchedLinearFunction.apply(x, S1s, S2s, A, B, bias, scale)
    return torch_forward(x, A, B, bias, scale)[0]
