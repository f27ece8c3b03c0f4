"""Lazy attribute loading for package ``__init__`` files.

Importing :mod:`panther` must stay cheap (no Optuna, no Lightning, no CUDA build), so each
package lists its public names with the submodule that defines them and imports on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str], moved: dict[str, str] | None = None
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Return ``(__getattr__, __dir__)`` resolving ``exports[name]`` (a relative module) lazily.

    ``moved[name]`` is where a name this package no longer has went: asking for it raises an
    ``ImportError`` saying so (without importing that module, which may sit in a higher layer).
    """

    def module_getattr(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            if moved and name in moved:
                raise ImportError(f"{package}.{name} moved to {moved[name]}: import it from there")
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module_name, package), name)

    def module_dir() -> list[str]:
        return sorted(exports)

    return module_getattr, module_dir
