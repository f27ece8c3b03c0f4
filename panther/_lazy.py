"""Lazy attribute loading for package ``__init__`` files.

Importing :mod:`panther` must stay cheap (no Optuna, no Lightning, no CUDA build), so each
package lists its public names with the submodule that defines them and imports on first use.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, List


def lazy_exports(package: str, exports: Dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], List[str]]]:
    """Return ``(__getattr__, __dir__)`` resolving ``exports[name]`` (a relative module) lazily."""

    def __getattr__(name: str) -> Any:
        module_name = exports.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module_name, package), name)
        return value

    def __dir__() -> List[str]:
        return sorted(exports)

    return __getattr__, __dir__
