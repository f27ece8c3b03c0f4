"""Zoo fixtures: models are tiny, so each test builds its own (see ``zoo_models``)."""

from __future__ import annotations

import os
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(__file__))

warnings.filterwarnings("ignore", message=".*nested tensors is in prototype stage.*")
warnings.filterwarnings("ignore", message=".*enable_nested_tensor is True.*")

from zoo_models import ZOO, ZooModel  # noqa: E402


@pytest.fixture
def zoo_model(request) -> ZooModel:
    return ZOO[request.param]
