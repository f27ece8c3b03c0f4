"""calibration_batches: data-aware sketches from the trainer's own training batches, leaving no trace."""

from __future__ import annotations

import copy

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, fit_digits, make_trainer, metrics_rows, without_sketch_columns
from torch import nn

from panther.nn import SKLinear
from panther_lightning import SketchTuneCallback, SketchTuner

CALIBRATION_BATCHES = 4


class DenseSnapshot(pl.Callback):
    """Keeps a copy of the trained dense network; listed before the tuning callback, so it runs first."""

    def __init__(self) -> None:
        self.net: nn.Module = nn.Identity()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.net = copy.deepcopy(pl_module.net)


def _fit_loop_results(trainer: pl.Trainer) -> dict[str, float]:
    """What the fit loop's result collection holds (calibration's self.log calls must not reach it)."""
    results = trainer.fit_loop.epoch_loop._results
    return {key: float(value) for key, value in results.metrics(on_step=True)["callback"].items()}


def _input_covariances(net: nn.Sequential, batches: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """E[x xᵀ] of each Linear's input, by running the dense Sequential layer by layer in float64."""
    inputs: dict[str, list[torch.Tensor]] = {}
    with torch.no_grad():
        for x in batches:
            h = x.double()
            for index, layer in enumerate(net):
                if isinstance(layer, nn.Linear):
                    inputs.setdefault(f"net.{index}", []).append(h)
                h = layer.double()(h) if isinstance(layer, nn.Linear) else layer(h)
    return {name: torch.cat(rows).T @ torch.cat(rows) / sum(len(r) for r in rows) for name, rows in inputs.items()}


def test_calibrated_sketches_use_the_first_training_batches_and_leave_no_trace(tmp_path):
    tuning = dict(max_drop=0.05, objective="size", n_trials=3, verbose=False)
    plain = SketchTuneCallback(**tuning)
    plain_trainer, _ = fit_digits(str(tmp_path / "plain"), [plain])
    snapshot = DenseSnapshot()
    callback = SketchTuneCallback(calibration_batches=CALIBRATION_BATCHES, **tuning)
    trainer, model = fit_digits(str(tmp_path / "calibrated"), [snapshot, callback])

    # "auto" proposed data-aware candidates, and only those were tried
    for config in callback.tuner.getConfigs():
        assert config.params["init"].values() == ["data_svd"]
    assert plain.tuner.getConfigs()[0].params["init"].values() == ["svd"]
    assert callback.best_params and all(p["init"] == "data_svd" for p in callback.best_params.values())

    # the first 4 batches the trainer's train dataloader yields (calibration left its shuffling state as it was)
    loader = trainer.train_dataloader
    batches = [x for _, (x, _) in zip(range(CALIBRATION_BATCHES), loader, strict=False)]
    assert len(batches) == CALIBRATION_BATCHES
    covariances = _input_covariances(copy.deepcopy(snapshot.net), batches)
    for name, params in callback.best_params.items():
        dense = snapshot.net.get_submodule(name.removeprefix("net."))
        expected = SKLinear.from_dense(dense, num_terms=params["num_terms"], low_rank=params["low_rank"],
                                       init="data_svd", input_cov=covariances[name].float())
        applied = model.get_submodule(name)
        assert isinstance(applied, SKLinear) and (applied.num_terms, applied.low_rank) == \
            (params["num_terms"], params["low_rank"])
        torch.testing.assert_close(applied.effective_weight(), expected.effective_weight(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(applied.bias, expected.bias)
        # weight-only SVD of the same rank is a different layer: the covariance really was used
        weight_only = SKLinear.from_dense(dense, num_terms=params["num_terms"], low_rank=params["low_rank"])
        assert not torch.allclose(weight_only.effective_weight(), expected.effective_weight(), atol=1e-3)

    # training_step ran on the calibration batches, yet logs and metrics are those of the uncalibrated run
    assert without_sketch_columns(metrics_rows(str(tmp_path / "calibrated"))) == \
        without_sketch_columns(metrics_rows(str(tmp_path / "plain")))
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == \
        {k: float(v) for k, v in plain_trainer.callback_metrics.items()}
    assert (trainer.global_step, trainer.current_epoch) == (plain_trainer.global_step, plain_trainer.current_epoch)
    assert _fit_loop_results(trainer) == _fit_loop_results(plain_trainer)
    assert model.training and not any(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("value", [-1, 1.5, True, "4", None])
def test_bad_calibration_batches_are_rejected(value):
    with pytest.raises(ValueError, match="calibration_batches must be an integer >= 0"):
        SketchTuneCallback(calibration_batches=value)


def test_sketch_tuner_needs_training_data_for_calibration(tmp_path, datamodule):
    trainer = make_trainer(str(tmp_path))
    with pytest.raises(ValueError, match="need training data"):
        SketchTuner(trainer).sketch_tune(DigitsClassifier(hidden=32), val_dataloaders=datamodule.val_dataloader(),
                                         calibration_batches=2)


def test_manual_optimization_cannot_be_calibrated(tmp_path):
    class Manual(DigitsClassifier):
        def __init__(self) -> None:
            super().__init__(hidden=32)
            self.automatic_optimization = False

    trainer = make_trainer(str(tmp_path), [SketchTuneCallback(calibration_batches=2)])
    with pytest.raises(ValueError, match="calibration_batches runs training_step"):
        trainer.fit(Manual(), DigitsDataModule())


def test_sketch_tuner_calibrates_on_the_given_training_data(tmp_path, datamodule):
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(str(tmp_path), max_epochs=1)
    model = DigitsClassifier(hidden=64)
    trainer.fit(model, datamodule)
    tuner = SketchTuner(trainer).sketch_tune(model, datamodule=datamodule, calibration_batches=2, max_drop=0.1,
                                             objective="size", n_trials=2, verbose=False)
    assert all(config.params["init"].values() == ["data_svd"] for config in tuner.getConfigs())
    assert tuner.results.records and all(record.params["init"] == "data_svd" for record in tuner.results.records)
