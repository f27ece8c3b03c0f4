"""Lightning integration: tune sketched layers from the validation loop of a ``Trainer``."""

from panther._lazy import lazy_exports

_EXPORTS = {
    "SketchTuneCallback": ".callback",
    "SketchTuner": ".tuner_hook",
    "load_sketched_checkpoint": ".checkpoint",
    "SketchCheckpointMixin": ".checkpoint",
    "install_sketch_loading": ".checkpoint",
    "SketchTuneReport": ".session",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = list(_EXPORTS)
