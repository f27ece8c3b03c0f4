"""Panther: sketched (randomized low-rank) layers for PyTorch and an auto-tuner that picks them.

Subpackages, bottom to top (each imports only from those before it): :mod:`panther.space` (parameter
specs), :mod:`panther.ops` (the fused sketched-linear op and its CUDA kernels), :mod:`panther.nn`
(layers), :mod:`panther.kinds` (the layer-kind registry), :mod:`panther.plans` (plans: which layer
becomes what), :mod:`panther.tuner` (``SKAutoTuner``). Imports are lazy: ``import panther`` loads
neither Optuna nor any compiled extension.
"""

__version__ = "0.1.0"

_EXPORTS = {
    "nn": "panther.nn",
    "ops": "panther.ops",
    "tuner": "panther.tuner",
}


def __getattr__(name: str):
    import importlib

    if name in _EXPORTS:
        return importlib.import_module(_EXPORTS[name])
    raise AttributeError(f"module 'panther' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
