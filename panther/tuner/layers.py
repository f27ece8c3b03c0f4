"""Which dense layers the tuner can sketch, and how a candidate sketched layer is built.

Kept apart from the search loop so that the rules (supported types, layers that must not be
touched) are in one place and testable without tuning anything.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple

from torch import nn

#: Names of the sketched classes in :mod:`panther.nn`, most specific dense type first.
SKETCHED_CLASS_NAMES: Tuple[str, ...] = ("RandMultiHeadAttention", "SKConv2d", "SKLinear")


def sketched_class_for(module: nn.Module) -> Optional[type]:
    """The sketched class replacing ``module``, or ``None`` if its type is not supported.

    Each class says which dense types it replaces (``SKLinear``: ``nn.Linear`` and, once
    ``transformers`` is loaded, its ``Conv1D``). Subclasses of a supported type count (their
    ``forward`` is the dense one they inherit) except those that override ``forward``: a sketch of
    the weight would silently drop whatever the override does.
    """
    import panther.nn

    for class_name in SKETCHED_CLASS_NAMES:
        try:
            cls = getattr(panther.nn, class_name)
        except (ImportError, AttributeError):  # layer module missing from a partial install
            continue
        dense_type = cls.dense_type_of(module)
        if dense_type is not None:
            return cls if type(module).forward is dense_type.forward else None
    return None


def unsupported_reason(module: nn.Module) -> str:
    """Why :func:`sketched_class_for` gives ``None`` for ``module`` (for warnings and the summary)."""
    import panther.nn

    for class_name in SKETCHED_CLASS_NAMES:
        dense_type = getattr(panther.nn, class_name).dense_type_of(module)
        if dense_type is not None:
            return (f"{type(module).__name__} overrides {dense_type.__name__}.forward, which a sketch of the "
                    "weight would silently drop")
    return f"{type(module).__name__} has no sketched replacement"


def layer_weights(module: nn.Module) -> int:
    """Stored numbers (parameters and buffers) a layer multiplies with: its size and its cost."""
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def from_dense_arguments(cls: type) -> Optional[Set[str]]:
    """Keyword arguments ``cls.from_dense`` accepts besides the layer (``None``: it takes ``**kwargs``)."""
    parameters = list(inspect.signature(cls.from_dense).parameters.values())[1:]
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def build_candidate(dense: nn.Module, cls: type, params: Mapping[str, Any], copy_weights: bool) -> nn.Module:
    """A sketched twin of ``dense``; without ``copy_weights`` it is freshly initialised instead."""
    candidate = cls.from_dense(dense, **dict(params))
    if not copy_weights:
        candidate.reset_parameters()
    return candidate


def attention_internals(model: nn.Module) -> Dict[int, int]:
    """``id(submodule) -> id(block)`` for submodules of ``nn.MultiheadAttention`` blocks.

    Their weights are read directly by ``F.multi_head_attention_forward`` (``out_proj.weight``),
    never through their ``forward``, so replacing them would be silently ignored or would crash.
    """
    inside: Dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            inside.update((id(sub), id(module)) for sub in module.modules() if sub is not module)
    return inside


def tied_layers(model: nn.Module) -> Dict[int, List[str]]:
    """Modules whose own parameters are also held by another module: id -> the other holders' names.

    Replacing such a layer would cut the tie (e.g. an output projection sharing the embedding
    matrix) and change the other module's behaviour too.
    """
    holders: Dict[int, List[Tuple[int, str]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append((id(module), name))
    tied: Dict[int, List[str]] = {}
    for owners in holders.values():
        if len({owner for owner, _ in owners}) > 1:
            for owner, _ in owners:
                tied.setdefault(owner, []).extend(n for o, n in owners if o != owner)
    return tied
