"""Automatic selection of sketching parameters (see ``docs``/the API spec for the full contract)."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SKAutoTuner": ".tuner",
    "LayerConfig": ".configs",
    "TuningConfigs": ".configs",
    "LayerNameResolver": ".selectors",
    "ParamsResolver": ".auto",
    "ParamSpec": ".params",
    "Categorical": ".params",
    "Int": ".params",
    "Float": ".params",
    "SearchAlgorithm": ".search",
    "OptunaSearch": ".search",
    "ModelVisualizer": ".visualizer",
    "decide_strategy": ".strategy",
    "TuningDecision": ".strategy",
    "AllocationUnavailableError": ".strategy",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
