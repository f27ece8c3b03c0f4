"""Wall-clock cost of a model's forward (or forward+backward) on real inputs, measured honestly.

Lightning's step timers do not synchronise the device and include logging, and
``torch.utils.benchmark.Timer`` defaults to one thread; either can rank a slower layer as faster.
Here every measurement is synchronised, warmed up, repeated and summarised by its median, on the
trainer's device and under its precision, with the thread count recorded next to the result.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import tree_flatten, tree_map

#: ``(args, kwargs)`` of one call of the model's ``forward``.
Call = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Timing:
    """Median seconds of one step over all captured inputs, and how it was measured."""

    median_s: float
    spread_s: float  # median absolute deviation of the repeats
    repeats: int
    threads: int
    device: str
    precision: str
    mode: str  # "inference" or "train"


@contextmanager
def capture_forward_inputs(model: nn.Module, limit: int) -> Iterator[list[Call]]:
    """Record the inputs of the first ``limit`` calls of ``model.forward`` (e.g. during validation).

    The recorded tensors are copied outside inference mode so that they can also be used for a
    timed backward pass later.
    """
    raw: list[Call] = []

    def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Under DDP, Lightning runs ``validation_step(batch, idx)`` *through* ``forward`` (it swaps
        # ``module.forward`` for the step while the wrapper calls it); only real forwards count.
        real_forward = getattr(module.forward, "__func__", None) is type(module).forward
        if real_forward and len(raw) < limit:
            raw.append(tree_map(_detach, (args, dict(kwargs))))

    handle = model.register_forward_pre_hook(hook, with_kwargs=True)
    captured: list[Call] = []
    try:
        yield captured
    finally:
        handle.remove()
        with torch.inference_mode(False):
            captured.extend(tree_map(_clone, call) for call in raw)


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


def _clone(value: Any) -> Any:
    return value.clone() if isinstance(value, torch.Tensor) else value


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so that the clock measures the work, not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
    elif device.type == "xpu":
        torch.xpu.synchronize(device)


class StepTimer:
    """Times ``model(*args, **kwargs)`` over a fixed list of captured calls.

    Args:
        calls: the captured forward inputs (already on ``device``).
        device: where the model runs (for synchronisation).
        precision_context: factory of the context the trainer runs forward in (autocast, ...).
        precision: the trainer's precision, recorded with each result.
        backward: also run a backward pass (of the sum of the floating outputs) per call.
        warmup: untimed steps first (allocator, caches, lazy initialisation).
        repeats: timed steps; the median is reported.
    """

    def __init__(self, calls: list[Call], device: torch.device,
                 precision_context: Callable[[], AbstractContextManager[Any]] = nullcontext, precision: str = "32-true",
                 backward: bool = False, warmup: int = 3, repeats: int = 15) -> None:
        if not calls:
            raise ValueError("no captured forward inputs to time: the LightningModule's forward was never called "
                             "during validation (call self(...) in validation_step, or use objective='size')")
        self.calls, self.device, self.precision = calls, device, precision
        self.precision_context, self.backward = precision_context, backward
        self.warmup, self.repeats = warmup, repeats

    def time(self, model: nn.Module, repeats: int = 0) -> Timing:
        """Measure ``model``; its train/eval flags and gradients are left as they were."""
        repeats = repeats or self.repeats
        modes = [(m, m.training) for m in model.modules()]
        grads = [(p, p.grad) for p in model.parameters()]
        model.train(self.backward)
        try:
            for _ in range(self.warmup):
                self._step(model)
            samples = []
            for _ in range(repeats):
                synchronize(self.device)
                start = time.perf_counter()
                self._step(model)
                synchronize(self.device)
                samples.append(time.perf_counter() - start)
        finally:
            for module, training in modes:
                module.training = training
            for param, grad in grads:
                param.grad = grad
        median = statistics.median(samples)
        spread = statistics.median(abs(s - median) for s in samples)
        return Timing(median, spread, repeats, torch.get_num_threads(), str(self.device), self.precision,
                      "train" if self.backward else "inference")

    def _step(self, model: nn.Module) -> None:
        with torch.enable_grad() if self.backward else torch.no_grad():
            for args, kwargs in self.calls:
                with self.precision_context():
                    output = model(*args, **kwargs)
                if self.backward:
                    leaves = [t for t in tree_flatten(output)[0]
                              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.requires_grad]
                    if leaves:
                        sum(t.float().sum() for t in leaves).backward()
                        model.zero_grad(set_to_none=True)
