"""Imports run downward only: space -> ops -> nn -> kinds -> plans -> tuner -> panther_lightning.

Every module's imports are read with :mod:`ast` (function-level and ``TYPE_CHECKING`` imports
included: a lazy import is still a dependency) and compared by layer. The checker is run on planted
violations too, so a checker that finds nothing cannot pass silently.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
#: Bottom to top: a module may import its own layer and the ones before it.
LAYERS = ("panther.space", "panther.ops", "panther.nn", "panther.kinds", "panther.plans", "panther.tuner",
          "panther_lightning")
#: Package plumbing every layer may use (lazy exports); it imports nothing of Panther.
SHARED = ("panther._lazy", "panther")


def layer_of(module: str) -> int | None:
    """Index of the layer ``module`` belongs to; ``None`` for shared plumbing and foreign modules."""
    for index, layer in reversed(list(enumerate(LAYERS))):
        if module == layer or module.startswith(layer + "."):
            return index
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """``(line, absolute module name)`` of every import in ``source`` (relative ones resolved)."""
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
            found += [(node.lineno, f"{name}.{alias.name}") for alias in node.names]  # a submodule import
    return found


def upward_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """The imports in ``source`` (of ``module``) that reach a layer above the module's own."""
    own = layer_of(module)
    if own is None:
        return []
    violations = []
    for line, target in imported_modules(source, module, is_package):
        layer = layer_of(target)
        if layer is not None and layer > own and target not in SHARED:
            violations.append(f"{module}:{line} imports {target} ({LAYERS[layer]} is above {LAYERS[own]})")
    return violations


def package_modules() -> list[Path]:
    return sorted([*(ROOT / "panther").rglob("*.py"), *(ROOT / "panther_lightning").rglob("*.py")])


def test_every_layer_imports_only_downward():
    violations = []
    for path in package_modules():
        violations += upward_imports(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")
    assert violations == []


def test_every_module_is_in_a_layer():
    """A new top-level module must be placed in LAYERS, else nothing would check it."""
    unplaced = [module_name(p) for p in package_modules()
                if layer_of(module_name(p)) is None and module_name(p) not in SHARED]
    assert unplaced == []


@pytest.mark.parametrize("module,source,target", [
    ("panther.kinds", "from panther.tuner.params import Categorical", "panther.tuner.params"),
    ("panther.nn.rebuild", "def f():\n    from panther.kinds import kind_named\n", "panther.kinds"),
    ("panther.ops.x", "import panther.nn.linear", "panther.nn.linear"),
    ("panther.space", "from panther import nn", "panther.nn"),
    ("panther.tuner.sub", "from ..._lazy import x\nfrom ...plans import apply_plan", None),
    ("panther.nn.sub", "from .. import kinds", "panther.kinds"),
    ("panther.tuner.sub", "from panther_lightning.session import publish", "panther_lightning.session"),
], ids=["module level", "inside a function", "plain import", "package attribute", "relative, allowed",
        "relative, upward", "into lightning"])
def test_the_checker_finds_planted_violations(module, source, target):
    violations = upward_imports(source, module)
    if target is None:
        assert violations == []
    else:
        assert any(f"imports {target} " in v for v in violations)
