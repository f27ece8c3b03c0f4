"""Original-Panther path for the configuration classes, the parameter specs and the resolvers."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "LayerConfig": "panther.tuner.configs",
    "TuningConfigs": "panther.tuner.configs",
    "LayerNameResolver": "panther.tuner.selectors",
    "ParamsResolver": "panther.tuner._auto",
    "ParamSpec": "panther.space",
    "Categorical": "panther.space",
    "Int": "panther.space",
    "Float": "panther.space",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
