"""Int8 stand-ins for a linear layer: ``Int8Linear`` (dense weight), ``SmoothInt8Linear`` (the same
with its inputs' outlier channels smoothed into the weight) and ``Int8SKLinear`` (a sketch's factors).

Both are inference layers built from a trained layer (``from_dense``). Their state is plain
tensors (int8 weights, float32 per-channel scales, float32 bias, all buffers) plus the usual
``_extra_state`` of hyperparameters, so a checkpoint loads with ``torch.load(weights_only=True)``
and :func:`panther.plans.rebuild_sketched_layers` rebuilds them like any sketched layer. The
int8 products themselves are :mod:`panther.nn.int8`'s.

Without gradients (``eval``, ``no_grad``) the int8 kernel runs. When the input needs a gradient (a
layer before this one is trained) the layer computes with its dequantized weights in float32 instead:
the kernel has no backward and would silently cut the gradient. The int8 weights stay frozen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from panther.nn.base import DerivedCache, SketchedModule, SketchedWeight, check_positive_int, per_sequence
from panther.nn.dense import is_linear_like, linear_dims, linear_weight
from panther.nn.int8 import dequantize, int8_available, int8_linear, pack, quantize_per_channel
from panther.nn.linear import SKLinear
from panther.nn.moments import InputMoment, channel_power, moment_shape

#: ``(int8 weight, scales, bias or None)`` of one int8 product ``x·Wᵀ + b``.
Factor = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]


class _Int8Chain(SketchedModule):
    """``y = x·W1ᵀ·W2ᵀ··· + b``: int8 factors applied in turn (the last one adds the bias)."""

    dense_type = nn.Linear
    in_features: int
    out_features: int

    def __init__(self) -> None:
        super().__init__()
        self._pack_cache = DerivedCache()  # the kernel's packed factors

    def _factors(self) -> Sequence[Factor]:
        raise NotImplementedError

    def _register_factor(self, prefix: str, rows: int, cols: int, device: Any) -> None:
        self.register_buffer(f"{prefix}_int8", torch.zeros(rows, cols, dtype=torch.int8, device=device))
        self.register_buffer(f"{prefix}_scale", torch.ones(rows, device=device))

    def _set_factor(self, prefix: str, weight: torch.Tensor) -> None:
        q, scale = quantize_per_channel(weight)
        getattr(self, f"{prefix}_int8").copy_(q)
        getattr(self, f"{prefix}_scale").copy_(scale)

    def _register_bias(self, bias: bool, device: Any) -> None:
        self.register_buffer("bias", torch.zeros(self.out_features, device=device) if bias else None)

    # -- forward ---------------------------------------------------------------------------
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_nested:
            return per_sequence(self, input)
        if input.shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__} expected last dimension {self.in_features}, "
                             f"got shape {tuple(input.shape)}")
        x = input.reshape(-1, self.in_features)
        if torch.is_grad_enabled() and input.requires_grad:
            for q, scale, bias in self._factors():
                x = F.linear(x.float(), dequantize(q, scale), None if bias is None else bias.float())
        else:
            if not int8_available(x.device):
                raise RuntimeError(f"{type(self).__name__} runs its int8 kernel on CPU only, got an input on "
                                   f"{x.device}; use to_dense() for other devices")
            for packed in self._packs():
                x = int8_linear(x, packed)
        return x.to(input.dtype).view(*input.shape[:-1], self.out_features)

    def _packs(self) -> list[Any]:
        """The kernel's packed factors (opaque, never pickled), cached while the buffers are unchanged."""
        tensors = tuple(t for factor in self._factors() for t in factor if t is not None)
        return self._pack_cache.get(tensors, lambda: [pack(*factor) for factor in self._factors()])

    # -- conversion and bookkeeping --------------------------------------------------------
    def to_dense(self) -> nn.Linear:
        """The ``nn.Linear`` with the dequantized weight (no activation quantization)."""
        weight = None
        for q, scale, _ in self._factors():
            factor = dequantize(q, scale)
            weight = factor if weight is None else factor @ weight
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, device=weight.device)
        with torch.no_grad():
            dense.weight.copy_(weight)
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    @property
    def weight(self) -> SketchedWeight:
        """Metadata of the ``(out_features, in_features)`` float weight for parents that read it."""
        return self._sketched_weight((self.out_features, self.in_features), self._factors()[0][1])


class Int8Linear(_Int8Chain):
    """``nn.Linear`` with an int8 weight (one scale per output channel); activations quantized per call.

    Plan params: ``{"low_rank": None, "quantize": True}`` (the full-rank weight, quantized).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self._register_factor("weight", out_features, in_features, device)
        self._register_bias(bias, device)

    @classmethod
    def from_dense(cls, layer: nn.Module) -> Int8Linear:
        """Quantize a (trained) ``nn.Linear`` or ``transformers`` ``Conv1D``."""
        if not is_linear_like(layer):
            raise TypeError(f"Int8Linear.from_dense expects an nn.Linear (or a transformers Conv1D), "
                            f"got {type(layer).__name__}")
        weight = linear_weight(layer)
        module = cls(*linear_dims(layer), bias=layer.bias is not None, device=weight.device)
        module._set_factor("weight", weight)
        if layer.bias is not None:
            module.bias.copy_(layer.bias.detach())
        return module

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Quantize a fresh ``nn.Linear`` initialisation (Kaiming-uniform weight, uniform bias)."""
        weight = torch.empty(self.out_features, self.in_features, device=self.weight_scale.device)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        self._set_factor("weight", weight)
        if self.bias is not None:
            bound = 1 / math.sqrt(self.in_features)
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    def _factors(self) -> Sequence[Factor]:
        return ((self.weight_int8, self.weight_scale, self.bias),)

    def hyperparameters(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def sketch_params_of(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        return {"low_rank": None, "quantize": True}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8SKLinear(_Int8Chain):
    r"""An :class:`~panther.nn.SKLinear` with both factors int8: ``y = (x·W1ᵀ)·W2ᵀ + b``.

    The sketch computes ``x·A·B/(2T)`` with ``A (d_in, r)``, ``B (r, d_out)``, ``r = 2·T·k``. Its
    columns have very different scales (an SVD init puts the singular values into half of ``A``'s
    columns and half of ``B``'s rows), so per-tensor scales round the small ones away. Here each
    column of ``A`` is normalised to unit length and its norm moved into ``B``'s row
    (``W1 = (A·D⁻¹)ᵀ``, ``W2 = (D·B/(2T))ᵀ``): the intermediate ``x·W1ᵀ``, quantized per tensor, has
    columns of comparable scale (as close as equalising them on real inputs, measured), and both
    factors get per-channel scales. ``bench/bench_int8.py`` measures the effect: the error the factors
    add drops two- to threefold against per-tensor scales.

    Plan params: those of the ``SKLinear`` plus ``"quantize": True``.
    """

    def __init__(self, in_features: int, out_features: int, num_terms: int, low_rank: int, bias: bool = True,
                 device: torch.device | str | None = None, *, init: str = "svd") -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.num_terms = check_positive_int("num_terms", num_terms)
        self.low_rank = check_positive_int("low_rank", low_rank)
        self.init = init
        rank = 2 * num_terms * low_rank
        self._register_factor("first", rank, in_features, device)
        self._register_factor("second", out_features, rank, device)
        self._register_bias(bias, device)

    @classmethod
    def from_sketch(cls, sketch: SKLinear) -> Int8SKLinear:
        """Quantize the factors of ``sketch`` (see the class docstring for the balancing)."""
        A, B = sketch._packed_factors()  # the sketch's own product is x·A·B/(2T)
        A, B = A.detach().float(), B.detach().float() / (2 * sketch.num_terms)
        norms = A.norm(dim=0).clamp_min(torch.finfo(torch.float32).tiny)
        module = cls(sketch.in_features, sketch.out_features, sketch.num_terms, sketch.low_rank,
                     bias=sketch.bias is not None, device=A.device, init=sketch.init)
        module._set_factor("first", (A / norms).T)
        module._set_factor("second", (B * norms[:, None]).T)
        if sketch.bias is not None:
            module.bias.copy_(sketch.bias.detach())
        return module

    @classmethod
    def from_dense(cls, layer: nn.Module, num_terms: int = 1, low_rank: int = 16, init: str = "svd",
                   input_cov: InputMoment | None = None,
                   generator: torch.Generator | None = None) -> Int8SKLinear:
        """Sketch ``layer`` as :meth:`SKLinear.from_dense` does, then quantize the factors."""
        return cls.from_sketch(SKLinear.from_dense(layer, num_terms, low_rank, init, input_cov, generator))

    def _factors(self) -> Sequence[Factor]:
        return ((self.first_int8, self.first_scale, None), (self.second_int8, self.second_scale, self.bias))

    def hyperparameters(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "num_terms": self.num_terms,
                "low_rank": self.low_rank, "bias": self.bias is not None, "init": self.init}

    @classmethod
    def sketch_params_of(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        return {**super().sketch_params_of(hyperparameters), "quantize": True}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_terms={self.num_terms}, "
                f"low_rank={self.low_rank}, bias={self.bias is not None}, init={self.init!r}")


def smoothing_scales(channel_rms: torch.Tensor, weight: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant's per-input-channel scales ``s_j = a_j^α / w_j^(1−α)``.

    ``a_j``: the inputs' size in channel ``j`` (here their RMS, from the calibration second moment);
    ``w_j``: the largest ``|W_ij|`` of the ``(out, in)`` weight's column ``j``. Dividing the inputs by
    ``s`` and multiplying the weight's columns by it leaves ``x·Wᵀ`` unchanged but moves the
    activations' outlier channels (``a_j`` tens of times the median, as transformers' FFN inputs
    show) into the weight, where per-output-channel scales absorb them; with ``α = 0.5`` both end up
    with ``√(a_j·w_j)`` in channel ``j``. Channels that are (nearly) zero are floored at a millionth
    of the largest, so no scale is zero or infinite.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tiny = torch.finfo(torch.float32).tiny
    a = channel_rms.detach().double()
    w = weight.detach().double().abs().amax(dim=0)
    a = a.clamp_min(float(a.max()) * 1e-6).clamp_min(tiny)
    w = w.clamp_min(float(w.max()) * 1e-6).clamp_min(tiny)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).float()


class SmoothInt8Linear(Int8Linear):
    r"""An :class:`Int8Linear` whose inputs are smoothed first (SmoothQuant): ``y = (x·diag(1/s))·(W·diag(s))ᵀ + b``.

    Dynamic int8 quantizes each activation tensor with one scale, so a few input channels tens of
    times larger than the rest (transformers' FFN inputs) set a step that rounds the other channels
    away. :func:`smoothing_scales` moves that range into the weight, whose per-output-channel scales
    absorb it: ``W·diag(s)`` is stored int8 and the kernel is :class:`Int8Linear`'s, unchanged; the
    input is multiplied by ``input_scale = 1/s`` (one elementwise product) before the kernel
    quantizes it. The scales come from the layer's input second moment (its diagonal: each channel's
    RMS), the calibration statistics the tuner collects.

    Plan params: ``{"method": "int8_smooth"}`` (the linear kind builds it from the calibration input
    covariance the tuner collects).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 device: torch.device | str | None = None) -> None:
        super().__init__(in_features, out_features, bias, device)
        self.register_buffer("input_scale", torch.ones(in_features, device=device))

    @classmethod
    def from_dense(cls, layer: nn.Module, input_cov: InputMoment | None = None,  # type: ignore[override]
                   alpha: float = 0.5) -> SmoothInt8Linear:
        """Smooth and quantize a (trained) ``nn.Linear`` or ``Conv1D`` from its input second moment
        ``input_cov`` (``(in, in)``, e.g. :func:`panther.nn.calibration.collect_input_covariances`).

        Without ``input_cov`` nothing is smoothed (scales 1: :class:`Int8Linear`'s numbers), the
        placeholder that a checkpoint's state then fills (``rebuild_sketched_layers``).
        """
        if not is_linear_like(layer):
            raise TypeError(f"SmoothInt8Linear.from_dense expects an nn.Linear (or a transformers Conv1D), "
                            f"got {type(layer).__name__}")
        d_in, _ = linear_dims(layer)
        if input_cov is not None and moment_shape(input_cov) != (d_in, d_in):
            raise ValueError(f"input_cov must be {d_in}x{d_in}, got {moment_shape(input_cov)}")
        weight = linear_weight(layer).detach()
        scales = (torch.ones(d_in, device=weight.device) if input_cov is None else
                  smoothing_scales(channel_power(input_cov).clamp_min(0).sqrt(), weight, alpha).to(weight.device))
        module = cls(*linear_dims(layer), bias=layer.bias is not None, device=weight.device)
        module._set_factor("weight", weight.float() * scales[None, :])
        module.input_scale.copy_(1.0 / scales)
        if layer.bias is not None:
            module.bias.copy_(layer.bias.detach())
        return module

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """As :meth:`Int8Linear.reset_parameters`, unsmoothed (``input_scale`` all ones)."""
        super().reset_parameters(generator)
        self.input_scale.fill_(1.0)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_nested or input.shape[-1] != self.in_features:
            return super().forward(input)  # per sequence (back through this forward), or the shape error
        return super().forward(input * self.input_scale.to(input.dtype))

    def to_dense(self) -> nn.Linear:
        """The ``nn.Linear`` computing the same product in float: the smoothing folded back out."""
        dense = super().to_dense()
        with torch.no_grad():
            dense.weight.mul_(self.input_scale.to(dense.weight.device)[None, :])
        return dense

    @classmethod
    def sketch_params_of(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        return {"method": "int8_smooth"}
