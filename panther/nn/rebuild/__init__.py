"""Former home of plans; they moved to :mod:`panther.plans` and module swapping to :mod:`panther.nn.surgery`.

Plans need the layer-kind registry, which sits above :mod:`panther.nn`, so this module only says
where each name went (importing it from here would be an upward import).
"""

from panther._lazy import lazy_exports

_MOVED = {
    **dict.fromkeys(["Plan", "sketch_plan", "validate_plan", "apply_plan", "plan_from_state_dict",
                     "rebuild_sketched_layers", "save_plan", "load_plan"], "panther.plans"),
    **dict.fromkeys(["replace_module", "module_paths"], "panther.nn.surgery"),
}
__getattr__, __dir__ = lazy_exports(__name__, {}, _MOVED)
