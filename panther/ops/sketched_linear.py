"""Pure-PyTorch sketched-linear op: two GEMMs through the rank-2r bottleneck.

This path runs everywhere and is the reference the CUDA kernels are tested against.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch.autograd.function import once_differentiable


def pack_left(S1s: torch.Tensor, U2s: torch.Tensor) -> torch.Tensor:
    """``A = [S1_0 … S1_{T-1} | U2_0 … U2_{T-1}]`` as one ``d_in x 2Tk`` matrix."""
    T, d_in, k = S1s.shape
    return torch.cat([S1s.transpose(0, 1).reshape(d_in, T * k), U2s.transpose(0, 1).reshape(d_in, T * k)], dim=1)


def pack_right(U1s: torch.Tensor, S2s: torch.Tensor) -> torch.Tensor:
    """``B = [U1_0; …; U1_{T-1}; S2_0; …; S2_{T-1}]`` as one ``2Tk x d_out`` matrix."""
    T, k, d_out = U1s.shape
    return torch.cat([U1s.reshape(T * k, d_out), S2s.reshape(T * k, d_out)], dim=0)


def _forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, bias: Optional[torch.Tensor],
             scale: float) -> Tuple[torch.Tensor, torch.Tensor]:
    hidden = x @ A
    if bias is None:
        return torch.mm(hidden, B).mul_(scale), hidden
    return torch.addmm(bias, hidden, B, alpha=scale), hidden


class _SketchedLinearFunction(torch.autograd.Function):
    """Autograd for :func:`sketched_linear` computing only the gradients that exist.

    ``A``/``B`` arrive detached; gradients flow to ``S1s``/``S2s``, which are passed alongside so
    that autograd can route them (their values are already inside ``A``/``B``).
    """

    @staticmethod
    def forward(ctx, x, S1s, S2s, A, B, bias, scale):  # type: ignore[override]
        y, hidden = _forward(x, A, B, bias, scale)
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
        r = T * k
        need_x, need_s1, need_s2, _, _, need_bias, _ = ctx.needs_input_grad
        grad_y = grad_y.contiguous()
        grad_x = grad_s1 = grad_s2 = grad_bias = None
        if need_x:
            grad_hidden = torch.mm(grad_y, B.T).mul_(ctx.scale)
            grad_x = grad_hidden @ A.T
            grad_hidden_s1 = grad_hidden[:, :r]
        elif need_s1:
            grad_hidden_s1 = torch.mm(grad_y, B[:r].T).mul_(ctx.scale)
        if need_s1:
            grad_s1 = (x.T @ grad_hidden_s1).view(d_in, T, k).transpose(0, 1)
        if need_s2:
            grad_s2 = torch.mm(hidden[:, r:].T, grad_y).mul_(ctx.scale).view(T, k, -1)
        if need_bias and ctx.has_bias:
            grad_bias = grad_y.sum(0)
        return grad_x, grad_s1, grad_s2, None, None, grad_bias, None


def sketched_linear(x: torch.Tensor, S1s: torch.Tensor, S2s: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                    bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """``scale · (x @ A) @ B + bias`` for a 2-D ``x``, differentiable in ``x``, ``S1s``, ``S2s``, ``bias``.

    ``A``/``B`` must be ``pack_left(S1s, U2s)``/``pack_right(U1s, S2s)`` (detached).
    """
    if torch.is_grad_enabled() and (x.requires_grad or S1s.requires_grad or S2s.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _SketchedLinearFunction.apply(x, S1s, S2s, A, B, bias, scale)
    return _forward(x, A, B, bias, scale)[0]
