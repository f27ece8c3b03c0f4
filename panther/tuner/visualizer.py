"""Print a model's module names so that layer selectors can be written against them.

Children are listed in model (registration) order, so ``2`` comes before ``10`` as in
``named_modules()`` and in the names the selectors match.
"""

from __future__ import annotations

from torch import nn

_BRANCH, _LAST = "├─ ", "└─ "
_PIPE, _SPACE = "│   ", "    "


class ModelVisualizer:
    """Static helpers showing a model's layer names and types."""

    @staticmethod
    def module_tree(model: nn.Module, root_name: str = "model") -> str:
        """The module hierarchy as an ASCII tree, one ``name (TypeName)/`` per line."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"module_tree needs an nn.Module, got {type(model).__name__}")
        lines = [_label(root_name, model)]
        _add_children(model, prefix="", lines=lines)
        return "\n".join(lines)

    @staticmethod
    def print_module_tree(model: nn.Module, root_name: str = "model") -> str:
        """Print :meth:`module_tree` and return it."""
        text = ModelVisualizer.module_tree(model, root_name)
        print(text)
        return text

    @staticmethod
    def layer_table(model: nn.Module) -> str:
        """One row per submodule: full name (as selectors see it), type, parameter count."""
        rows = [(name, type(module).__name__, f"{sum(p.numel() for p in module.parameters()):,}")
                for name, module in model.named_modules() if name]
        header = ("name", "type", "params")
        widths = [max(len(row[i]) for row in rows + [header]) for i in range(3)]
        fmt = f"{{:<{widths[0]}}}  {{:<{widths[1]}}}  {{:>{widths[2]}}}"
        return "\n".join(fmt.format(*row) for row in [header] + rows)


def _label(name: str, module: nn.Module) -> str:
    return f"{name} ({type(module).__name__})/"


def _add_children(module: nn.Module, prefix: str, lines: list[str]) -> None:
    children = list(module.named_children())
    for i, (name, child) in enumerate(children):
        last = i == len(children) - 1
        lines.append(prefix + (_LAST if last else _BRANCH) + _label(name, child))
        _add_children(child, prefix + (_SPACE if last else _PIPE), lines)
