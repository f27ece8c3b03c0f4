"""Sketched drop-in replacements for dense ``torch.nn`` layers."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SKLinear": ".linear",
    "SKConv2d": ".conv",
    "RandMultiHeadAttention": ".attention",
    "Int8Linear": ".quantized",
    "Int8SKLinear": ".quantized",
    "SmoothInt8Linear": ".quantized",
    "SketchedModule": ".base",
    "replace_module": ".surgery",
}
#: Plans need the layer-kind registry above this package (see docs/architecture.md).
_MOVED = {"rebuild_sketched_layers": "panther.plans"}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, _MOVED)
__all__ = list(_EXPORTS)
