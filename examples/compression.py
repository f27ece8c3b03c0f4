"""Model-agnostic helpers the examples and benchmarks share: sketch chosen layers at given ranks,
count what the layers store, and time CPU inference the same way everywhere."""

from __future__ import annotations

import copy
from typing import Callable, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from panther.nn.rebuild import apply_plan


def sketched_copy(model: nn.Module, ranks: Mapping[str, int], init: str,
                  input_covs: Optional[Mapping[str, torch.Tensor]] = None, seed: int = 0) -> nn.Module:
    """A copy of ``model`` whose layers ``ranks`` names are ``SKLinear`` of that rank (``num_terms=1``).

    The rank of an SKLinear is ``2 * num_terms * low_rank``, so ranks must be even.
    """
    odd = {name: rank for name, rank in ranks.items() if rank < 2 or rank % 2}
    if odd:
        raise ValueError(f"SKLinear ranks are 2 * low_rank: even ranks >= 2 only, got {odd}")
    plan = {name: {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": rank // 2, "init": init}}
            for name, rank in ranks.items()}
    torch.manual_seed(seed)  # "sketch" init draws random signs
    return apply_plan(copy.deepcopy(model), plan, input_covs=input_covs)


def stored_numbers(module: nn.Module) -> int:
    """Parameters plus buffers: what a layer stores and multiplies with (SKLinear's U's are buffers)."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def layer_ratio(dense: nn.Module, sketched: nn.Module, names: Sequence[str]) -> float:
    """Stored numbers of the layers ``names`` in ``sketched`` over the same layers in ``dense``."""
    total = sum(stored_numbers(dense.get_submodule(n)) for n in names)
    return sum(stored_numbers(sketched.get_submodule(n)) for n in names) / total


def model_ratio(dense: nn.Module, sketched: nn.Module) -> float:
    return stored_numbers(sketched) / stored_numbers(dense)


def rank_for_ratio(layer: nn.Linear, ratio: float) -> int:
    """Even rank whose SKLinear stores about ``ratio`` of ``layer``'s weights."""
    per_rank = layer.in_features + layer.out_features
    return max(2, 2 * round(ratio * layer.in_features * layer.out_features / per_rank / 2))


def median_latency(forward: Callable[[], object], threads: int, min_run_time: float = 1.0) -> float:
    """Median seconds of ``forward()`` on ``threads`` CPU threads (torch.utils.benchmark, after a warm-up)."""
    from torch.utils import benchmark

    with torch.no_grad():
        forward()  # warm-up: sketched layers pack their factors once
        timer = benchmark.Timer(stmt="forward()", globals={"forward": forward}, num_threads=threads)
        return timer.blocked_autorange(min_run_time=min_run_time).median


def speedup(dense_forward: Callable[[], object], forward: Callable[[], object], threads: int,
            rounds: int = 3, min_run_time: float = 0.5) -> Tuple[float, float, float]:
    """``(dense_s, model_s, dense_s / model_s)``: interleaved rounds, smallest median of each kept.

    Interleaving and keeping the least-disturbed round damp the noise of a shared CPU, which a
    single measurement of each would turn into a fake speed-up or slow-down.
    """
    dense_s, model_s = float("inf"), float("inf")
    for _ in range(rounds):
        dense_s = min(dense_s, median_latency(dense_forward, threads, min_run_time))
        model_s = min(model_s, median_latency(forward, threads, min_run_time))
    return dense_s, model_s, dense_s / model_s
