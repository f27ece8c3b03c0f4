"""Which CUDA path a forward call takes: the fused kernel only where its grid fills the device.

The fused forward launches one block per ``rows_per_block`` (32) rows of ``x``, so a batch of 32
runs on one SM of an H100's 132 while the cuBLAS two-GEMM path spreads any batch over the whole
device. Until a GPU has measured the crossover, the rule is the conservative one: fused only when
there are at least as many blocks as SMs and the rank fits the kernel's on-chip tile; otherwise the
two-GEMM path.
"""

from __future__ import annotations

import functools

import torch


def use_fused_forward(batch: int, rank2: int, max_rank: int, rows_per_block: int, sm_count: int) -> bool:
    """Whether ``ceil(batch / rows_per_block)`` blocks cover ``sm_count`` SMs and ``rank2 <= max_rank``."""
    blocks = -(-batch // rows_per_block)
    return rank2 <= max_rank and blocks >= sm_count


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def multiprocessor_count(device: torch.device) -> int:
    """SM count of a CUDA device (queried once per device)."""
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())
