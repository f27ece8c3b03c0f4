"""The dense layers a sketch can replace, seen through one interface.

``nn.Linear`` is not the only dense matrix multiply users bring: Hugging Face ``transformers``
builds every GPT-2 projection from ``transformers.pytorch_utils.Conv1D``, a linear layer whose
weight is stored transposed, ``(in_features, out_features)``, computing ``x @ W + b``. Both are
*linear-like* here: :func:`linear_dims` and :func:`linear_weight` read them the same way, so
``SKLinear.from_dense``, the tuner's ``"auto"`` spaces and calibration treat them alike.

``transformers`` is never imported by this module: a ``Conv1D`` instance can only exist once its
module is loaded, so the class is looked up in ``sys.modules``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

_HF_CONV1D_MODULE = "transformers.pytorch_utils"


def hf_conv1d_type() -> type | None:
    """Hugging Face's ``Conv1D`` class if ``transformers`` is loaded, else ``None``."""
    module = sys.modules.get(_HF_CONV1D_MODULE)
    return getattr(module, "Conv1D", None) if module is not None else None


def linear_types() -> tuple[type, ...]:
    """Dense classes with the ``y = x·Wᵀ + b`` contract of ``nn.Linear`` (``Conv1D`` when loaded)."""
    conv1d = hf_conv1d_type()
    return (nn.Linear,) if conv1d is None else (nn.Linear, conv1d)


def is_linear_like(layer: nn.Module) -> bool:
    return isinstance(layer, linear_types())


def linear_dims(layer: nn.Module) -> tuple[int, int]:
    """``(in_features, out_features)`` of a linear-like layer."""
    if isinstance(layer, nn.Linear):
        return layer.in_features, layer.out_features
    conv1d = hf_conv1d_type()
    if conv1d is not None and isinstance(layer, conv1d):
        in_features, out_features = layer.weight.shape
        return int(in_features), int(out_features)
    raise TypeError(f"expected an nn.Linear or a transformers Conv1D, got {type(layer).__name__}")


def linear_weight(layer: nn.Module) -> torch.Tensor:
    """The ``(out_features, in_features)`` weight of a linear-like layer (a view, not a copy)."""
    linear_dims(layer)  # type check with the message above
    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    return weight if isinstance(layer, nn.Linear) else weight.T
