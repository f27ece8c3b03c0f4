"""The tuned model through Lightning's whole life-cycle, written as a Lightning user writes it.

ModelCheckpoint + EarlyStopping + the callback; ``test``/``validate``/``predict`` with a ``ckpt_path``
after the tuned fit; resuming in a new Trainer with a fresh model; two validation dataloaders.
"""

from __future__ import annotations

import logging
import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, make_trainer
from digits_lightning import DigitsCNN
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Subset

from panther.nn import SKLinear
from panther.nn.quantized import Int8Linear
from panther.tuner import AllocationUnavailableError
from panther_lightning import SketchTuneCallback, load_sketched_checkpoint

#: Every Linear layer int8 (no trainable parameter left): the plan CPU defaults often reach.
INT8_EVERYWHERE = [{"layer_names": {"type": "Linear"},
                    "params": {"low_rank": {"type": "categorical", "choices": [None]},
                               "quantize": {"type": "categorical", "choices": [True]}}}]


class Classifier(DigitsClassifier):
    """The digits MLP with the test and predict steps a user adds, counting ``configure_optimizers`` calls."""

    def __init__(self, hidden: int = 64, lr: float = 3e-3) -> None:
        super().__init__(hidden=hidden, lr=lr)
        self.optimizer_calls = 0

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.log("test_acc", (self(x).argmax(-1) == y).float().mean())

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        self.optimizer_calls += 1
        return super().configure_optimizers()


def _callbacks(root: str, **tune_kwargs) -> tuple[ModelCheckpoint, SketchTuneCallback, list[pl.Callback]]:
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), monitor="val_acc", mode="max", save_last=True)
    tune = SketchTuneCallback(objective="size", verbose=False, **tune_kwargs)
    return checkpoint, tune, [checkpoint, EarlyStopping(monitor="val_loss", patience=3), tune]


def _tuned_fit(root: str, **tune_kwargs) -> tuple:
    pl.seed_everything(0, verbose=False)
    checkpoint, tune, callbacks = _callbacks(root, **tune_kwargs)
    trainer = make_trainer(root, callbacks)
    model = Classifier()
    trainer.fit(model, DigitsDataModule())
    assert tune.report is not None and tune.report.plan, "the bound admits a plan"
    return trainer, model, checkpoint, tune


@pytest.fixture(scope="module")
def int8_run(tmp_path_factory):
    """``(trainer, model, checkpoint callback, tune callback)`` after a fit tuned to int8 everywhere."""
    return _tuned_fit(str(tmp_path_factory.mktemp("int8")), configs=INT8_EVERYWHERE, max_drop=0.2)


def _batches() -> list[torch.Tensor]:
    dm = DigitsDataModule()
    dm.setup()
    return [x for x, _ in dm.val_dataloader()]


def _outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        return [model(x) for x in _batches()]


def _same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _layer_types(model: torch.nn.Module) -> dict[str, type]:
    return {name: type(module) for name, module in model.net.named_children() if not isinstance(module, torch.nn.ReLU)}


def _accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = [(model(x).argmax(-1) == y).float() for x, y in loader]
    return float(torch.cat(hits).mean())


def test_last_checkpoint_and_the_tuned_checkpoint_hold_the_tuned_model(int8_run):
    trainer, model, checkpoint, tune = int8_run
    assert set(_layer_types(model).values()) == {Int8Linear}
    loaded = load_sketched_checkpoint(Classifier, checkpoint.last_model_path)
    assert _layer_types(loaded) == _layer_types(model), "last.ckpt must hold the tuned model"
    assert _same(_outputs(loaded), _outputs(model))
    path = tune.tuned_checkpoint_path
    assert path is not None and os.path.dirname(path) == checkpoint.dirpath
    assert _same(_outputs(load_sketched_checkpoint(Classifier, path)), _outputs(model))
    # the epoch checkpoints keep the dense weights they were written with
    assert set(_layer_types(Classifier.load_from_checkpoint(checkpoint.best_model_path)).values()) == {
        torch.nn.Linear}


def test_test_validate_predict_follow_the_checkpoint_they_load(int8_run):
    trainer, model, checkpoint, tune = int8_run
    dm = DigitsDataModule()
    dm.setup()
    loader = dm.val_dataloader()
    tuned_outputs = _outputs(model)
    # predict on the tuned model equals the tuned model called on the same batches (int8: per-batch activations)
    assert _same(trainer.predict(model, dataloaders=loader), tuned_outputs)

    def reference(ckpt_path: str) -> Classifier:
        """The checkpoint's model, loaded independently of the trainer."""
        if ckpt_path == "best":
            return Classifier.load_from_checkpoint(checkpoint.best_model_path)
        return load_sketched_checkpoint(Classifier, checkpoint.last_model_path if ckpt_path == "last" else ckpt_path)

    for ckpt_path in ("best", "last", "tuned"):
        ckpt_path = tune.tuned_checkpoint_path if ckpt_path == "tuned" else ckpt_path
        expected_model = reference(ckpt_path)
        expected = _accuracy(expected_model, loader)
        (tested,) = trainer.test(model, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        assert tested["test_acc"] == pytest.approx(expected, abs=1e-6), ckpt_path
        assert _layer_types(model) == _layer_types(expected_model), ckpt_path
        (validated,) = trainer.validate(model, dataloaders=loader, ckpt_path=ckpt_path, verbose=False)
        assert validated["val_acc"] == pytest.approx(expected, abs=1e-6), ckpt_path
        predicted = trainer.predict(model, dataloaders=loader, ckpt_path=ckpt_path)
        assert _same(predicted, _outputs(expected_model)), ckpt_path
    assert _same(_outputs(model), tuned_outputs), "the last load (the tuned checkpoint) restores the tuned model"


def test_resume_without_trainable_parameters_fails_at_setup(int8_run, tmp_path):
    trainer, model, checkpoint, _ = int8_run
    path = str(tmp_path / "by_hand.ckpt")
    trainer.save_checkpoint(path)  # what users do today to keep the tuned model
    _, resumed_callback, callbacks = _callbacks(str(tmp_path), configs=INT8_EVERYWHERE, max_drop=0.2)
    resumed = make_trainer(str(tmp_path), callbacks, max_epochs=4)
    fresh = Classifier()
    with pytest.raises(ValueError, match=r"no trainable parameter.*trainable=True"):
        resumed.fit(fresh, DigitsDataModule(), ckpt_path=path)
    assert fresh.optimizer_calls == 0 and resumed.global_step == 0

    # fitting the tuned model itself again says so before training too
    again = make_trainer(str(tmp_path / "again"), [SketchTuneCallback(verbose=False)], max_epochs=1)
    with pytest.raises(ValueError, match=r"no trainable parameter.*trainable=True"):
        again.fit(model, DigitsDataModule())
    assert again.global_step == 0


def test_trainable_option_keeps_sketches_only_and_resumes(tmp_path):
    with pytest.raises(ValueError, match="trainable=True"):
        fit_trainer = make_trainer(str(tmp_path / "bad"),
                                   [SketchTuneCallback(configs=INT8_EVERYWHERE, trainable=True, verbose=False)])
        fit_trainer.fit(Classifier(), DigitsDataModule())

    trainer, model, checkpoint, tune = _tuned_fit(str(tmp_path / "fit"), trainable=True, max_drop=0.05)
    assert set(_layer_types(model).values()) <= {SKLinear, torch.nn.Linear} and SKLinear in _layer_types(model).values()
    _, resumed_callback, callbacks = _callbacks(str(tmp_path / "resume"), trainable=True, max_drop=0.05)
    resumed = make_trainer(str(tmp_path / "resume"), callbacks, max_epochs=trainer.current_epoch + 1)
    fresh = Classifier()
    resumed.fit(fresh, DigitsDataModule(), ckpt_path=tune.tuned_checkpoint_path)
    assert resumed.global_step > trainer.global_step and resumed_callback.done
    assert _layer_types(fresh) == _layer_types(model)
    assert not _same(_outputs(fresh), _outputs(model)), "it trained on"


class TwoLoaders(Classifier):
    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        super().validation_step(batch, batch_idx)


def _two_loaders() -> tuple[DataLoader, DataLoader, DataLoader]:
    dm = DigitsDataModule()
    dm.setup()
    second = DataLoader(Subset(dm.val_set, range(128)), batch_size=64)
    return dm.train_dataloader(), dm.val_dataloader(), second


def test_two_validation_loaders_monitor_one_with_the_sanity_check(tmp_path, caplog):
    logging.getLogger("lightning.pytorch").addHandler(caplog.handler)  # Lightning's logger does not propagate
    pl.seed_everything(0, verbose=False)
    monitor = "val_acc/dataloader_idx_1"
    tune = SketchTuneCallback(monitor=monitor, max_drop=0.05, objective="size", verbose=False)
    trainer = make_trainer(str(tmp_path), [tune])  # default num_sanity_val_steps
    model = TwoLoaders()
    train, first, second = _two_loaders()
    try:
        with caplog.at_level(logging.INFO, logger="lightning.pytorch"):
            trainer.fit(model, train, [first, second])
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(caplog.handler)
    assert "runs all 2 validation dataloaders and is judged by 'val_acc/dataloader_idx_1' alone" in caplog.text
    report = tune.report
    assert report is not None and tune.failure is None
    assert report.dense_metric == pytest.approx(float(trainer.callback_metrics[monitor]), abs=1e-6)
    assert report.tuned_metric == pytest.approx(_accuracy(model, second), abs=1e-6)
    assert report.tuned_metric >= report.dense_metric - 0.05 - 1e-6


def test_unknown_monitor_is_found_at_the_first_real_validation_listing_every_key(tmp_path):
    tune = SketchTuneCallback(monitor="val_acc", verbose=False)
    trainer = make_trainer(str(tmp_path), [tune], max_epochs=1)
    train, first, second = _two_loaders()
    with pytest.raises(KeyError, match="val_acc/dataloader_idx_0.*val_acc/dataloader_idx_1"):
        trainer.fit(TwoLoaders(), train, [first, second])
    assert trainer.global_step > 0, "not in the sanity check: EarlyStopping's rule"


def test_a_strategy_the_configs_cannot_take_fails_at_setup(tmp_path):
    """The callback asks the tuner's decision at setup: allocating convolutions needs calibration batches."""
    tune = SketchTuneCallback(configs=[{"layer_names": {"type": "Conv2d"}, "params": "auto"}], strategy="allocate",
                              verbose=False)
    trainer = make_trainer(str(tmp_path), [tune], max_epochs=1)
    with pytest.raises(AllocationUnavailableError, match="calibration_data"):
        trainer.fit(DigitsCNN(channels=4, hidden=16), DigitsDataModule())
    assert trainer.global_step == 0
