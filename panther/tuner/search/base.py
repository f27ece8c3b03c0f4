"""The whole contract between ``SKAutoTuner`` and a search algorithm, in one place.

The spec's nine methods are abstract (a custom search must implement them). Every other hook the
tuner calls is declared here with a documented default, so a custom search sees the whole contract
in this file and overrides only what it can do better, as with Optuna's ``BaseSampler`` or
Lightning's ``Callback``. The tuner calls, per layer group:

1. :meth:`~SearchAlgorithm.start_group`, then :meth:`~SearchAlgorithm.stored_results` (results a
   resumed study already holds) and :meth:`~SearchAlgorithm.add_known` for probes it evaluated itself;
2. while not :meth:`~SearchAlgorithm.is_finished`: :meth:`~SearchAlgorithm.get_next_params`,
   :meth:`~SearchAlgorithm.known_result` (an identical proposal evaluated elsewhere), the
   evaluation, :meth:`~SearchAlgorithm.publish` (the tuner's record of it) and
   :meth:`~SearchAlgorithm.update` (its score; NaN for a failed trial);
3. :meth:`~SearchAlgorithm.stored_results` again (what other workers found meanwhile).

:meth:`~SearchAlgorithm.get_resource` (the spec's optional method) is passed to evaluation
functions taking ``resource=`` when a search overrides it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from panther.space import ParamSpec, as_spec, enumerate_space


@dataclass(frozen=True)
class KnownResult:
    """A configuration evaluated outside this run's loop (an earlier run, another worker).

    ``record`` holds the tuner's fields of that evaluation (``status``, ``accuracy``, ``speed``,
    ``weights``, ...) as :meth:`SearchAlgorithm.publish` received them.
    """

    params: dict[str, Any]
    score: float | None
    record: dict[str, Any] = field(default_factory=dict)


class SearchAlgorithm(abc.ABC):
    """Proposes parameters for one layer group at a time and learns from their scores.

    Only the abstract methods (the spec's) are required; see the module docstring for the order in
    which the tuner calls the rest.
    """

    #: ``True``: the search space arrives as ``Dict[str, ParamSpec]``. ``False`` (the default,
    #: what a plain custom algorithm expects): as ``Dict[str, list]`` of the finite values.
    accepts_param_specs: ClassVar[bool] = False
    #: The tuner maximises its scores; a search set to minimise cannot drive it.
    direction: str = "maximize"

    # -- the spec's methods ----------------------------------------------------------------------
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

    # -- hooks with defaults ---------------------------------------------------------------------
    def start_group(self, group_name: str, param_space: dict[str, Any]) -> None:
        """Begin the layer group ``group_name``. Default: :meth:`initialize` (a fresh search per group)."""
        self.initialize(param_space)

    def add_known(self, params: dict[str, Any], score: float | None, record: dict[str, Any]) -> None:
        """Learn from a configuration the tuner evaluated outside the search (a budget probe).

        Default: :meth:`update` with its score. ``record`` is the tuner's record of it (as for
        :meth:`publish`), for searches that store results.
        """
        if score is not None:
            self.update(params, score)

    def known_result(self, params: dict[str, Any]) -> KnownResult | None:
        """An evaluation of exactly the pending ``params`` found elsewhere, or ``None`` to evaluate them.

        A search sharing its trials with other workers answers with theirs (and may wait for one
        still running). Default: ``None``; duplicates within one run are answered by the tuner.
        """
        return None

    def stored_results(self) -> list[KnownResult]:
        """Results the current group's storage already holds (a resumed run, other workers). Default: none."""
        return []

    def publish(self, record: dict[str, Any]) -> None:
        """Store the tuner's record of the pending proposal with it (read back by :meth:`known_result`
        and :meth:`stored_results`, shown by dashboards). Default: ignored."""
        return None

    def record(self, key: str, value: Any) -> None:
        """Attach a user attribute to the pending proposal. Default: ignored."""
        return None

    def planned_trials(self) -> int | None:
        """The most proposals one group gets (the progress bar's total). Default: unknown, ``None``."""
        return None

    def get_resource(self) -> Any:
        """The spec's optional method: a resource value (e.g. Hyperband's budget) for evaluation
        functions that take ``resource=``. Only passed on when a search overrides it."""
        return None

    @property
    def resource_aware(self) -> bool:
        """Whether this search overrides :meth:`get_resource`."""
        return type(self).get_resource is not SearchAlgorithm.get_resource


def param_space_for(algorithm: SearchAlgorithm, specs: Mapping[str, Any]) -> dict[str, Any]:
    """The search space in the form ``algorithm`` accepts (see ``accepts_param_specs``)."""
    normalised: dict[str, ParamSpec] = {name: as_spec(spec) for name, spec in specs.items()}
    if algorithm.accepts_param_specs:
        return normalised
    return enumerate_space(normalised)


class DuckTypedSearch(SearchAlgorithm):
    """Wraps an object that has the spec's methods without subclassing :class:`SearchAlgorithm`.

    Only the spec's contract is used: its methods, and ``get_resource`` when it has one (the spec's
    optional method). The hooks keep their defaults.
    """

    def __init__(self, search: Any) -> None:
        self.search = search
        self.accepts_param_specs = bool(getattr(search, "accepts_param_specs", False))  # type: ignore[misc]
        self.direction = getattr(search, "direction", "maximize")
        self._resource = getattr(search, "get_resource", None)

    def initialize(self, param_space: dict[str, Any]) -> None:
        self.search.initialize(param_space)

    def get_next_params(self) -> dict[str, Any] | None:
        return self.search.get_next_params()

    def update(self, params: dict[str, Any], score: float) -> None:
        self.search.update(params, score)

    def save_state(self, filepath: str) -> None:
        self.search.save_state(filepath)

    def load_state(self, filepath: str) -> None:
        self.search.load_state(filepath)

    def get_best_params(self) -> dict[str, Any] | None:
        return self.search.get_best_params()

    def get_best_score(self) -> float | None:
        return self.search.get_best_score()

    def reset(self) -> None:
        self.search.reset()

    def is_finished(self) -> bool:
        return self.search.is_finished()

    def get_resource(self) -> Any:
        return self._resource() if callable(self._resource) else None

    @property
    def resource_aware(self) -> bool:
        return callable(self._resource)


def as_search_algorithm(search: Any) -> SearchAlgorithm:
    """``search`` itself if it is a :class:`SearchAlgorithm`, else a :class:`DuckTypedSearch` around it."""
    return search if isinstance(search, SearchAlgorithm) else DuckTypedSearch(search)
