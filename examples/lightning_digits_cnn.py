"""Sketch-tune a small CNN's Conv2d and Linear layers with data-aware initialisation.

    python examples/lightning_digits_cnn.py

Trains a two-conv CNN on the scikit-learn digits (1x8x8 images, offline, CPU), then
``SketchTuneCallback`` replaces its 3x3 convolutions and its fully connected layers by sketched
layers. ``params="auto"`` proposes only ranks cheaper than each dense layer, and with
``calibration_batches`` every candidate starts from the covariance-weighted SVD (``init="data_svd"``)
of the trained weights, measured on the first training batches. The fastest plan losing at most
2 points of validation accuracy is kept.
"""

from __future__ import annotations

import os
import sys
import tempfile

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from digits_lightning import DigitsCNN, DigitsDataModule  # noqa: E402

from panther.nn.conv import conv_flops_ratio  # noqa: E402
from panther_lightning import SketchTuneCallback  # noqa: E402

CONFIGS = [
    {"layer_names": {"type": "Conv2d"}, "params": "auto", "separate": True},
    {"layer_names": {"type": "Linear"}, "params": "auto", "separate": True},
]


def print_conv_break_even(model: nn.Module) -> None:
    """Largest rank for which each sketched convolution still needs fewer multiply-adds than the dense one."""
    for name, layer in model.named_modules():
        if isinstance(layer, nn.Conv2d):
            args = (layer.in_channels, layer.out_channels, layer.kernel_size, layer.groups, 1)
            cheaper = [k for k in range(1, layer.out_channels + 1) if conv_flops_ratio(*args, k) < 1]
            print(f"{name}: {layer.in_channels}->{layer.out_channels} {layer.kernel_size}, "
                  f"cheaper up to low_rank={max(cheaper, default=0)} (num_terms=1)")


def main() -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0)
    root = tempfile.mkdtemp(prefix="panther_cnn_")
    callback = SketchTuneCallback(configs=CONFIGS, monitor="val_acc", max_drop=0.02, objective="speed",
                                  n_trials=6, timing_repeats=9, calibration_batches=8, verbose=False)
    trainer = pl.Trainer(max_epochs=4, accelerator="cpu", logger=CSVLogger(root), callbacks=[callback],
                         enable_progress_bar=False, enable_model_summary=False)
    model = DigitsCNN(channels=32, hidden=128)
    print_conv_break_even(model)
    trainer.fit(model, DigitsDataModule())

    print("\nSearch spaces (params='auto', data-aware):")
    for config in callback.tuner.getConfigs():
        print(f"  {config.layer_names}: low_rank in {config.params['low_rank'].values()}, "
              f"init {config.params['init'].values()}")
    print("\nPer-layer search results\n" + callback.tuner.summary())
    print("\nApplied parameters:", callback.best_params or "none (kept dense)")
    report = callback.report
    print(f"dense val_acc {report.dense_metric:.4f}, tuned val_acc {report.tuned_metric:.4f}, "
          f"weights {report.dense_bytes} -> {report.tuned_bytes}, "
          f"speed-up {'-' if report.speedup is None else f'x{report.speedup:.2f}'}")


if __name__ == "__main__":
    main()
