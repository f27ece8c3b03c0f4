"""Automatic selection of sketching parameters (see ``docs``/the API spec for the full contract)."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SKAutoTuner": ".tuner",
    "LayerConfig": ".configs",
    "TuningConfigs": ".configs",
    "LayerNameResolver": ".selectors",
    "ParamsResolver": "._auto",
    "ParamSpec": "panther.space",
    "Categorical": "panther.space",
    "Int": "panther.space",
    "Float": "panther.space",
    "SearchAlgorithm": ".search",
    "OptunaSearch": ".search",
    "ModelVisualizer": ".visualizer",
    "decide_strategy": ".strategy",
    "names_search_algorithm": ".strategy",
    "TuningDecision": ".strategy",
    "AllocationUnavailableError": ".strategy",
    "TuningResults": ".results",
    "layer_bytes": "._layers",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
