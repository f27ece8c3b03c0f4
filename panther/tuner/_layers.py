"""Which selected layers the tuner must leave alone, and why; what a layer costs to store.

What replaces a layer is the registry's business (:mod:`panther.kinds`); these are the rules about
the model around it (attention internals, tied weights), testable without tuning anything.
"""

from __future__ import annotations

from torch import nn


def unsupported_reason(module: nn.Module) -> str:
    """Why no layer kind of :mod:`panther.kinds` takes ``module`` (for warnings and the summary)."""
    from panther.kinds import all_kinds

    for kind in all_kinds():
        dense_type = kind.dense_type_of(module)
        if dense_type is not None:
            return (f"{type(module).__name__} overrides {dense_type.__name__}.forward, which a sketch of the "
                    "weight would silently drop")
    return f"{type(module).__name__} has no sketched replacement"


def layer_bytes(module: nn.Module) -> int:
    """Bytes of the parameters and buffers a layer stores: what int8 saves, which counts of numbers miss."""
    tensors = [*module.parameters(), *module.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def attention_internals(model: nn.Module) -> dict[int, int]:
    """``id(submodule) -> id(block)`` for submodules of ``nn.MultiheadAttention`` blocks.

    Their weights are read directly by ``F.multi_head_attention_forward`` (``out_proj.weight``),
    never through their ``forward``, so replacing them would be silently ignored or would crash.
    """
    inside: dict[int, int] = {}
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            inside.update((id(sub), id(module)) for sub in module.modules() if sub is not module)
    return inside


def tied_layers(model: nn.Module) -> dict[int, list[str]]:
    """Modules whose own parameters are also held by another module: id -> the other holders' names.

    Replacing such a layer would cut the tie (e.g. an output projection sharing the embedding
    matrix) and change the other module's behaviour too.
    """
    holders: dict[int, list[tuple[int, str]]] = {}
    for name, module in model.named_modules():
        for param in module.parameters(recurse=False):
            holders.setdefault(id(param), []).append((id(module), name))
    tied: dict[int, list[str]] = {}
    for owners in holders.values():
        if len({owner for owner, _ in owners}) > 1:
            for owner, _ in owners:
                tied.setdefault(owner, []).extend(n for o, n in owners if o != owner)
    return tied
