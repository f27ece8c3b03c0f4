"""The pure pieces of whole-model allocation (driven by :mod:`panther.tuner._allocate`).

:mod:`.path` orders the least-cost choices of per-layer options along one monotone knob, so a
caller verifies a few of them (whole-model plans) with full evaluations instead of probing every
layer; :mod:`.profile` measures what the kinds cannot predict (each rank's predicted error comes
from :mod:`panther.nn.rank_curves`).
"""

from panther.tuner._allocation.path import AllocationPath, Option, PathPoint

__all__ = ["AllocationPath", "Option", "PathPoint"]
