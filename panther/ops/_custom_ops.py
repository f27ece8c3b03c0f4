"""``panther::sketched_linear_forward`` / ``panther::sketched_linear_backward`` torch custom ops.

Proper ops (schema, fake kernels, autograd formula) so autograd, ``torch.compile`` and
``torch.export`` see one node per layer. Every device runs the PyTorch math by default; CUDA
tensors run the fused kernels when opted in (built on first use, see :mod:`panther.ops._cuda_ext`),
the forward only where its grid fills the device (:mod:`panther.ops._dispatch`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from panther.ops import _dispatch
from panther.ops._cuda_ext import cuda_extension
from panther.ops._torch_path import torch_backward, torch_forward

KERNEL_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


# The default kernels are named functions (not decorated in place) so the CUDA kernels below can fall
# back to them, and tests/cuda_emulation can route CPU tensors through the CUDA kernels and back.
def _forward_default(x: Tensor, S1s: Tensor, S2s: Tensor, A: Tensor, B: Tensor, bias: Tensor | None,
                     scale: float, save_hidden: bool) -> tuple[Tensor, Tensor]:
    """``(scale · (x @ A) @ B + bias, x @ A or empty)``; ``S1s``/``S2s`` only route gradients."""
    y, hidden = torch_forward(x, A, B, bias, scale)
    return y, (hidden if save_hidden else x.new_empty(0))


sketched_linear_forward = torch.library.custom_op("panther::sketched_linear_forward", mutates_args=())(
    _forward_default)


def _fused_forward_pays(ext: Any, x: Tensor, A: Tensor) -> bool:
    """The dispatch rule with the kernel's own limits (asked of the extension, so never out of sync)."""
    max_rank, rows_per_block = ext.fused_forward_limits(x)
    return _dispatch.use_fused_forward(x.shape[0], A.shape[1], max_rank, rows_per_block,
                                       _dispatch.multiprocessor_count(x.device))


@sketched_linear_forward.register_kernel("cuda")
def _forward_cuda(x: Tensor, S1s: Tensor, S2s: Tensor, A: Tensor, B: Tensor, bias: Tensor | None,
                  scale: float, save_hidden: bool) -> tuple[Tensor, Tensor]:
    """The fused kernel where it fills the device (see :mod:`panther.ops._dispatch`), else cuBLAS."""
    ext = cuda_extension()
    if ext is None or x.dtype not in KERNEL_DTYPES or not _fused_forward_pays(ext, x, A):
        return _forward_default(x, S1s, S2s, A, B, bias, scale, save_hidden)
    return tuple(ext.forward(x, A, B, bias, scale, save_hidden))  # type: ignore[return-value]


@sketched_linear_forward.register_fake
def _forward_fake(x: Tensor, S1s: Tensor, S2s: Tensor, A: Tensor, B: Tensor, bias: Tensor | None,
                  scale: float, save_hidden: bool) -> tuple[Tensor, Tensor]:
    hidden_shape = (x.shape[0], A.shape[1]) if save_hidden else (0,)
    return x.new_empty((x.shape[0], B.shape[1])), x.new_empty(hidden_shape)


def _backward_default(grad_y: Tensor, x: Tensor, hidden: Tensor, A: Tensor, B: Tensor, scale: float,
                      rank: int, need_x: bool, need_s1: bool, need_s2: bool,
                      need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients for ``x``, ``S1`` (``d_in x r``), ``S2`` (``r x d_out``), bias; unrequested ones are empty."""
    grads = torch_backward(grad_y.contiguous(), x, hidden, A, B, scale, rank, need_x, need_s1, need_s2, need_bias)
    return tuple(x.new_empty(0) if g is None else g for g in grads)  # type: ignore[return-value]


sketched_linear_backward = torch.library.custom_op("panther::sketched_linear_backward", mutates_args=())(
    _backward_default)


@sketched_linear_backward.register_kernel("cuda")
def _backward_cuda(grad_y: Tensor, x: Tensor, hidden: Tensor, A: Tensor, B: Tensor, scale: float, rank: int,
                   need_x: bool, need_s1: bool, need_s2: bool, need_bias: bool
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    ext = cuda_extension()
    if ext is None or x.dtype not in KERNEL_DTYPES:
        return _backward_default(grad_y, x, hidden, A, B, scale, rank, need_x, need_s1, need_s2, need_bias)
    return tuple(ext.backward(grad_y, x, hidden, A, B, scale, rank, need_x, need_s1, need_s2, need_bias))  # type: ignore[return-value]


@sketched_linear_backward.register_fake
def _backward_fake(grad_y: Tensor, x: Tensor, hidden: Tensor, A: Tensor, B: Tensor, scale: float, rank: int,
                   need_x: bool, need_s1: bool, need_s2: bool,
                   need_bias: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    def maybe(needed: bool, *shape: Any) -> Tensor:
        return x.new_empty(shape if needed else (0,))

    return (maybe(need_x, *x.shape), maybe(need_s1, x.shape[1], rank), maybe(need_s2, rank, B.shape[1]),
            maybe(need_bias, B.shape[1]))


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, Tensor]) -> None:
    x, S1s, _S2s, A, B, bias, scale, _save_hidden = inputs
    ctx.save_for_backward(x, output[1], A, B)
    ctx.scale = scale
    ctx.term_shape = tuple(S1s.shape)  # (T, d_in, k)
    ctx.has_bias = bias is not None


def _backward(ctx: Any, grad_y: Tensor, _grad_hidden: Tensor | None) -> tuple[Tensor | None, ...]:
    x, hidden, A, B = ctx.saved_tensors
    T, d_in, k = ctx.term_shape
    need_x, need_s1, need_s2, _, _, need_bias, _, _ = ctx.needs_input_grad
    need_bias = need_bias and ctx.has_bias
    grad_x, grad_s1, grad_s2, grad_bias = torch.ops.panther.sketched_linear_backward(
        grad_y, x, hidden, A, B, ctx.scale, T * k, need_x, need_s1, need_s2, need_bias)
    return (grad_x if need_x else None,
            grad_s1.view(d_in, T, k).transpose(0, 1) if need_s1 else None,
            grad_s2.view(T, k, -1) if need_s2 else None,
            None, None,
            grad_bias if need_bias else None,
            None, None)


sketched_linear_forward.register_autograd(_backward, setup_context=_setup_context)
