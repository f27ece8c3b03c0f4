"""A CPU stand-in for the compiled CUDA extension and the device it runs on, for the benches' dry-runs.

``--device cpu --dry-run`` runs every line of a GPU bench's Python on the CPU in CI, so a wrong
argument or a typo is found here and not in the few minutes a lent GPU allows. Only the kernels and the
device queries are stood in for: the stand-in has the extension's three functions with their
signatures, computing with the PyTorch path (the one the kernels are checked against), and an H200's
multiprocessor count.
"""

from __future__ import annotations

from torch import Tensor

from panther.ops._custom_ops import _backward_default, _forward_default

#: What an H200 (and H100 SXM) reports as ``multi_processor_count``.
H200_SM_COUNT = 132
#: The fused forward's limits as ``sketch_binding.cpp`` reports them: largest 2r and rows per block.
FUSED_MAX_RANK, FUSED_ROWS_PER_BLOCK = 64, 32


class StandInExtension:
    """``forward``, ``backward`` and ``fused_forward_limits`` of ``panther_sketch_cuda``, in PyTorch."""

    @staticmethod
    def forward(x: Tensor, A: Tensor, B: Tensor, bias: Tensor | None, scale: float,
                save_hidden: bool) -> tuple[Tensor, Tensor]:
        return _forward_default(x, A, A, A, B, bias, scale, save_hidden)  # S1s/S2s only route gradients

    @staticmethod
    def backward(grad_y: Tensor, x: Tensor, hidden: Tensor, A: Tensor, B: Tensor, scale: float, rank: int,
                 need_x: bool, need_s1: bool, need_s2: bool, need_bias: bool) -> tuple[Tensor, ...]:
        return _backward_default(grad_y, x, hidden, A, B, scale, rank, need_x, need_s1, need_s2, need_bias)

    @staticmethod
    def fused_forward_limits(x: Tensor) -> tuple[int, int]:
        return FUSED_MAX_RANK, FUSED_ROWS_PER_BLOCK
