"""``nn.Linear`` (and ``transformers``' transposed-weight ``Conv1D``) -> ``SKLinear``.

Cost model: :func:`panther.nn.linear.linear_is_cheaper`.
"""

from __future__ import annotations

from typing import Any, Hashable, Mapping, Optional, Tuple

from torch import nn

from panther.kinds import LayerKind, Space, rank_grid, rank_space, register
from panther.nn.dense import linear_dims, linear_types
from panther.nn.linear import linear_is_cheaper


class LinearKind(LayerKind):
    name = "SKLinear"
    data_aware = True

    def dense_types(self) -> Tuple[type, ...]:
        return linear_types()

    def replacement(self) -> type:
        from panther.nn.linear import SKLinear

        return SKLinear

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        return linear_is_cheaper(*linear_dims(dense), params.get("num_terms", 1), params["low_rank"])

    def shape_key(self, dense: nn.Module) -> Hashable:
        # nn.Linear and Conv1D of one shape compute the same kind of product: one space
        return ("Linear", *linear_dims(dense))

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool) -> Optional[Space]:
        ranks = rank_grid(lambda k: self.is_cheaper(dense, {"low_rank": k}), min(linear_dims(dense)))
        return rank_space(ranks, copy_weights, data_aware)


register(LinearKind())
