"""What each candidate replacement of each layer costs: output error, stored bytes, optionally time.

The allocation needs every option's damage and price without evaluating the model per option:

- **error**: the relative output error ``‖ŷ − y‖ / ‖y − b‖`` of the layer alone (``b``: its
  bias). Options whose kind can predict it from the weights
  (:meth:`panther.kinds.LayerKind.predicted_error`, e.g. a rank's error from the layer's spectrum)
  are not run at all; every other option (e.g. int8) is measured in one pass of the calibration
  data through the dense model, with a forward hook on each layer feeding that layer's real input
  to its candidates. Without calibration data, linear layers are measured on isotropic Gaussian
  rows, the inputs the plain-SVD prediction assumes.
- **bytes**: parameters and buffers of the built candidate (:func:`panther.tuner.layer_bytes`).
- **seconds** (when asked): the median time of each candidate and of the dense layer on the
  layer's largest calibration input, where fixed per-call costs (e.g. quantizing the activations)
  weigh least.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from panther.nn.calibration import layer_input_rows
from panther.nn.dense import is_linear_like, linear_dims
from panther.tuner._layers import layer_bytes

#: Rows of the Gaussian inputs that stand in for calibration data.
_GAUSSIAN_ROWS = 512
#: Timed calls per candidate (after one warm-up call); the median is kept.
_TIMED_CALLS = 5


@dataclass
class LayerProfile:
    """One layer's candidates, keyed by the caller: error, bytes and (optionally) seconds of each."""

    dense_bytes: int
    reached: bool = True  # whether any calibration batch ran the layer (else ``error`` stays empty)
    dense_seconds: float | None = None
    error: dict[Hashable, float] = field(default_factory=dict)
    bytes: dict[Hashable, int] = field(default_factory=dict)
    seconds: dict[Hashable, float] = field(default_factory=dict)


class _ErrorSums:
    """Streaming ``Σ‖ŷ − y‖²`` per candidate and ``Σ‖y − b‖²`` of one layer."""

    def __init__(self, keys: Iterable[Hashable]) -> None:
        self.squared = dict.fromkeys(keys, 0.0)
        self.reference = 0.0

    def add(self, dense: nn.Module, candidates: Mapping[Hashable, nn.Module], x: torch.Tensor,
            y: torch.Tensor) -> None:
        # The output without its bias: what the layer's weight contributes (a zero input gives
        # the bias alone, broadcast as the layer broadcasts it: per channel for a convolution).
        signal = y - dense.forward(torch.zeros_like(x))  # .forward: not through the hook this runs in
        self.reference += float(signal.double().square().sum())
        for key, candidate in candidates.items():
            self.squared[key] += float((candidate(x).double() - y.double()).square().sum())

    def relative(self) -> dict[Hashable, float]:
        if self.reference <= 0:
            return {key: 0.0 if value == 0 else float("inf") for key, value in self.squared.items()}
        return {key: (value / self.reference) ** 0.5 for key, value in self.squared.items()}


def _median_seconds(module: nn.Module, x: torch.Tensor) -> float:
    module(x)  # warm-up: packing, caches
    times = []
    for _ in range(_TIMED_CALLS):
        started = time.perf_counter()
        module(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


@torch.no_grad()
def profile_layers(
    model: nn.Module,
    candidates: Mapping[str, Mapping[Hashable, nn.Module]],
    predicted: Mapping[str, Mapping[Hashable, float]],
    batches: Iterable[Any] | None,
    forward: Callable[[nn.Module, Any], Any],
    time_candidates: bool = False,
) -> dict[str, LayerProfile]:
    """Profile ``candidates[name][key]`` of each dense layer ``model.get_submodule(name)``.

    ``predicted[name][key]`` holds the errors known without running (those candidates are only
    weighed and timed). ``batches`` are calibration batches run by ``forward(model, batch)``, or
    ``None`` for Gaussian inputs (linear layers only). The model must hold its dense layers; every
    submodule's train/eval mode is restored afterwards and the hooks are removed even on errors.
    A layer no batch runs is returned with ``reached=False`` and no errors.
    """
    dense = {name: model.get_submodule(name) for name in candidates}
    profiles = {name: LayerProfile(dense_bytes=layer_bytes(layer)) for name, layer in dense.items()}
    for name, options in candidates.items():
        for key, module in options.items():
            module.eval()
            profiles[name].bytes[key] = layer_bytes(module)
    to_measure = {name: {k: m for k, m in options.items() if k not in predicted.get(name, {})}
                  for name, options in candidates.items()}
    sums = {name: _ErrorSums(options) for name, options in to_measure.items()}
    largest_input: dict[str, torch.Tensor] = {}  # per layer: its input with the most elements

    def observe(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.is_nested:  # the sequences' rows (a nested tensor's sums and broadcasts are limited)
            x = layer_input_rows(dense[name], x)
            y = dense[name].forward(x)
        if name not in largest_input or x.numel() > largest_input[name].numel():
            largest_input[name] = x
        sums[name].add(dense[name], to_measure[name], x, y)

    if batches is None:
        for name, layer in dense.items():
            if not is_linear_like(layer):
                raise ValueError(f"{name}: {type(layer).__name__} needs calibration data to be profiled")
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(_GAUSSIAN_ROWS, linear_dims(layer)[0], generator=generator)
            x = x.to(device=layer.weight.device, dtype=layer.weight.dtype)
            observe(name, x, layer(x))
    else:
        _run_hooked(model, dense, batches, forward, observe)
    for name, profile in profiles.items():
        profile.reached = name in largest_input
        if not profile.reached:  # never called: nothing known about its candidates
            continue
        profile.error.update(predicted.get(name, {}))
        profile.error.update(sums[name].relative())
        if time_candidates and name in largest_input:
            profile.dense_seconds = _median_seconds(dense[name], largest_input[name])
            profile.seconds = {key: _median_seconds(module, largest_input[name])
                               for key, module in candidates[name].items()}
    return profiles


def _run_hooked(model: nn.Module, dense: Mapping[str, nn.Module], batches: Iterable[Any],
                forward: Callable[[nn.Module, Any], Any],
                observe: Callable[[str, torch.Tensor, torch.Tensor], None]) -> None:
    handles = [layer.register_forward_hook(lambda mod, args, out, name=name: observe(name, args[0], out))
               for name, layer in dense.items()]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for batch in batches:
            forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:
            module.training = training
