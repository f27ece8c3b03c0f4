"""Search-space specifications: :class:`Categorical`, :class:`Int` and :class:`Float`, and :data:`Space`.

The bottom of the package (it imports nothing from Panther): layer kinds describe their spaces with
these specs and the tuner searches them, so both import them from here (:mod:`panther.tuner` and
:mod:`panther.tuner.params` re-export them under the spec's paths).

A spec is validated when it is built, so a bad range fails where it is written and not deep
inside Optuna half-way through a tuning run. Every spec can

* enumerate its values (``values()``) for search algorithms that only understand lists,
* describe itself as an Optuna distribution (``to_optuna()``), and
* round-trip through plain dicts (``to_dict()`` / ``ParamSpec.from_dict``) for YAML and CLIs.

Optuna's ``CategoricalDistribution`` only stores ``None``/``bool``/``int``/``float``/``str``.
A :class:`Categorical` holding anything else (tuples, classes, numpy scalars, ...), or holding
values that compare equal across types (``0`` and ``False``), is handed to Optuna as the
*indices* ``0..n-1`` of its choices; :meth:`ParamSpec.decode` maps a sampled index back to the
choice and :meth:`ParamSpec.encode` does the reverse. Optuna's own records (dashboards,
``trials_dataframe``) then show indices for that parameter.
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # Optuna is imported only when a distribution is actually requested.
    from optuna.distributions import BaseDistribution

#: Choice types Optuna's ``CategoricalDistribution`` can store as they are.
_OPTUNA_NATIVE = (bool, int, float, str, type(None))
#: Relative tolerance for float range arithmetic (``0.1 * 9 != 0.9`` in binary).
_FLOAT_TOL = 1e-9


class ParamSpec(abc.ABC):
    """One hyperparameter's search space."""

    @abc.abstractmethod
    def default(self) -> Any:
        """Value used without tuning (``replace_without_tuning``)."""

    @abc.abstractmethod
    def values(self) -> list[Any] | None:
        """All values in order, or ``None`` when the space is continuous."""

    @abc.abstractmethod
    def contains(self, value: Any) -> bool:
        """Whether ``value`` lies in this space."""

    @abc.abstractmethod
    def to_optuna(self) -> BaseDistribution:
        """The equivalent Optuna distribution (see :meth:`decode` for what it samples)."""

    @abc.abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """Plain-dict form, inverse of :meth:`ParamSpec.from_dict`."""

    def decode(self, optuna_value: Any) -> Any:
        """Map a value sampled from :meth:`to_optuna` to the user-facing value."""
        return optuna_value

    def encode(self, value: Any) -> Any:
        """Map a user-facing value to what :meth:`to_optuna`'s distribution stores."""
        return value

    @abc.abstractmethod
    def _key(self) -> tuple[Any, ...]:
        """Fields that define equality."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        try:
            return hash((type(self).__name__, self._key()))
        except TypeError:  # unhashable categorical choices
            return hash((type(self).__name__, len(self._key()[0])))

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> ParamSpec:
        """Build a spec from ``{"type": "categorical"|"int"|"float", ...}``."""
        if not isinstance(data, Mapping):
            raise TypeError(f"a parameter spec dict is required, got {type(data).__name__}: {data!r}")
        kind = data.get("type")
        factories = {"categorical": Categorical, "int": Int, "float": Float}
        if not isinstance(kind, str) or kind.lower() not in factories:
            raise ValueError(f"spec {dict(data)!r}: 'type' must be one of {sorted(factories)}")
        cls = factories[kind.lower()]
        allowed = {"categorical": {"choices"}, "int": {"low", "high", "step", "log"}}.get(
            kind.lower(), {"low", "high", "step", "log"}
        )
        fields = {k: v for k, v in data.items() if k != "type"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"spec {dict(data)!r}: unknown keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**fields)


class Categorical(ParamSpec):
    """A parameter taking one of ``choices`` (tried in the given order by grid-like searches)."""

    def __init__(self, choices: Sequence[Any]) -> None:
        if isinstance(choices, (str, bytes)):
            raise TypeError(
                f"Categorical choices must be a list or tuple, got the string {choices!r}; "
                f"write Categorical([{choices!r}]) for a single choice"
            )
        if not isinstance(choices, Sequence):
            raise TypeError(f"Categorical choices must be a list or tuple, got {type(choices).__name__}")
        self.choices: list[Any] = list(choices)  # a list, as in the original Panther
        if not self.choices:
            raise ValueError("Categorical needs at least one choice")
        self._by_index = _needs_index_encoding(self.choices)

    def default(self) -> Any:
        return self.choices[0]

    def values(self) -> list[Any]:
        return list(self.choices)

    def contains(self, value: Any) -> bool:
        return _index_of(self.choices, value) is not None

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import CategoricalDistribution

        if self._by_index:
            return CategoricalDistribution(tuple(range(len(self.choices))))
        return CategoricalDistribution(tuple(self.choices))

    def decode(self, optuna_value: Any) -> Any:
        return self.choices[optuna_value] if self._by_index else optuna_value

    def encode(self, value: Any) -> Any:
        if not self._by_index:
            return value
        index = _index_of(self.choices, value)
        if index is None:
            raise ValueError(f"{value!r} is not one of {self!r}")
        return index

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}

    def _key(self) -> tuple[Any, ...]:
        return (tuple(self.choices),)

    def __repr__(self) -> str:
        return f"Categorical({self.choices!r})"


class Int(ParamSpec):
    """An integer in ``[low, high]`` (both inclusive) on the grid ``low, low+step, ...``.

    ``high - low`` must be a multiple of ``step`` (Optuna's rule; the error names the nearest
    valid ``high``). ``log=True`` samples on a log scale and needs ``low >= 1`` and ``step == 1``.
    """

    def __init__(self, low: int, high: int, step: int = 1, log: bool = False) -> None:
        self.low = _as_int("low", low)
        self.high = _as_int("high", high)
        self.step = _as_int("step", step)
        self.log = _as_bool("log", log)
        if self.low > self.high:
            raise ValueError(f"Int: low ({self.low}) must be <= high ({self.high})")
        if self.step < 1:
            raise ValueError(f"Int: step must be >= 1, got {self.step}")
        if self.log and self.low <= 0:
            raise ValueError(f"Int: log=True needs low >= 1 (log=True requires low > 0), got low={self.low}")
        if self.log and self.step != 1:
            raise ValueError("Int: log=True requires step=1 (Optuna cannot sample a stepped log range), "
                             f"got step={self.step}")
        span = self.high - self.low
        if span % self.step:
            below = self.low + span // self.step * self.step
            raise ValueError(
                f"Int({self.low}, {self.high}, step={self.step}): high - low must be a multiple of step; "
                f"use high={below} or high={below + self.step}"
            )

    def default(self) -> int:
        return self.low

    def values(self) -> list[int]:
        return list(range(self.low, self.high + 1, self.step))

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return False
        return self.low <= value <= self.high and (value - self.low) % self.step == 0

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import IntDistribution

        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "int", "low": self.low, "high": self.high}
        if self.step != 1:
            data["step"] = self.step
        if self.log:
            data["log"] = True
        return data

    def _key(self) -> tuple[Any, ...]:
        return (self.low, self.high, self.step, self.log)

    def __repr__(self) -> str:
        extra = (f", step={self.step}" if self.step != 1 else "") + (", log=True" if self.log else "")
        return f"Int({self.low}, {self.high}{extra})"


class Float(ParamSpec):
    """A float in ``[low, high]``: continuous when ``step`` is ``None``, else on a grid.

    With a ``step``, ``high - low`` must be a multiple of it (up to rounding) and ``log`` must
    be ``False`` (Optuna's rules). ``log=True`` needs ``low > 0``.
    """

    def __init__(self, low: float, high: float, step: float | None = None, log: bool = False) -> None:
        self.low = _as_float("low", low)
        self.high = _as_float("high", high)
        self.step = None if step is None else _as_float("step", step)
        self.log = _as_bool("log", log)
        if self.low > self.high:
            raise ValueError(f"Float: low ({self.low}) must be <= high ({self.high})")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"Float: step must be > 0, got {self.step}")
        if self.log and self.low <= 0:
            raise ValueError(f"Float: log=True requires low > 0, got low={self.low}")
        if self.log and self.step is not None:
            raise ValueError("Float: step and log=True cannot be combined (Optuna's rule)")
        if self.step is not None:
            ratio = (self.high - self.low) / self.step
            if abs(ratio - round(ratio)) > _FLOAT_TOL * max(1.0, ratio):
                below = self.low + math.floor(ratio) * self.step
                raise ValueError(
                    f"Float({self.low}, {self.high}, step={self.step}): high - low must be a multiple of step; "
                    f"use high={_tidy(below)} or high={_tidy(below + self.step)}"
                )

    @property
    def _count(self) -> int:
        assert self.step is not None
        return int(round((self.high - self.low) / self.step)) + 1

    def default(self) -> float:
        return self.low

    def values(self) -> list[float] | None:
        if self.step is None:
            return None
        return [_tidy(self.low + i * self.step) for i in range(self._count)]

    def contains(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        tol = _FLOAT_TOL * max(1.0, abs(self.low), abs(self.high))
        if not self.low - tol <= value <= self.high + tol:
            return False
        if self.step is None:
            return True
        offset = (value - self.low) / self.step
        return abs(offset - round(offset)) <= _FLOAT_TOL * max(1.0, offset)

    def to_optuna(self) -> BaseDistribution:
        from optuna.distributions import FloatDistribution

        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"type": "float", "low": self.low, "high": self.high}
        if self.step is not None:
            data["step"] = self.step
        if self.log:
            data["log"] = True
        return data

    def _key(self) -> tuple[Any, ...]:
        return (self.low, self.high, self.step, self.log)

    def __repr__(self) -> str:
        extra = (f", step={self.step}" if self.step is not None else "") + (", log=True" if self.log else "")
        return f"Float({self.low}, {self.high}{extra})"


#: A layer's search space: parameter name -> its spec.
Space = dict[str, ParamSpec]


def as_spec(value: Any) -> ParamSpec:
    """Normalise one ``params`` entry: a spec stays, a list/tuple is the legacy ``Categorical``."""
    if isinstance(value, ParamSpec):
        return value
    if isinstance(value, (list, tuple)):
        return Categorical(value)
    raise TypeError(
        f"a parameter space must be a Categorical/Int/Float spec or a list of choices, got "
        f"{type(value).__name__}: {value!r} (wrap a fixed value as [value])"
    )


def enumerate_space(space: Mapping[str, ParamSpec]) -> dict[str, list[Any]]:
    """``{name: values}`` for search algorithms that take lists (``accepts_param_specs=False``)."""
    listed: dict[str, list[Any]] = {}
    for name, spec in space.items():
        values = as_spec(spec).values()
        if values is None:
            raise ValueError(
                f"parameter {name!r} is a continuous {spec!r}; this search algorithm needs finite values: "
                "give Float a step or use OptunaSearch"
            )
        listed[name] = values
    return listed


# -- helpers -----------------------------------------------------------------------------------
def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Int: {name} must be an integer, got {type(value).__name__}: {value!r}")
    return int(value)


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"Float: {name} must be a real number, got {type(value).__name__}: {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"Float: {name} must be finite, got {value!r}")
    return float(value)


def _as_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _tidy(value: float) -> float:
    """Drop binary round-off (``0.30000000000000004`` -> ``0.3``) from grid arithmetic."""
    return float(f"{value:.12g}")


def _same(a: Any, b: Any) -> bool:
    """Equality that never raises (numpy arrays, odd ``__eq__``s)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an incomparable pair is simply unequal
        return False


def _index_of(choices: Sequence[Any], value: Any) -> int | None:
    """Index of ``value``, preferring a same-type match so ``True`` finds ``True`` not ``1``."""
    loose = None
    for i, choice in enumerate(choices):
        if _same(choice, value):
            if type(choice) is type(value):
                return i
            loose = i if loose is None else loose
    return loose


def _needs_index_encoding(choices: Sequence[Any]) -> bool:
    """Reject duplicates; report whether Optuna must see indices instead of the choices."""
    by_index = any(not isinstance(c, _OPTUNA_NATIVE) for c in choices)
    for i, a in enumerate(choices):
        for b in choices[i + 1 :]:
            if _same(a, b):
                if type(a) is type(b):
                    raise ValueError(f"Categorical choices contain the duplicate {a!r}: {list(choices)!r}")
                by_index = True  # e.g. 0 and False: Optuna would conflate them
    return by_index
