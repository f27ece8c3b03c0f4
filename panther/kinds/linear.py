"""``nn.Linear`` (and ``transformers``' transposed-weight ``Conv1D``) -> ``SKLinear``, optionally int8.

One kind, four methods per layer, picked by two parameters:

=====================  ===================  ========================================
``low_rank``           ``quantize``         replacement
=====================  ===================  ========================================
a rank ``k``           ``False`` (default)  ``SKLinear`` (the sketch)
a rank ``k``           ``True``             ``Int8SKLinear`` (the sketch's factors int8)
``None`` (full rank)   ``True``             ``Int8Linear`` (the dense weight int8)
``None``               ``False``            the dense layer itself: not a replacement
=====================  ===================  ========================================

Cost model: :func:`panther.nn.linear.linear_is_cheaper` for ranks (int8 factors keep the rank's
break-even against the int8 dense layer); the int8 dense layer stores a quarter of the bytes.
``params="auto"`` keeps the sketch space for now: with ``quantize`` as a second open choice the
budgeted rank bisection no longer applies, so proposing int8 waits for whole-model allocation
(issue 14); give ``{"low_rank": [..., None], "quantize": [False, True]}`` to tune the methods.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from torch import nn

from panther.kinds import LayerKind, Space, rank_grid, rank_space, register
from panther.nn.dense import linear_dims, linear_types
from panther.nn.linear import linear_is_cheaper


class LinearKind(LayerKind):
    name = "SKLinear"
    data_aware = True

    def dense_types(self) -> tuple[type, ...]:
        return linear_types()

    def replacement(self) -> type:
        from panther.nn.linear import SKLinear

        return SKLinear

    def replacements(self) -> tuple[type, ...]:
        from panther.nn.quantized import Int8Linear, Int8SKLinear

        return (self.replacement(), Int8SKLinear, Int8Linear)

    def build(self, dense: nn.Module, params: Mapping[str, Any], copy_weights: bool = True) -> nn.Module:
        from panther.nn.quantized import Int8Linear, Int8SKLinear

        params = dict(params)
        quantize = params.pop("quantize", False)
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

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool) -> Space | None:
        ranks = rank_grid(lambda k: self.is_cheaper(dense, {"low_rank": k}), min(linear_dims(dense)))
        return rank_space(ranks, copy_weights, data_aware)


register(LinearKind())
