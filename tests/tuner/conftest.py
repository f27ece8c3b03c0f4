"""Tuner fixtures: a digits MLP trained once per session (about a second on one thread)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
import torch
from pg_server import postgres  # noqa: F401  (a local PostgreSQL server, for the many-workers tests)
from torch import nn

from panther.tuner import SearchAlgorithm

Tensors = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class DigitsMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(x).argmax(dim=1) == y).float().mean().item()


@pytest.fixture(scope="session")
def digits() -> Tensors:
    """Train/validation split of sklearn's 8x8 digits: 1437 / 360 samples, pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    features, labels = load_digits(return_X_y=True)
    x = torch.tensor(features / 16.0, dtype=torch.float32)
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, val = order[:1437], order[1437:]
    return x[train], y[train], x[val], y[val]


@pytest.fixture(scope="session")
def trained_digits(digits: Tensors) -> tuple[dict[str, torch.Tensor], float]:
    """State dict of a trained 64-256-256-10 MLP and its validation accuracy."""
    x_train, y_train, x_val, y_val = digits
    torch.manual_seed(0)
    model = DigitsMLP()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for batch in torch.randperm(len(x_train)).split(128):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x_train[batch]), y_train[batch]).backward()
            optimizer.step()
    return copy.deepcopy(model.state_dict()), accuracy(model, x_val, y_val)


@pytest.fixture
def digits_model(trained_digits) -> DigitsMLP:
    """A fresh copy of the trained MLP (tests may modify it)."""
    model = DigitsMLP()
    model.load_state_dict(trained_digits[0])
    return model


@pytest.fixture
def digits_mlp_class() -> type:
    """The (untrained) model class, for fresh instances."""
    return DigitsMLP


@pytest.fixture
def dense_accuracy(trained_digits) -> float:
    return trained_digits[1]


@pytest.fixture
def accuracy_fn(digits: Tensors) -> Callable[[nn.Module], float]:
    """Validation accuracy (360 samples), as a user would write it."""
    _, _, x_val, y_val = digits
    return lambda model: accuracy(model, x_val, y_val)


class ScriptedSearch(SearchAlgorithm):
    """Proposes a fixed list of parameter dicts (per group) and records what it is told."""

    def __init__(self, proposals: list[dict[str, Any]]) -> None:
        self.proposals = [dict(p) for p in proposals]
        self.groups: list[str] = []
        self.spaces: list[dict[str, Any]] = []
        self.told: list[tuple[dict[str, Any], float]] = []
        self._queue: list[dict[str, Any]] = []

    def initialize(self, param_space: dict[str, Any]) -> None:
        self.spaces.append(param_space)
        self._queue = [dict(p) for p in self.proposals]

    def start_group(self, group_name: str, param_space: dict[str, Any]) -> None:
        self.groups.append(group_name)
        self.initialize(param_space)

    def get_next_params(self) -> dict[str, Any] | None:
        return self._queue.pop(0) if self._queue else None

    def update(self, params: dict[str, Any], score: float) -> None:
        self.told.append((dict(params), score))

    def is_finished(self) -> bool:
        return not self._queue

    def save_state(self, filepath: str) -> None:
        raise NotImplementedError

    def load_state(self, filepath: str) -> None:
        raise NotImplementedError

    def get_best_params(self) -> dict[str, Any] | None:
        return None

    def get_best_score(self) -> float | None:
        return None

    def reset(self) -> None:
        self._queue = []


@pytest.fixture
def scripted_search():
    return ScriptedSearch
