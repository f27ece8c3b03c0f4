"""Module surgery: put a module wherever another sits in a model, by dotted name.

Plans (which module to build for which layer) need the layer-kind registry and live above it, in
:mod:`panther.plans`; this is the part :mod:`panther.nn` needs no registry for.
"""

from __future__ import annotations

from torch import nn

__all__ = ["module_paths", "replace_module"]


def module_paths(model: nn.Module, target: nn.Module) -> list[str]:
    """Every dotted name under which ``target`` is reachable in ``model`` (shared modules have several)."""
    return [name for name, module in model.named_modules(remove_duplicate=False) if module is target and name]


def replace_module(model: nn.Module, name: str, new: nn.Module) -> list[str]:
    """Put ``new`` wherever the module called ``name`` sits (all its aliases); return those names.

    A module shared under two names stays shared: both names get the same new module.
    """
    old = model.get_submodule(name)
    paths = module_paths(model, old)
    for path in paths:
        parent_name, _, child = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return paths
