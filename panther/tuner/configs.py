"""What to tune: :class:`LayerConfig` (one layer group) and :class:`TuningConfigs` (all of them).

Both are validated when built, before any model is touched, and round-trip through plain dicts so
they can come from YAML files or a command line (``to_dict`` / ``from_dict``).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from panther.space import ParamSpec, as_spec
from panther.tuner.selectors import Selector, validate_selector

AUTO = "auto"

_LAYER_CONFIG_KEYS = ("layer_names", "params", "separate", "copy_weights")


class LayerConfig:
    """One group of layers and the search space of their sketching parameters.

    Args:
        layer_names: a selector (see :mod:`panther.tuner.selectors`).
        params: ``"auto"`` or ``{name: spec}`` where a spec is a :class:`~panther.tuner.Categorical`,
            :class:`~panther.tuner.Int`, :class:`~panther.tuner.Float` or a plain list (legacy
            ``Categorical``). Stored as ``"auto"`` or ``Dict[str, ParamSpec]``.
        separate: tune each selected layer on its own (``True``) or all with shared values.
        copy_weights: initialise the sketched layers from the dense weights.
    """

    def __init__(
        self,
        layer_names: Selector,
        params: str | Mapping[str, Any],
        separate: bool = True,
        copy_weights: bool = True,
    ) -> None:
        validate_selector(layer_names)
        self.layer_names: Selector = _copy_selector(layer_names)
        self.params: str | dict[str, ParamSpec] = _normalise_params(params)
        self.separate = _check_bool("separate", separate)
        self.copy_weights = _check_bool("copy_weights", copy_weights)

    @property
    def is_auto(self) -> bool:
        """Whether the parameter space is generated from the layers (``params="auto"``)."""
        return self.params == AUTO

    def copy(self, **changes: Any) -> LayerConfig:
        """A validated copy with some constructor arguments replaced."""
        unknown = set(changes) - set(_LAYER_CONFIG_KEYS)
        if unknown:
            raise TypeError(f"LayerConfig has no fields {sorted(unknown)}; fields: {list(_LAYER_CONFIG_KEYS)}")
        fields = {key: getattr(self, key) for key in _LAYER_CONFIG_KEYS}
        fields.update(changes)
        return LayerConfig(**fields)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form; ``"type"`` classes in a dict selector are kept as classes."""
        params = self.params if isinstance(self.params, str) else {k: v.to_dict() for k, v in self.params.items()}
        return {
            "layer_names": _copy_selector(self.layer_names),
            "params": params,
            "separate": self.separate,
            "copy_weights": self.copy_weights,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerConfig:
        """Build from ``{"layer_names": ..., "params": ..., ["separate"], ["copy_weights"]}``.

        Parameter values may be specs, lists (legacy ``Categorical``) or spec dicts such as
        ``{"type": "int", "low": 8, "high": 64, "step": 8}``.
        """
        if not isinstance(data, Mapping):
            raise TypeError(f"LayerConfig.from_dict needs a dict, got {type(data).__name__}: {data!r}")
        unknown = set(data) - set(_LAYER_CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown LayerConfig keys {sorted(map(str, unknown))}; "
                             f"allowed: {list(_LAYER_CONFIG_KEYS)}")
        missing = [key for key in ("layer_names", "params") if key not in data]
        if missing:
            raise ValueError(f"LayerConfig dict is missing {missing}: {dict(data)!r}")
        fields = dict(data)
        if isinstance(fields["params"], Mapping):
            fields["params"] = {
                name: ParamSpec.from_dict(spec) if isinstance(spec, Mapping) else spec
                for name, spec in fields["params"].items()
            }
        return cls(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LayerConfig):
            return NotImplemented
        return all(getattr(self, key) == getattr(other, key) for key in _LAYER_CONFIG_KEYS)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return (
            f"LayerConfig(layer_names={self.layer_names!r}, params={self.params!r}, "
            f"separate={self.separate}, copy_weights={self.copy_weights})"
        )


class TuningConfigs:
    """An ordered collection of :class:`LayerConfig`; the editing methods return new collections."""

    def __init__(self, configs: Sequence[LayerConfig]) -> None:
        if isinstance(configs, (LayerConfig, str)) or not isinstance(configs, Sequence):
            raise TypeError(
                f"TuningConfigs takes a list of LayerConfig, got {type(configs).__name__} "
                "(use TuningConfigs.coerce for a single config or dicts)"
            )
        for i, config in enumerate(configs):
            _check_layer_config(config, f"configs[{i}]")
        self.configs: list[LayerConfig] = list(configs)

    @classmethod
    def coerce(cls, value: Any) -> TuningConfigs:
        """Accept a TuningConfigs, a LayerConfig, a dict or a list of LayerConfigs/dicts."""
        if isinstance(value, TuningConfigs):
            return value
        if isinstance(value, LayerConfig):
            return cls([value])
        if isinstance(value, Mapping):
            return cls.from_dict(value) if "configs" in value else cls([LayerConfig.from_dict(value)])
        if isinstance(value, (list, tuple)):
            return cls([item if isinstance(item, LayerConfig) else LayerConfig.from_dict(item) for item in value])
        raise TypeError(
            "tuning configs must be a TuningConfigs, a LayerConfig, a dict or a list of LayerConfigs/dicts, "
            f"got {type(value).__name__}: {value!r}"
        )

    def __len__(self) -> int:
        return len(self.configs)

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return TuningConfigs(self.configs[index])
        return self.configs[index]

    def __iter__(self) -> Iterator[LayerConfig]:
        return iter(self.configs)

    def add(self, config: LayerConfig) -> TuningConfigs:
        """A new collection with ``config`` appended."""
        _check_layer_config(config, "config")
        return TuningConfigs(self.configs + [config])

    def remove(self, index: int) -> TuningConfigs:
        """A new collection without the config at ``index``."""
        configs = list(self.configs)
        del configs[self._index(index)]
        return TuningConfigs(configs)

    def replace(self, index: int, config: LayerConfig) -> TuningConfigs:
        """A new collection with the config at ``index`` replaced by ``config``."""
        _check_layer_config(config, "config")
        configs = list(self.configs)
        configs[self._index(index)] = config
        return TuningConfigs(configs)

    def clone(self) -> TuningConfigs:
        """A deep copy (editing its configs leaves this collection alone)."""
        return copy.deepcopy(self)

    def merge(self, other: TuningConfigs) -> TuningConfigs:
        """This collection's configs followed by ``other``'s."""
        if not isinstance(other, TuningConfigs):
            raise TypeError(f"merge takes a TuningConfigs, got {type(other).__name__}")
        return TuningConfigs(self.configs + other.configs)

    def filter(self, predicate: Callable[[LayerConfig], bool]) -> TuningConfigs:
        """The configs for which ``predicate`` is true."""
        return TuningConfigs([config for config in self.configs if predicate(config)])

    def map(self, transform: Callable[[LayerConfig], LayerConfig]) -> TuningConfigs:
        """``transform`` applied to every config (it must return a LayerConfig)."""
        mapped = [transform(config) for config in self.configs]
        for i, config in enumerate(mapped):
            _check_layer_config(config, f"transform result {i}")
        return TuningConfigs(mapped)

    def to_dict(self) -> dict[str, Any]:
        """``{"configs": [LayerConfig.to_dict(), ...]}``."""
        return {"configs": self.to_list()}

    def to_list(self) -> list[dict[str, Any]]:
        return [config.to_dict() for config in self.configs]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TuningConfigs:
        """Inverse of :meth:`to_dict`."""
        if not isinstance(data, Mapping) or set(data) != {"configs"}:
            raise ValueError(f"TuningConfigs.from_dict needs exactly the key 'configs', got {data!r}")
        return cls.from_list(data["configs"])

    @classmethod
    def from_list(cls, items: Sequence[Mapping[str, Any]]) -> TuningConfigs:
        """Build from a list of :meth:`LayerConfig.to_dict`-style dicts."""
        if not isinstance(items, (list, tuple)):
            raise TypeError(f"TuningConfigs.from_list needs a list of dicts, got {type(items).__name__}")
        return cls([LayerConfig.from_dict(item) for item in items])

    def _index(self, index: int) -> int:
        if isinstance(index, bool) or not isinstance(index, int):
            raise TypeError(f"config index must be an int, got {index!r}")
        if not -len(self.configs) <= index < len(self.configs):
            raise IndexError(f"config index {index} out of range (out of bounds) for {len(self.configs)} configs")
        return index

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TuningConfigs):
            return NotImplemented
        return self.configs == other.configs

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        inner = "".join(f"\n    {config!r}," for config in self.configs)
        return f"TuningConfigs([{inner}\n])" if self.configs else "TuningConfigs([])"


def _normalise_params(params: Any) -> str | dict[str, ParamSpec]:
    if isinstance(params, str):
        if params != AUTO:
            raise ValueError(f"params must be 'auto' or a dict of parameter specs, got the string {params!r}")
        return AUTO
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be 'auto' or a dict of parameter specs, got {type(params).__name__}: {params!r}")
    if not params:
        raise ValueError("params must not be empty: give at least one parameter to tune, or 'auto'")
    specs: dict[str, ParamSpec] = {}
    for name, spec in params.items():
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter names must be non-empty strings, got {name!r}")
        try:
            specs[name] = as_spec(spec)
        except TypeError as err:
            raise TypeError(f"parameter {name!r}: {err}") from None
    return specs


def _copy_selector(selector: Selector) -> Selector:
    """Own copy of a selector (tuples become lists); classes inside stay shared."""
    if isinstance(selector, (list, tuple)):
        return list(selector)
    if isinstance(selector, dict):
        return {key: list(value) if isinstance(value, (list, tuple)) else value for key, value in selector.items()}
    return selector


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"LayerConfig.{name} must be True or False, got {value!r}")
    return value


def _check_layer_config(value: Any, where: str) -> None:
    if not isinstance(value, LayerConfig):
        raise TypeError(f"{where} must be a LayerConfig, got {type(value).__name__}: {value!r}")
