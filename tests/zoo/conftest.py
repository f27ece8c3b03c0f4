"""Zoo fixtures: models are tiny, so each test builds its own; ``transformers`` ones skip without it."""

from __future__ import annotations

import importlib.util
import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")
warnings.filterwarnings("ignore", message=".*enable_nested_tensor is True.*")

from models import ZOO, ZooModel  # noqa: E402

TORCH_ONLY = {"torch_transformer", "torch_encoder", "torch_encoder_norm_first"}
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None


def zoo_params():
    """One ``pytest.param`` per zoo model; ``transformers`` models are skipped cleanly without it."""
    needs = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers (pip install -e '.[test]')")
    return [pytest.param(name, id=name, marks=() if name in TORCH_ONLY else needs) for name in ZOO]


@pytest.fixture
def zoo_model(request) -> ZooModel:
    return ZOO[request.param]
