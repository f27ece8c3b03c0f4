"""``nn.Linear`` (and ``transformers``' transposed-weight ``Conv1D``) -> ``SKLinear``, optionally int8.

One kind, four methods per layer, picked by two parameters:

=====================  ===================  ========================================
``low_rank``           ``quantize``         replacement
=====================  ===================  ========================================
a rank ``k``           ``False`` (default)  ``SKLinear`` (the sketch)
a rank ``k``           ``True``             ``Int8SKLinear`` (the sketch's factors int8)
``None`` (full rank)   ``True``             ``Int8Linear`` (the dense weight int8)
``None``               ``"smooth"``         ``SmoothInt8Linear`` (int8, outlier channels smoothed)
``None``               ``False``            the dense layer itself: not a replacement
=====================  ===================  ========================================

``quantize="smooth"`` takes its scales from the layer's input second moment, passed as a
``data_svd`` sketch's is: its params carry ``init="data_svd"`` (calibration data needed).

Cost model: :func:`panther.nn.linear.linear_is_cheaper` for ranks (int8 factors keep the rank's
break-even against the int8 dense layer); the int8 dense layer stores a quarter of the bytes.
``params="auto"`` proposes int8 (``quantize`` and ``low_rank=None`` beside the ranks) on a device
with an int8 kernel (CPU) when the tuner allocates over the whole model; a per-group search keeps
the sketch space, whose one ordered axis its budgeted rank bisection needs. Give
``{"low_rank": [..., None], "quantize": [False, True]}`` to search the methods yourself.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import torch
from torch import nn

from panther.kinds import LayerKind, Space, rank_grid, rank_space, register
from panther.nn.dense import linear_dims, linear_types, linear_weight
from panther.nn.linear import linear_is_cheaper
from panther.tuner.params import Categorical


class LinearKind(LayerKind):
    name = "SKLinear"
    data_aware = True

    def dense_types(self) -> tuple[type, ...]:
        return linear_types()

    def replacement(self) -> type:
        from panther.nn.linear import SKLinear

        return SKLinear

    def replacements(self) -> tuple[type, ...]:
        from panther.nn.quantized import Int8Linear, Int8SKLinear, SmoothInt8Linear

        return (self.replacement(), Int8SKLinear, Int8Linear, SmoothInt8Linear)

    def build(self, dense: nn.Module, params: Mapping[str, Any], copy_weights: bool = True) -> nn.Module:
        from panther.nn.quantized import Int8Linear, Int8SKLinear

        params = dict(params)
        quantize = params.pop("quantize", False)
        if quantize == "smooth":
            return self._build_smooth(dense, params, copy_weights)
        if params.get("low_rank", 1) is None:
            if not quantize:
                raise ValueError("low_rank=None keeps the full weight, which only quantize=True changes; "
                                 "without it the layer stays dense (leave it out of the tuning configs)")
            module = Int8Linear.from_dense(dense)
            if not copy_weights:
                module.reset_parameters()
            return module
        sketch = super().build(dense, params, copy_weights)
        return Int8SKLinear.from_sketch(sketch) if quantize else sketch

    @staticmethod
    def _build_smooth(dense: nn.Module, params: Mapping[str, Any], copy_weights: bool) -> nn.Module:
        from panther.nn.quantized import SmoothInt8Linear

        if params.get("low_rank", 1) is not None:
            raise ValueError("quantize='smooth' applies to the full-rank weight (low_rank=None)")
        module = SmoothInt8Linear.from_dense(dense, params.get("input_cov"))
        if not copy_weights:
            module.reset_parameters()
        return module

    def canonical_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The int8 dense layer ignores the sketch's ``num_terms``/``init`` (the smoothed one keeps
        ``init``, which brings it the input statistics); ``quantize=False`` is the default."""
        if params.get("low_rank", 1) is None:
            if params.get("quantize") == "smooth":
                return {"low_rank": None, "quantize": "smooth", "init": params.get("init", "data_svd")}
            return {"low_rank": None, "quantize": params.get("quantize", False)}
        return {k: v for k, v in params.items() if not (k == "quantize" and v is False)}

    def parameter_names(self) -> set[str] | None:
        names = super().parameter_names()
        return None if names is None else names | {"quantize"}

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        if params["low_rank"] is None:
            return bool(params.get("quantize", False))
        return linear_is_cheaper(*linear_dims(dense), params.get("num_terms", 1), params["low_rank"])

    def shape_key(self, dense: nn.Module) -> Hashable:
        # nn.Linear and Conv1D of one shape compute the same kind of product: one space
        return ("Linear", *linear_dims(dense))

    def predicted_error(self, dense: nn.Module, params: Mapping[str, Any],
                        input_cov: torch.Tensor | None) -> float | None:
        """A rank's error from the layer's (whitened) spectrum: exact for ``svd``/``data_svd`` sketches."""
        from panther.tuner._allocation.curves import rank_error_curve, sketch_rank

        init, low_rank = params.get("init", "sketch"), params.get("low_rank")
        if params.get("quantize", False) or low_rank is None or init not in ("svd", "data_svd"):
            return None
        cov = input_cov if init == "data_svd" else None
        if init == "data_svd" and cov is None:
            return None
        curve = rank_error_curve(linear_weight(dense), cov)
        return float(curve[min(sketch_rank(params.get("num_terms", 1), low_rank), curve.numel() - 1)])

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool,
                   methods: bool = False) -> Space | None:
        """The cheaper ranks; with ``methods`` on a device with an int8 kernel, int8 as well.

        Int8 needs the trained weights (``copy_weights``); it adds ``quantize`` and the full rank
        (``low_rank=None``): the allocation then weighs the sketch, the sketch with int8 factors
        and the int8 dense weight per layer, and with calibration data (``data_aware``) the
        smoothed int8 weight too (sketches with ``"smooth"`` are not built, so not weighed).
        """
        from panther.nn.int8 import int8_available

        ranks = rank_grid(lambda k: self.is_cheaper(dense, {"low_rank": k}), min(linear_dims(dense)))
        space = rank_space(ranks, copy_weights, data_aware)
        if not (methods and copy_weights and int8_available(linear_weight(dense).device)):
            return space
        smooth = ["smooth"] if data_aware else []  # its scales come from the calibration statistics
        if space is None:
            return {"low_rank": Categorical([None]), "quantize": Categorical([True, *smooth]),
                    **({"init": Categorical(["data_svd"])} if smooth else {})}
        return {**space, "low_rank": Categorical([*ranks, None]), "quantize": Categorical([False, True, *smooth])}


register(LinearKind())
