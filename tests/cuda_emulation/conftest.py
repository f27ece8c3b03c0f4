"""Lets the emulation tests share tests/ops' independent float64 reference (sketch_reference.py)."""

import sys
from pathlib import Path

_OPS_TESTS = str(Path(__file__).resolve().parents[1] / "ops")
if _OPS_TESTS not in sys.path:
    sys.path.append(_OPS_TESTS)
