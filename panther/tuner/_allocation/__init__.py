"""The pure pieces of whole-model allocation (driven by :mod:`panther.tuner._allocate`).

:mod:`.planner` turns per-layer options into whole-model plans along one monotone knob, so a caller
verifies a few plans with full evaluations instead of probing every layer; :mod:`.profile` measures
what the kinds cannot predict (each rank's predicted error comes from :mod:`panther.nn.rank_curves`).
"""

from panther.tuner._allocation.planner import AllocationPath, Option, Plan

__all__ = ["AllocationPath", "Option", "Plan"]
