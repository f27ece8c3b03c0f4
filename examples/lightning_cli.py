"""LightningCLI with sketch tuning as a plain trainer callback.

Run it with the bundled config (tunes at the end of training, prints a results table)::

    python examples/lightning_cli.py fit --config examples/lightning_cli.yaml

or with flags only::

    python examples/lightning_cli.py fit --trainer.max_epochs=3 \\
        --trainer.callbacks+=panther_lightning.SketchTuneCallback \\
        --trainer.callbacks.monitor=val_acc --trainer.callbacks.max_drop=0.02

``python examples/lightning_cli.py fit --trainer.callbacks+=panther_lightning.SketchTuneCallback --help``
lists and explains every option of the callback.
"""

from __future__ import annotations

import os
import sys

import torch
from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_lightning import DigitsClassifier, DigitsDataModule  # noqa: E402


def main(args: list[str] | None = None) -> LightningCLI:
    """Build (and, with a subcommand, run) the CLI; ``args`` replaces ``sys.argv[1:]`` (for tests)."""
    return LightningCLI(DigitsClassifier, DigitsDataModule, args=args, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
