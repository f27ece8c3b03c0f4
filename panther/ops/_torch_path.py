"""The sketched-linear math in plain PyTorch: two GEMMs through the rank-2r bottleneck.

Shared by the CPU autograd path and the custom op's default kernel, and the reference the CUDA
kernels are tested against.
"""

from __future__ import annotations

import torch
from torch import Tensor


def torch_forward(x: Tensor, A: Tensor, B: Tensor, bias: Tensor | None, scale: float) -> tuple[Tensor, Tensor]:
    """``(scale · (x @ A) @ B + bias, x @ A)``: the hidden comes free, callers keep it only for backward."""
    hidden = x @ A
    if bias is None:
        y = torch.mm(hidden, B).mul_(scale)
    else:
        y = torch.addmm(bias, hidden, B, alpha=scale)
    return y, hidden


def torch_backward(grad_y: Tensor, x: Tensor, hidden: Tensor, A: Tensor, B: Tensor, scale: float, rank: int,
                   need_x: bool, need_s1: bool, need_s2: bool, need_bias: bool
                   ) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients for ``x``, ``S1`` (``A[:, :r]``, as ``d_in x r``), ``S2`` (``B[r:]``, ``r x d_out``), bias.

    Only the requested ones are computed (the rest are ``None``): ``U1``/``U2`` are fixed, so the
    full ``gA``/``gB`` are never formed.
    """
    grad_x = grad_s1 = grad_s2 = grad_bias = None
    if need_x:
        grad_hidden = torch.mm(grad_y, B.T).mul_(scale)
        grad_x = torch.mm(grad_hidden, A.T)
        grad_hidden_s1 = grad_hidden[:, :rank]
    elif need_s1:
        grad_hidden_s1 = torch.mm(grad_y, B[:rank].T).mul_(scale)
    if need_s1:
        grad_s1 = torch.mm(x.T, grad_hidden_s1)
    if need_s2:
        if hidden.dim() != 2:
            raise RuntimeError("sketched_linear: S2's gradient needs the hidden x @ A saved by the forward pass")
        grad_s2 = torch.mm(hidden[:, rank:].T, grad_y).mul_(scale)
    if need_bias:
        grad_bias = grad_y.sum(0)
    return grad_x, grad_s1, grad_s2, grad_bias
