"""``params="auto"``: search spaces holding only sketches cheaper than the dense layer.

A sketched layer depends on ``(num_terms, low_rank)`` only through its rank ``2·T·k``, while its
cost grows with ``T`` (every term carries its own factors). So the generated space fixes
``num_terms=1`` and searches ``low_rank`` on an ordered grid (powers of two and their midpoints:
1, 2, 3, 4, 6, 8, 12, ...) that stops strictly below the break-even rank, where the sketch would
cost as much as the dense layer:

* ``nn.Linear(d_in, d_out)`` (and ``transformers``' ``Conv1D``, the same product with a transposed
  weight): ``2·T·k·(d_in + d_out) < d_in·d_out`` (weights and multiply-adds).
* ``nn.Conv2d``: per output pixel ``2Tk·C_in·kh·kw + 2Tk·C_out < kh·kw·C_in/groups·C_out``
  (:func:`panther.nn.conv.conv_is_cheaper`).

The spaces and cost models are the layer kinds' (:mod:`panther.kinds`); this module groups layers
and resolves them. Every combination proposed is therefore cheaper than the layer it replaces. ``init`` is ``"svd"``
(keep the trained weights' best low-rank part) when weights are copied, else ``"sketch"``.
Layers with identical type and shape share one generated space ("smart grouping").
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

from torch import nn

from panther.kinds import LayerKind, kind_of
from panther.space import Space

LayerRef = str | nn.Module


def _with_auto_space(kind: LayerKind | None) -> LayerKind | None:
    """``kind`` if it has an ``"auto"`` space (attention, whose cost depends on the sequence, has none)."""
    return kind if kind is not None and type(kind).auto_space is not LayerKind.auto_space else None


class ParamsResolver:
    """Generates the ``"auto"`` search space of each layer.

    Args:
        model_or_resolver: the model, or a :class:`~panther.tuner.selectors.LayerNameResolver` of it,
            used to look layers up by name.
    """

    def __init__(self, model_or_resolver: object) -> None:
        from panther.tuner.selectors import LayerNameResolver

        if isinstance(model_or_resolver, LayerNameResolver):
            self.resolver = model_or_resolver
        elif isinstance(model_or_resolver, nn.Module):
            self.resolver = LayerNameResolver(model_or_resolver)
        else:
            raise TypeError(f"ParamsResolver needs an nn.Module or a LayerNameResolver, got "
                            f"{type(model_or_resolver).__name__}")
        #: Layers the last :meth:`resolve_modules` left out, with the reason.
        self.skipped: dict[str, str] = {}

    def space_for(self, layer: nn.Module, copy_weights: bool = True, data_aware: bool = False,
                  methods: bool = False) -> Space | None:
        """The space for one layer, or ``None`` when "auto" does not support it or no rank is cheaper.

        The init is ``"data_svd"`` with calibration data (``data_aware``), ``"svd"`` when copying
        weights without it, and ``"sketch"`` for freshly initialised layers. ``methods``: the tuner
        allocates over the whole model, so kinds may offer several methods (int8 on CPU).
        """
        kind = _with_auto_space(kind_of(layer))
        return None if kind is None else kind.auto_space(layer, copy_weights, data_aware, methods)

    def resolve(self, layers: Sequence[LayerRef], copy_weights: bool = True,
                data_aware: bool = False, methods: bool = False) -> dict[str, Space]:
        """Per layer (by name; a module is named by its first name in the model) its concrete space.

        Layers that "auto" cannot handle or for which no sketch is cheaper are left out, with a warning.
        Layers of identical type and shape share the same space object.
        """
        return self.resolve_modules(dict(self._lookup(ref) for ref in layers), copy_weights, data_aware, methods)

    def resolve_modules(self, layers: Mapping[str, nn.Module], copy_weights: bool = True,
                        data_aware: bool = False, methods: bool = False,
                        kinds: Mapping[str, LayerKind] | None = None) -> dict[str, Space]:
        """:meth:`resolve` for layers given as ``{name: module}`` (``kinds``: their kinds, if known)."""
        spaces: dict[str, Space] = {}
        shared: dict[Hashable, Space | None] = {}
        self.skipped = {}
        for name, layer in layers.items():
            kind = _with_auto_space(kinds[name] if kinds is not None else kind_of(layer))
            if kind is None:
                self.skipped[name] = f"params='auto' does not support {type(layer).__name__}"
                warnings.warn(f"{self.skipped[name]}: skipping {name!r}", stacklevel=3)
                continue
            key = kind.shape_key(layer)
            if key not in shared:
                shared[key] = kind.auto_space(layer, copy_weights, data_aware, methods)
            if shared[key] is None:
                self.skipped[name] = f"no sketch of this {type(layer).__name__} is cheaper than the dense layer"
                warnings.warn(f"params='auto': {self.skipped[name]}; skipping {name!r}", stacklevel=3)
                continue
            spaces[name] = shared[key]  # type: ignore[assignment]
        return spaces

    def groups(self, spaces: dict[str, Space]) -> list[tuple[list[str], Space]]:
        """Layers sharing one space, in first-appearance order: ``[(names, space), ...]``."""
        grouped: list[tuple[list[str], Space]] = []
        for name, space in spaces.items():
            for names, existing in grouped:
                if existing is space or existing == space:
                    names.append(name)
                    break
            else:
                grouped.append(([name], space))
        return grouped

    def _lookup(self, ref: LayerRef) -> tuple[str, nn.Module]:
        if isinstance(ref, str):
            return ref, self.resolver.module(ref)
        if isinstance(ref, nn.Module):
            for name in self.resolver.names():
                if self.resolver.module(name) is ref:
                    return name, ref
            raise ValueError(f"{type(ref).__name__} module is not part of the model this resolver reads")
        raise TypeError(f"layers must be given by name or as modules, got {type(ref).__name__}: {ref!r}")
