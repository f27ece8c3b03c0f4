"""Import paths of the original Panther auto-tuner, kept so existing code keeps working.

New code should import from :mod:`panther.tuner`.
"""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SKAutoTuner": "panther.tuner.tuner",
    "LayerConfig": "panther.tuner.configs",
    "TuningConfigs": "panther.tuner.configs",
    "LayerNameResolver": "panther.tuner.selectors",
    "ParamsResolver": "panther.tuner._auto",
    "SearchAlgorithm": "panther.tuner.search",
    "OptunaSearch": "panther.tuner.search",
    "ModelVisualizer": "panther.tuner.visualizer",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
