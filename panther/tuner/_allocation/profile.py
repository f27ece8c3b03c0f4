"""What each candidate replacement of each layer costs: output error, stored bytes, optionally time.

The allocation needs every option's damage and price without evaluating the model per option:

- **error**: the relative output error ``‖ŷ − y‖ / ‖y − b‖`` of the layer alone (``b``: its
  bias). Options whose kind can predict it from the weights
  (:meth:`panther.kinds.LayerKind.predicted_error`, e.g. a rank's error from the layer's spectrum)
  are not run at all; every other option (e.g. int8) is measured on the layer's real inputs,
  caught by a forward hook during one pass of the calibration data through the dense model.
  Without calibration data, linear layers are measured on isotropic Gaussian rows, the inputs the
  plain-SVD prediction assumes.

  Only a uniform sample of at most :data:`SAMPLE_ROWS` rows per layer is kept (a reservoir over all
  batches), and the candidates run on it once, after the pass, in the activations' own precision.
  Each sampled row keeps the company of its batch's extreme rows (those holding the batch's
  minimum and maximum, excluded from the sums), so a dynamically quantized candidate sees the
  activation range, hence the scale, that the whole batch gives it in the model. The dense output
  of the sampled rows is the one the hook saw: computed once, shared by every option.

  Why 512 rows: the estimate ``ê² = Σ dᵢ / Σ sᵢ`` (per-row squared error and signal) is a ratio
  estimator whose relative standard error is about ``(CV_d + CV_s)/√n`` (delta method; ``CV``:
  the per-row coefficient of variation). Rows whose error and signal vary by as much as their own
  size (CV ≤ 1) give ``ê`` to within ``½·2/√512 ≈ 4.4 %`` (one standard error), finer than the
  ≥ 15 % steps between neighbouring ranks of the grid and well inside the per-role sensitivity the
  allocation measures anyway; the options of one layer share the rows, so their order is surer still.
  Measured (``bench/profile_rows.py``: MiniLM's 36 layers, 4 int8 options, 20k calibration rows
  each): the errors of 512 sampled rows are within 1.1 % of every row's (median; 7.4 % at the 90th
  percentile, 21 % at most); 256 rows keep the median but reach 27 % at most.
- **bytes**: parameters and buffers of the built candidate (:func:`panther.tuner.layer_bytes`).
- **seconds** (when asked): the fastest of several calls of each candidate and of the dense layer,
  called in turn (:func:`_fastest_seconds`), on the layer's largest calibration input, where fixed
  per-call costs (e.g. quantizing the activations) weigh least. Layers of one type and shape on
  inputs of one shape share the times: each distinct candidate is timed once however many layers
  it stands for (BERT-base: 3 shapes for 72 layers).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from panther.nn.calibration import layer_input_rows
from panther.nn.dense import is_linear_like, linear_dims
from panther.tuner._layers import layer_bytes

#: Rows of the Gaussian inputs that stand in for calibration data.
_GAUSSIAN_ROWS = 512
#: Most output rows per layer the errors are measured on (see the module docstring for why 512).
SAMPLE_ROWS = 512
#: Rounds of timed calls (each candidate and the dense layer once per round); the fastest is kept.
_TIMED_ROUNDS = 7

Progress = Callable[[str], None]
_DENSE = object()  # the dense layer's key among the modules timed together


@dataclass
class LayerProfile:
    """One layer's candidates, keyed by the caller: error, bytes and (optionally) seconds of each."""

    dense_bytes: int
    reached: bool = True  # whether any calibration batch ran the layer (else ``error`` stays empty)
    dense_seconds: float | None = None
    error: dict[Hashable, float] = field(default_factory=dict)
    bytes: dict[Hashable, int] = field(default_factory=dict)
    seconds: dict[Hashable, float] = field(default_factory=dict)


class _RowSample:
    """A uniform sample of at most :data:`SAMPLE_ROWS` output rows of one layer over every batch.

    The units sampled are rows for a linear layer and items along dim 0 (images) otherwise, as
    many as make about :data:`SAMPLE_ROWS` output rows. Reservoir sampling by random keys: every
    unit gets a uniform key and the smallest keys are kept, whatever the number of batches. Each
    batch's kept units travel with its extreme units (see the module docstring).
    """

    def __init__(self, layer: nn.Module, generator: torch.Generator) -> None:
        self.linear, self.generator = is_linear_like(layer), generator
        self.limit: int | None = SAMPLE_ROWS if self.linear else None
        self.batches: list[dict[str, torch.Tensor]] = []  # per batch: kept x, y, keys; its extremes

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.linear:
            x, y = x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])
        elif x.dim() == 3:  # an unbatched image
            x, y = x.unsqueeze(0), y.unsqueeze(0)
        if x.shape[0] == 0:  # an empty batch adds no rows
            return
        if self.limit is None:  # output rows per item: its positions (all but the channel dim)
            self.limit = -(-SAMPLE_ROWS // max(1, y[0].numel() // y.shape[1]))
        flat = x.reshape(x.shape[0], -1)
        extremes = torch.stack([flat.amin(dim=1).argmin(), flat.amax(dim=1).argmax()]).unique()
        keys = torch.rand(x.shape[0], generator=self.generator)
        every = torch.cat([keys, *(b["keys"] for b in self.batches)])
        cut = every.kthvalue(self.limit).values if every.numel() > self.limit else every.max()
        for b in self.batches:
            kept = (b["keys"] <= cut).nonzero().squeeze(1)
            if kept.numel() < b["keys"].numel():
                b["x"], b["y"], b["keys"] = (b[k].index_select(0, kept) for k in ("x", "y", "keys"))
        self.batches = [b for b in self.batches if b["keys"].numel()]
        kept = (keys <= cut).nonzero().squeeze(1)
        if kept.numel():  # gathers copy: no whole batch's activations are held
            self.batches.append({"x": x.index_select(0, kept), "y": y.index_select(0, kept),
                                 "keys": keys.index_select(0, kept), "extremes": x.index_select(0, extremes)})

    def errors(self, dense: nn.Module, candidates: Mapping[Hashable, nn.Module]) -> dict[Hashable, float]:
        """``‖ŷ − y‖ / ‖y − b‖`` of each candidate on the sample (float64 only for the per-row sums)."""
        squared = dict.fromkeys(candidates, 0.0)
        reference = 0.0
        for b in self.batches:
            kept, y = b["x"].shape[0], b["y"]
            x = torch.cat([b["x"], b["extremes"]])  # the extremes: the batch's activation range
            # Without its bias: what the weight contributes (a zero input gives the bias alone,
            # broadcast as the layer broadcasts it: per channel for a convolution).
            reference += _sum_of_squares(y - dense.forward(torch.zeros_like(b["x"][:1])))
            for key, candidate in candidates.items():
                squared[key] += _sum_of_squares(candidate(x)[:kept] - y)
        if reference <= 0:
            return {key: 0.0 if value == 0 else float("inf") for key, value in squared.items()}
        return {key: (value / reference) ** 0.5 for key, value in squared.items()}


def _sum_of_squares(diff: torch.Tensor) -> float:
    """``Σ diff²``, per row in the tensor's precision, summed over rows in float64."""
    return float(diff.reshape(diff.shape[0], -1).square().sum(dim=1).double().sum())


def _fastest_seconds(modules: Mapping[Hashable, nn.Module], x: torch.Tensor) -> dict[Hashable, float]:
    """Each module's fastest of :data:`_TIMED_ROUNDS` calls on ``x``, all modules called in turn in
    every round (after one warm-up call each: packing, caches). On a shared machine a change of load
    then falls on every module alike, and the fastest call is the one least slowed by it: the
    options' prices relative to dense hold from run to run, which their medians timed one module
    after another did not (15-25 % apart between runs on a loaded 2-core machine)."""
    for module in modules.values():
        _call_seconds(module, x)
    fastest = dict.fromkeys(modules, math.inf)
    for _ in range(_TIMED_ROUNDS):
        for key, module in modules.items():
            fastest[key] = min(fastest[key], _call_seconds(module, x))
    return fastest


def _call_seconds(module: nn.Module, x: torch.Tensor) -> float:
    """Wall time of one ``module(x)``; on a GPU the call is waited for (launches are asynchronous)."""
    synchronize = torch.cuda.synchronize if x.is_cuda else _no_wait
    synchronize()
    started = time.perf_counter()
    module(x)
    synchronize()
    return time.perf_counter() - started


def _no_wait() -> None:
    """CPU calls are synchronous: nothing to wait for."""


AutocastState = tuple[str, torch.dtype] | None


def _autocast_state(x: torch.Tensor) -> AutocastState:
    """The mixed-precision context a layer ran in (``None``: none): under ``torch.autocast`` (e.g.
    Lightning's ``precision="bf16-mixed"``) its recorded inputs are in the low precision while its
    weights are not, so its candidates must be run and timed in the same context."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return None
    return device_type, torch.get_autocast_dtype(device_type)


def _in_context(state: AutocastState) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if state is None else torch.autocast(state[0], dtype=state[1])


def _timing_key(layer: nn.Module, x: torch.Tensor) -> tuple:
    """What a layer's (and its candidates') time depends on: its type, shape and its input's shape."""
    return type(layer), layer.extra_repr(), tuple(x.shape), x.dtype, x.device


class LayerRecorder:
    """What a pass of calibration batches through the dense model shows of each layer: a uniform
    row sample with its dense outputs, its largest input and the autocast context it ran in.

    Attach it (:meth:`attached`) to the pass that collects the input covariances and the data goes
    through the model once; :meth:`run` makes a pass of its own, :meth:`gaussian` stands in
    Gaussian rows where no calibration data was given.
    """

    def __init__(self, dense: Mapping[str, nn.Module]) -> None:
        self.dense = dict(dense)
        generator = torch.Generator().manual_seed(0)
        self.samples = {name: _RowSample(layer, generator) for name, layer in self.dense.items()}
        self.largest_input: dict[str, torch.Tensor] = {}  # per layer: its input with the most elements
        self.autocast: dict[str, AutocastState] = {}  # per layer: the mixed-precision context it ran in

    def observe(self, name: str, x: torch.Tensor, y: torch.Tensor) -> None:
        if x.is_nested:  # the sequences' rows (a nested tensor's sums and broadcasts are limited)
            x = layer_input_rows(self.dense[name], x)
            y = self.dense[name].forward(x)
        if name not in self.largest_input or x.numel() > self.largest_input[name].numel():
            self.largest_input[name] = x
            self.autocast[name] = _autocast_state(x)
        self.samples[name].add(x.detach(), y.detach())

    @property
    def observed(self) -> bool:
        """Whether any layer has been seen (a pass this recorder was attached to did run)."""
        return bool(self.largest_input)

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        """Record every call of the dense layers inside the block (the hooks go even on errors)."""
        handles = [layer.register_forward_hook(lambda mod, args, out, name=name: self.observe(name, args[0], out))
                   for name, layer in self.dense.items()]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    @torch.no_grad()
    def run(self, model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any]) -> None:
        """A pass of its own over ``batches`` (``model`` holding the dense layers), in eval mode;
        every submodule's train/eval mode is restored afterwards."""
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            with self.attached():
                for batch in batches:
                    forward(model, batch)
        finally:
            for module, training in modes:
                module.training = training

    @torch.no_grad()
    def gaussian(self) -> None:
        """Isotropic Gaussian rows for every (linear) layer: the inputs the plain-SVD prediction assumes."""
        for name, layer in self.dense.items():
            if not is_linear_like(layer):
                raise ValueError(f"{name}: {type(layer).__name__} needs calibration data to be profiled")
            generator = torch.Generator().manual_seed(0)
            x = torch.randn(_GAUSSIAN_ROWS, linear_dims(layer)[0], generator=generator)
            x = x.to(device=layer.weight.device, dtype=layer.weight.dtype)
            self.observe(name, x, layer(x))


@torch.no_grad()
def profile_layers(
    model: nn.Module,
    candidates: Mapping[str, Mapping[Hashable, nn.Module]],
    predicted: Mapping[str, Mapping[Hashable, float]],
    batches: Iterable[Any] | None,
    forward: Callable[[nn.Module, Any], Any],
    time_candidates: bool = False,
    progress: Progress | None = None,
    recorded: LayerRecorder | None = None,
) -> dict[str, LayerProfile]:
    """Profile ``candidates[name][key]`` of each dense layer ``model.get_submodule(name)``.

    ``predicted[name][key]`` holds the errors known without running (those candidates are only
    weighed and timed). ``batches`` are calibration batches run by ``forward(model, batch)``, or
    ``None`` for Gaussian inputs (linear layers only); ``recorded``: a recorder that already saw
    the pass (then ``batches`` are not run again). The model must hold its dense layers; every
    submodule's train/eval mode is restored afterwards and the hooks are removed even on errors.
    A layer no batch runs is returned with ``reached=False`` and no errors. ``progress(line)``
    hears which layer is measured, how many are left and the time so far.
    """
    started = time.perf_counter()
    dense = {name: model.get_submodule(name) for name in candidates}
    profiles = {name: LayerProfile(dense_bytes=layer_bytes(layer)) for name, layer in dense.items()}
    for name, options in candidates.items():
        for key, module in options.items():
            module.eval()
            profiles[name].bytes[key] = layer_bytes(module)
    if recorded is None:
        recorded = LayerRecorder(dense)
        if batches is None:
            recorded.gaussian()
        else:
            if progress is not None:
                progress(f"profiling: one calibration pass over {len(dense)} layers")
            recorded.run(model, batches, forward)
    timings: dict[tuple, tuple[float, dict[Hashable, float]]] = {}  # timing key -> dense and candidate seconds
    for index, (name, profile) in enumerate(profiles.items()):
        profile.reached = name in recorded.largest_input
        if not profile.reached:  # never called: nothing known about its candidates
            continue
        if progress is not None:
            progress(f"profiling {name} ({index + 1}/{len(profiles)}, {len(profiles) - index - 1} left, "
                     f"{time.perf_counter() - started:.0f} s so far)")
        to_measure = {k: m for k, m in candidates[name].items() if k not in predicted.get(name, {})}
        profile.error.update(predicted.get(name, {}))
        autocast = recorded.autocast.get(name)
        with _in_context(autocast):
            profile.error.update(recorded.samples.pop(name).errors(dense[name], to_measure))
            if time_candidates:
                x = recorded.largest_input[name]
                key = (*_timing_key(dense[name], x), autocast)
                if key not in timings or not set(candidates[name]) <= set(timings[key][1]):
                    dense_seconds, known = timings.get(key, (None, {}))
                    fresh = _fastest_seconds({_DENSE: dense[name]} | {k: m for k, m in candidates[name].items()
                                                                      if k not in known}, x)
                    timed_dense = fresh.pop(_DENSE)  # timed beside the new options, kept if the first
                    timings[key] = (timed_dense if dense_seconds is None else dense_seconds, known | fresh)
                profile.dense_seconds = timings[key][0]
                profile.seconds = {k: timings[key][1][k] for k in candidates[name]}
    return profiles
