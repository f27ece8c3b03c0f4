"""Layer selectors: which submodules of a model a :class:`~panther.tuner.LayerConfig` targets.

Matching rules (what :meth:`LayerNameResolver.resolve` implements):

* Names are those of ``model.named_modules()``, in that (model) order, root excluded. A module
  object reachable under several names (weight sharing) is reported once, under its first name;
  it matches when *any* of its names matches. :meth:`LayerNameResolver.aliases` lists them all.
* A **string** ``s`` is a regex that must fully match a run of whole dot-separated components of
  the name, i.e. ``re.search(r"(?:^|\\.)(?:" + s + r")(?:\\.|$)", name)``. So ``"fc1"`` matches
  ``fc1`` but not ``fc10``; ``"blocks.1"`` matches ``blocks.1`` and ``blocks.1.fc`` but not
  ``blocks.10``; ``"encoder"`` matches ``encoder.layer0.fc`` and ``model.encoder``;
  ``"encoder.*attention"`` matches ``encoder.layer0.attention``.
* A **list of strings** is the union of its strings (still in model order).
* A **dict** combines filters with AND: ``"pattern"`` (string or list, OR within the list, same
  rule as above), ``"type"`` (a class, matching ``isinstance``; or a class name, matching the
  module's class or any base class by ``__name__`` or dotted ``module.qualname``; or a list of
  those, OR within the list) and ``"contains"`` (plain substrings of the name, OR within a list).
  Then ``"indices"`` (int or list; negative allowed) or ``"range"`` (``[start, end]`` or
  ``[start, end, step]`` with Python slice semantics; ``None`` leaves an end open) picks among the
  matches, counted in model order. An out-of-range index raises :class:`SelectorIndexError` and a
  non-integer index or bound :class:`SelectorTypeError`: ``ValueError`` as in the original
  Panther, and still ``IndexError``/``TypeError`` for code written against those.
* A selector that matches nothing resolves to ``[]``; the caller decides whether that is an error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from re import Pattern
from typing import Any

from torch import nn

Selector = str | Sequence[str] | dict[str, Any]

_FILTER_KEYS = ("pattern", "type", "contains")
_PICK_KEYS = ("indices", "range")


class SelectorIndexError(ValueError, IndexError):
    """An ``indices`` entry outside the matched layers (either ``except`` clause catches it)."""


class SelectorTypeError(ValueError, TypeError):
    """An ``indices`` entry or ``range`` bound that is not an integer (either ``except`` catches it)."""


def compile_pattern(pattern: str) -> Pattern[str]:
    """Compile ``pattern`` under the whole-components rule; the regex error names the pattern."""
    if not isinstance(pattern, str):
        raise TypeError(f"a layer-name pattern must be a string, got {type(pattern).__name__}: {pattern!r}")
    if not pattern:
        raise ValueError("a layer-name pattern must not be empty")
    try:
        return re.compile(r"(?:^|\.)(?:" + pattern + r")(?:\.|$)")
    except re.error as err:
        raise ValueError(f"invalid regex in layer selector {pattern!r}: {err}") from None


def validate_selector(selector: Any) -> None:
    """Raise ``TypeError``/``ValueError`` describing what is wrong with ``selector``."""
    if isinstance(selector, str):
        compile_pattern(selector)
    elif isinstance(selector, (list, tuple)):
        _validate_strings("layer_names", selector)
        for pattern in selector:
            compile_pattern(pattern)
    elif isinstance(selector, dict):
        _validate_dict(selector)
    else:
        raise TypeError(
            "a layer selector must be a string pattern, a list of patterns or a dict with keys "
            f"{list(_FILTER_KEYS + _PICK_KEYS)}, got the unsupported type {type(selector).__name__}: {selector!r}"
        )


def _validate_dict(selector: dict[str, Any]) -> None:
    unknown = set(selector) - set(_FILTER_KEYS + _PICK_KEYS)
    if unknown:
        raise ValueError(f"unknown layer-selector keys {sorted(map(str, unknown))}; "
                         f"allowed: {list(_FILTER_KEYS + _PICK_KEYS)}")
    if not any(key in selector for key in _FILTER_KEYS):
        raise ValueError(f"a dict layer selector needs at least one of {list(_FILTER_KEYS)}: {selector!r}")
    if all(key in selector for key in _PICK_KEYS):
        raise ValueError("a layer selector cannot use 'indices' and 'range' together (Cannot use both: pick one)")
    if "pattern" in selector:
        for pattern in _as_list("pattern", selector["pattern"]):
            compile_pattern(pattern)
    if "contains" in selector:
        _validate_strings("contains", _as_list("contains", selector["contains"]))
    if "type" in selector:
        for kind in _as_list("type", selector["type"]):
            if not (isinstance(kind, type) or (isinstance(kind, str) and kind)):
                raise TypeError(f"'type' entries must be classes or non-empty class names, got {kind!r}")
    if "indices" in selector:
        for index in _as_list("indices", selector["indices"]):
            if isinstance(index, bool) or not isinstance(index, int):
                raise SelectorTypeError(f"'indices' entries must be integers, got {index!r}")
    if "range" in selector:
        bounds = selector["range"]
        if not isinstance(bounds, (list, tuple)) or len(bounds) not in (2, 3):
            raise ValueError(f"'range' must be [start, end] or [start, end, step] (it must contain 2 or 3 elements), "
                             f"got {bounds!r}")
        if any(b is not None and (isinstance(b, bool) or not isinstance(b, int)) for b in bounds):
            raise SelectorTypeError(f"'range' bounds must be integers or None, got {bounds!r}")
        if len(bounds) == 3 and bounds[2] == 0:
            raise ValueError("'range' step must not be zero")


def _as_list(key: str, value: Any) -> list[Any]:
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise ValueError(f"selector key {key!r} must not be an empty list")
    return items


def _validate_strings(key: str, values: Sequence[Any]) -> None:
    if not values:
        hint = " (no layer names given)" if key == "layer_names" else ""
        raise ValueError(f"{key} must not be an empty list{hint}")
    for value in values:
        if not isinstance(value, str):
            raise TypeError(f"{key} entries must be strings, got {type(value).__name__}: {value!r}")


def _type_matcher(kind: type | str) -> Callable[[nn.Module], bool]:
    if isinstance(kind, type):
        return lambda module: isinstance(module, kind)

    def matches(module: nn.Module) -> bool:
        return any(kind in (cls.__name__, f"{cls.__module__}.{cls.__qualname__}") for cls in type(module).__mro__)

    return matches


class LayerNameResolver:
    """Turns selectors into layer names of ``model`` (see the module docstring for the rules).

    The model is re-read on every call, so names stay right after layers are replaced.

    Args:
        model: the model whose submodules are selected.
        layer_map: the original Panther's ``{name: module}`` of the layers a selector may match;
            given, only those names (each must be a submodule of ``model``) are candidates.
            ``None``: every submodule.
    """

    def __init__(self, model: nn.Module, layer_map: Mapping[str, nn.Module] | None = None) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"LayerNameResolver needs an nn.Module, got {type(model).__name__}")
        if layer_map is not None and not isinstance(layer_map, Mapping):
            raise TypeError(f"layer_map must be a mapping of layer names to modules, got {type(layer_map).__name__}")
        self.model = model
        self.layer_map: dict[str, nn.Module] = dict(layer_map or {})
        self._only = None if layer_map is None else set(self.layer_map)
        for name in self.layer_map:
            self.module(name)  # KeyError with suggestions for a name the model lacks

    def _entries(self, restricted: bool = True) -> list[tuple[list[str], nn.Module]]:
        """``(all names, module)`` for each distinct submodule, in model order (``layer_map``'s only if restricted)."""
        by_module: dict[int, tuple[list[str], nn.Module]] = {}
        for name, module in self.model.named_modules(remove_duplicate=False):
            if name:
                by_module.setdefault(id(module), ([], module))[0].append(name)
        entries = list(by_module.values())
        if restricted and self._only is not None:
            entries = [(names, module) for names, module in entries if self._only.intersection(names)]
        return entries

    def names(self) -> list[str]:
        """Each candidate submodule's first name, in model order."""
        return [names[0] for names, _ in self._entries()]

    def aliases(self, name: str) -> list[str]:
        """All names under which the module called ``name`` is reachable, first name first."""
        target = self.module(name)
        return next(list(names) for names, module in self._entries(restricted=False) if module is target)

    def module(self, name: str) -> nn.Module:
        """The submodule called ``name`` (any alias); ``KeyError`` with suggestions otherwise."""
        if isinstance(name, str) and name:
            try:
                return self.model.get_submodule(name)
            except AttributeError:
                pass
        close = difflib.get_close_matches(str(name), self.names(), n=3)
        hint = f"; did you mean {close}?" if close else ""
        raise KeyError(f"model has no submodule named {name!r}{hint}")

    def type_name(self, name: str) -> str:
        """Class name of the submodule called ``name``."""
        return type(self.module(name)).__name__

    def resolve(self, selector: Selector) -> list[str]:
        """Names matched by ``selector``: model order, one name per module object, maybe empty.

        Strings are regexes over whole dot-separated name components; lists are unions; dicts AND
        ``pattern``/``type``/``contains`` and then pick ``indices`` or a ``range`` of the matches.
        The module docstring states the exact rules.
        """
        validate_selector(selector)
        matches = _dict_predicate(selector) if isinstance(selector, dict) else _names_predicate(selector)
        matched = [names[0] for names, module in self._entries() if matches(names, module)]
        return _pick(selector, matched) if isinstance(selector, dict) else matched


Predicate = Callable[[list[str], nn.Module], bool]


def _names_predicate(patterns: str | Sequence[str]) -> Predicate:
    regexes = [compile_pattern(p) for p in ([patterns] if isinstance(patterns, str) else patterns)]
    return lambda names, _module: any(regex.search(name) for regex in regexes for name in names)


def _dict_predicate(selector: dict[str, Any]) -> Predicate:
    """AND of the dict's filters (each an OR over its list)."""
    checks: list[Predicate] = []
    if "pattern" in selector:
        checks.append(_names_predicate(_as_list("pattern", selector["pattern"])))
    if "contains" in selector:
        parts = _as_list("contains", selector["contains"])
        checks.append(lambda names, _module: any(part in name for part in parts for name in names))
    if "type" in selector:
        kinds = [_type_matcher(kind) for kind in _as_list("type", selector["type"])]
        checks.append(lambda _names, module: any(kind(module) for kind in kinds))
    return lambda names, module: all(check(names, module) for check in checks)


def _pick(selector: dict[str, Any], matched: list[str]) -> list[str]:
    if "indices" in selector:
        positions = set()
        for index in _as_list("indices", selector["indices"]):
            if not -len(matched) <= index < len(matched):
                raise SelectorIndexError(
                    f"selector index {index} is out of range (out of bounds): {len(matched)} layers matched "
                    f"{selector!r}"
                )
            positions.add(index % len(matched))
        return [matched[i] for i in sorted(positions)]
    if "range" in selector:
        return matched[slice(*selector["range"])]
    return matched
