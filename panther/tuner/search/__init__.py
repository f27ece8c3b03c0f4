"""Search algorithms: the :class:`SearchAlgorithm` interface and the Optuna-backed default."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SearchAlgorithm": ".base",
    "param_space_for": ".base",
    "as_search_algorithm": ".base",
    "OptunaSearch": ".optuna_search",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
