"""scikit-learn's bundled digits set (8x8 images, 1797 samples): offline, split and scaled once.

Shared by the examples and the benchmarks so that every one of them sees the same split.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DigitsSplit:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int = 0, image: bool = False) -> DigitsSplit:
    """60/20/20 train/val/test split; features scaled to [0, 1]; ``image=True`` gives (N, 1, 8, 8)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    if image:
        x = x.view(-1, 1, 8, 8)
    n_train, n_val = int(0.6 * len(x)), int(0.2 * len(x))
    parts = (slice(0, n_train), slice(n_train, n_train + n_val), slice(n_train + n_val, None))
    return DigitsSplit(*(t for part in parts for t in (x[part], y[part])))


def digits_mlp(hidden: int = 256) -> nn.Sequential:
    """The 64-256-256-10 MLP the issues measure against."""
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 40, lr: float = 2e-3,
          batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Plain Adam training; deterministic for a given seed."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(batch_size):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was_training = model.training
    model.eval()
    correct = (model(x).argmax(dim=-1) == y).float().mean().item()
    model.train(was_training)
    return correct
