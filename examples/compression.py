"""Model-agnostic helpers the examples and benchmarks share: sketch chosen layers at given ranks,
count what the layers store, and time CPU inference the same way everywhere."""

from __future__ import annotations

import copy
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from panther.plans import apply_plan


def sketched_copy(model: nn.Module, ranks: Mapping[str, int], init: str,
                  input_covs: Mapping[str, torch.Tensor] | None = None, seed: int = 0) -> nn.Module:
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


def speedup(dense_forward: Callable[[], object], forward: Callable[[], object], threads: int,
            pairs: int = 20, min_pair_s: float = 0.2) -> tuple[float, float, float]:
    """``(dense_s, model_s, dense_s / model_s)`` from back-to-back pairs (ABBA order), medians.

    On a shared CPU the speed of the machine drifts by more than the effect being measured;
    timing the two models right after each other and taking the median of the per-pair ratios
    cancels the drift (a dense-vs-dense run of this measures within a few percent of 1.0, where
    separate medians were off by up to 15 %). Each side of a pair repeats its forward until it
    has run for ``min_pair_s``, so short forwards are not dominated by clock resolution.
    """
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _paired_speedup(dense_forward, forward, pairs, min_pair_s)
    finally:
        torch.set_num_threads(previous_threads)


def _paired_speedup(dense_forward: Callable[[], object], forward: Callable[[], object], pairs: int,
                    min_pair_s: float) -> tuple[float, float, float]:
    with torch.no_grad():
        dense_forward(), forward()  # warm-up: sketched layers pack their factors once
        start = time.perf_counter()
        forward()
        repeats = max(1, math.ceil(min_pair_s / max(time.perf_counter() - start, 1e-9)))

        def seconds(run: Callable[[], object]) -> float:
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            return (time.perf_counter() - start) / repeats

        dense_times, model_times, ratios = [], [], []
        for i in range(pairs):
            if i % 2:
                model_s, dense_s = seconds(forward), seconds(dense_forward)
            else:
                dense_s, model_s = seconds(dense_forward), seconds(forward)
            dense_times.append(dense_s)
            model_times.append(model_s)
            ratios.append(dense_s / model_s)
    return statistics.median(dense_times), statistics.median(model_times), statistics.median(ratios)
