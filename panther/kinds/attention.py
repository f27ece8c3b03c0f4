"""``nn.MultiheadAttention`` -> ``RandMultiHeadAttention`` (random-feature attention).

Its cost depends on the sequence length, which a layer does not know, so ``params="auto"`` has no
space for it: tune it with explicit ``num_random_features`` / ``kernel_fn`` choices.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from torch import nn

from panther.kinds import LayerKind, register


class AttentionKind(LayerKind):
    name = "RandMultiHeadAttention"
    profiles_alone = False  # takes query, key, value and masks
    size_params = ("num_random_features",)

    def dense_types(self) -> tuple[type, ...]:
        return (nn.MultiheadAttention,)

    def replacement(self) -> type:
        from panther.nn.attention import RandMultiHeadAttention

        return RandMultiHeadAttention

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        raise ValueError("whether random-feature attention is cheaper depends on the sequence length: use "
                         "panther.nn.attention.attention_is_cheaper(seq_len, num_random_features, head_dim)")

    def shape_key(self, dense: nn.Module) -> Hashable:
        assert isinstance(dense, nn.MultiheadAttention)
        return ("MultiheadAttention", dense.embed_dim, dense.num_heads, dense.kdim, dense.vdim)


register(AttentionKind())
