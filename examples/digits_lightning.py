"""A tiny, offline Lightning set-up shared by the ``panther_lightning`` examples and tests.

The 8x8 scikit-learn digits (1,797 images, shipped with scikit-learn) and a small MLP train to
~95% validation accuracy in a few seconds on one CPU thread, which is enough to see sketched
layers trade accuracy for speed and size.
"""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class DigitsDataModule(pl.LightningDataModule):
    """sklearn digits, pixel values scaled to [0, 1], a fixed (seeded) train/validation split.

    Args:
        batch_size: mini-batch size of both dataloaders.
        val_fraction: share of the 1,797 images held out for validation.
        seed: seed of the split, so every run sees the same validation set.
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.25, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        y = torch.tensor(digits.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_val = int(len(x) * self.val_fraction)
        val, train = order[:n_val], order[n_val:]
        self.train_set = TensorDataset(x[train], y[train])
        self.val_set = TensorDataset(x[val], y[val])

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class DigitsModule(pl.LightningModule):
    """Steps shared by the digits models: ``self.net`` maps flat 64-pixel rows to 10 logits.

    Logs ``train_loss``, ``val_loss`` and ``val_acc``; ``hparams.lr`` is the Adam learning rate.
    """

    net: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", F.cross_entropy(logits, y), sync_dist=True)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean(), sync_dist=True, prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)


class DigitsClassifier(DigitsModule):
    """A 64 -> hidden -> hidden -> 10 MLP.

    Args:
        hidden: width of the two hidden layers (wide enough for a low-rank layer to be cheaper).
        lr: Adam learning rate.
    """

    def __init__(self, hidden: int = 256, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(64, hidden), nn.ReLU(),
            nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )


class DigitsCNN(DigitsModule):
    """Two 3x3 convolutions, 2x2 max-pooling and a two-layer head on the 1x8x8 digit images.

    Same steps and logs as the MLP. The second convolution (``channels -> 2*channels``) and the
    first Linear (``2*channels*16`` inputs) dominate the cost, so both a sketched ``Conv2d`` and a
    sketched ``Linear`` have room to be cheaper than the dense layer.

    Args:
        channels: output channels of the first convolution (the second has twice as many).
        hidden: width of the hidden fully connected layer.
        lr: Adam learning rate.
    """

    def __init__(self, channels: int = 32, hidden: int = 128, lr: float = 3e-3) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(2 * channels * 16, hidden), nn.ReLU(),
            nn.Linear(hidden, 10),
        )
