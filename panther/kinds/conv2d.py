"""``nn.Conv2d`` -> ``SKConv2d`` (cost model: :func:`panther.nn.conv.conv_is_cheaper`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from torch import nn

from panther.kinds import LayerKind, Space, rank_grid, rank_space, register


class Conv2dKind(LayerKind):
    name = "SKConv2d"
    data_aware = True
    size_params = ("low_rank", "num_terms")

    def dense_types(self) -> tuple[type, ...]:
        return (nn.Conv2d,)

    def replacement(self) -> type:
        from panther.nn.conv import SKConv2d

        return SKConv2d

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        from panther.nn.conv import conv_is_cheaper

        assert isinstance(dense, nn.Conv2d)
        return conv_is_cheaper(dense.in_channels, dense.out_channels, dense.kernel_size, dense.groups,
                               params.get("num_terms", 1), params["low_rank"])

    def shape_key(self, dense: nn.Module) -> Hashable:
        assert isinstance(dense, nn.Conv2d)
        return ("Conv2d", dense.in_channels, dense.out_channels, tuple(dense.kernel_size), dense.groups)

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool,
                   methods: bool = False) -> Space | None:
        assert isinstance(dense, nn.Conv2d)
        fan_in = dense.in_channels // dense.groups * dense.kernel_size[0] * dense.kernel_size[1]
        ranks = rank_grid(lambda k: self.is_cheaper(dense, {"low_rank": k}),
                          min(fan_in, dense.out_channels // dense.groups))
        return rank_space(ranks, copy_weights, data_aware)


register(Conv2dKind())
