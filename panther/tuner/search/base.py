"""The interface every search algorithm implements, plus the hooks the tuner uses around it."""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

from panther.tuner.params import ParamSpec, as_spec, enumerate_space


class SearchAlgorithm(abc.ABC):
    """Proposes parameters for one layer group at a time and learns from their scores.

    The tuner calls :meth:`start_group` once per layer group, then alternates
    :meth:`get_next_params` and :meth:`update` until :meth:`is_finished` or ``None``.
    Only the abstract methods are required; the rest have defaults.
    """

    #: ``True``: the search space arrives as ``Dict[str, ParamSpec]``. ``False`` (the default,
    #: what a plain custom algorithm expects): as ``Dict[str, list]`` of the finite values.
    accepts_param_specs: ClassVar[bool] = False

    @abc.abstractmethod
    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start over on ``param_space``."""

    @abc.abstractmethod
    def get_next_params(self) -> dict[str, Any] | None:
        """The next parameters to evaluate, or ``None`` when finished."""

    @abc.abstractmethod
    def update(self, params: dict[str, Any], score: float) -> None:
        """Report the score of ``params``."""

    @abc.abstractmethod
    def save_state(self, filepath: str) -> None:
        """Write what is needed to resume to ``filepath``."""

    @abc.abstractmethod
    def load_state(self, filepath: str) -> None:
        """Restore what :meth:`save_state` wrote."""

    @abc.abstractmethod
    def get_best_params(self) -> dict[str, Any] | None:
        """Best parameters seen so far (``None`` before any result)."""

    @abc.abstractmethod
    def get_best_score(self) -> float | None:
        """Best score seen so far."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Return to the initial state."""

    @abc.abstractmethod
    def is_finished(self) -> bool:
        """Whether the search budget is spent."""

    def start_group(self, group_name: str, param_space: dict[str, Any]) -> None:
        """Begin the layer group ``group_name``; by default just :meth:`initialize`."""
        self.initialize(param_space)

    def record(self, key: str, value: Any) -> None:
        """Attach a per-trial attribute (accuracy, speed, ...) to the pending proposal; ignored by default."""


def param_space_for(algorithm: SearchAlgorithm, specs: Mapping[str, Any]) -> dict[str, Any]:
    """The search space in the form ``algorithm`` accepts (see ``accepts_param_specs``)."""
    normalised: dict[str, ParamSpec] = {name: as_spec(spec) for name, spec in specs.items()}
    if getattr(algorithm, "accepts_param_specs", False):
        return normalised
    return enumerate_space(normalised)
