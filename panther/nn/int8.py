"""The int8 backend: symmetric per-channel weight quantization and the dynamic int8 GEMM.

The one place that knows which library runs int8 products, so switching it (e.g. to ``torchao``
once its CPU kernels are fast in eager mode) touches nothing else. The choice, measured on CPU with
``bench/bench_int8.py``: ``torch.ops.quantized.linear_dynamic`` (fbgemm / x86, the kernel behind
``torch.ao.quantization.quantize_dynamic``) runs several times faster than fp32 in eager mode;
``torchao``'s ``Int8DynamicActivationInt8WeightConfig`` is fast only under ``torch.compile`` and
stores tensor subclasses, so its checkpoints need ``torchao`` to load. The op is called
directly, not through the deprecated ``torch.ao.quantization`` module API; torch 2.13 also marks
quantized tensors (which the op's packing takes) deprecated, so when they go this module moves to
``torch._int_mm`` (slower here, see the benchmark) or ``torchao``, and nothing else changes.

Modules keep plain tensors (int8 weight, float32 scales, bias): checkpoints load with
``weights_only=True``, and the op's opaque packed form is made from them on demand (:func:`pack`).
Activations are quantized per call, per tensor, with the op's ``reduce_range`` (7-bit activations),
which keeps fbgemm's 16-bit intermediate sums from saturating on CPUs without VNNI.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

#: Quantized engines with a dynamic int8 linear kernel.
_ENGINES = ("x86", "fbgemm", "onednn", "qnnpack")
_QMAX = 127  # symmetric range [-127, 127]: -128 would make the scale asymmetric


def int8_available(device: torch.device) -> bool:
    """Whether a fast int8 linear kernel runs on ``device`` (CPU with a quantized engine)."""
    return device.type == "cpu" and torch.backends.quantized.engine in _ENGINES


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(int8 weight, float32 scales)`` with ``weight[i] ≈ scale[i] * q[i]``, one scale per output row.

    Per-row scales keep rows of small norm (e.g. one factor's columns of a sketch) from being
    rounded away by the largest row, which per-tensor scales do.
    """
    weight = weight.detach().float()
    scale = weight.abs().amax(dim=1).clamp_min(torch.finfo(torch.float32).tiny) / _QMAX
    q = torch.round(weight / scale[:, None]).clamp(-_QMAX, _QMAX).to(torch.int8)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The float32 weight ``q`` and ``scale`` stand for."""
    return q.float() * scale[:, None]


def pack(q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> Any:
    """The kernel's packed form of an int8 weight (opaque; rebuild it from the plain tensors).

    torch 2.13 deprecates creating quantized tensors, which the op's packing still needs; the
    warning is silenced here, the one place that depends on it (see the module docstring).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
        qweight = torch._make_per_channel_quantized_tensor(q, scale.double(),
                                                           torch.zeros_like(scale, dtype=torch.long), 0)
    return torch.ops.quantized.linear_prepack(qweight, None if bias is None else bias.detach().float())


def int8_linear(x: torch.Tensor, packed: Any) -> torch.Tensor:
    """``x·Wᵀ + b`` for a 2-D float ``x``, quantized per call (returns float32)."""
    return torch.ops.quantized.linear_dynamic(x.float().contiguous(), packed, True)
