"""Original-Panther path for the search algorithms (its in-package README documents this import)."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SearchAlgorithm": "panther.tuner.search",
    "OptunaSearch": "panther.tuner.search",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
