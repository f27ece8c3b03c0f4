"""Shared test set-up: one torch thread (tiny matmuls on 2 busy cores are far slower with 2)."""

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
