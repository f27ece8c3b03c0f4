"""The pure pieces of whole-model allocation (driven by :mod:`panther.tuner._allocate`).

:mod:`.curves` predicts, without building anything, how much output error each rank of a linear
layer costs; :mod:`.planner` turns such per-layer options into whole-model plans along one monotone
knob, so a caller verifies a few plans with full evaluations instead of probing every layer.
"""

from panther.tuner._allocation.curves import rank_error_curve, sketch_rank
from panther.tuner._allocation.planner import AllocationPath, Option, Plan

__all__ = ["AllocationPath", "Option", "Plan", "rank_error_curve", "sketch_rank"]
