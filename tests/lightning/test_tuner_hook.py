"""SketchTuner: Lightning's Tuner plus sketch_tune on an already trained model."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, accuracy, make_trainer
from lightning.pytorch.tuner import Tuner

from panther.nn import SKLinear
from panther.tuner import SKAutoTuner
from panther_lightning import SketchTuneCallback, SketchTuner, load_sketched_checkpoint


def test_sketch_tune_modifies_a_trained_model_in_place(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule()
    trainer = make_trainer(str(tmp_path))
    model = DigitsClassifier(hidden=128)
    trainer.fit(model, datamodule=dm)
    dense_acc = accuracy(model, dm)

    tuner = SketchTuner(trainer)
    assert isinstance(tuner, Tuner) and callable(tuner.lr_find) and callable(tuner.scale_batch_size)
    result = tuner.sketch_tune(model, datamodule=dm, max_drop=0.02, objective="size", n_trials=5, verbose=False)
    assert isinstance(result, SKAutoTuner) and result.model is model
    sketched = {n for n, m in model.named_modules() if isinstance(m, SKLinear)}
    assert sketched and sketched == set(result.get_best_params())
    assert tuner.report.dense_metric == pytest.approx(dense_acc, abs=1e-6)
    assert accuracy(model, dm) == pytest.approx(tuner.report.tuned_metric, abs=1e-6)
    assert tuner.report.tuned_metric >= dense_acc - 0.02 - 1e-6
    # the callback's own code path ran (as lr_find runs LearningRateFinder) and was removed afterwards
    assert not any(isinstance(c, SketchTuneCallback) for c in trainer.callbacks)
    reloaded = load_sketched_checkpoint(DigitsClassifier, tuner.tuned_checkpoint_path)
    assert os.path.dirname(tuner.tuned_checkpoint_path) == trainer.checkpoint_callback.dirpath
    x = torch.rand(7, 64)
    model.eval()
    assert torch.equal(reloaded(x), model(x))


def test_sketch_tune_allocates_by_default_with_a_speed_objective(tmp_path, datamodule):
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(str(tmp_path), max_epochs=1)
    model = DigitsClassifier(hidden=512)  # wide enough that sketch and int8 timings beat dense under load
    trainer.fit(model, datamodule=datamodule)
    dense_acc = accuracy(model, datamodule)
    tuner = SketchTuner(trainer)
    result = tuner.sketch_tune(model, datamodule=datamodule, max_drop=0.02, calibration_batches=2, timing_repeats=5,
                               verbose=False)
    assert result.allocates and result.results.plans
    assert accuracy(model, datamodule) == pytest.approx(tuner.report.tuned_metric, abs=1e-6)
    assert tuner.report.tuned_metric >= dense_acc - 0.02 - 1e-6
    if tuner.report.plan:  # only plans measured faster than dense are applied
        assert tuner.report.speedup > 1.0


def test_sketch_tune_with_dataloaders_and_finetune(tmp_path, datamodule):
    pl.seed_everything(0, verbose=False)
    trainer = make_trainer(str(tmp_path), max_epochs=1)
    model = DigitsClassifier(hidden=128)
    trainer.fit(model, datamodule.train_dataloader(), datamodule.val_dataloader())
    tuner = SketchTuner(trainer)
    tuner.sketch_tune(model, train_dataloaders=datamodule.train_dataloader(),
                      val_dataloaders=datamodule.val_dataloader(), max_drop=0.1, objective="size", n_trials=3,
                      finetune_epochs=1, verbose=False)
    report = tuner.report
    assert report.best_params, "a 10-point budget admits a sketch of a 128-wide MLP"
    assert report.finetuned_metric == pytest.approx(accuracy(model, datamodule), abs=1e-6)


def test_lr_find_still_works(tmp_path, datamodule):
    model = DigitsClassifier(hidden=32)
    trainer = make_trainer(str(tmp_path), max_epochs=1)
    finder = SketchTuner(trainer).lr_find(model, datamodule=datamodule, num_training=8, update_attr=False)
    assert finder is not None and len(finder.results["lr"]) > 0


def test_sketch_tune_rejects_bad_input_before_touching_the_model(tmp_path, datamodule):
    trainer = make_trainer(str(tmp_path))
    model = DigitsClassifier(hidden=32)
    with pytest.raises(ValueError, match="not both"):
        SketchTuner(trainer).sketch_tune(model, datamodule=datamodule, val_dataloaders=datamodule.val_dataloader())
    with pytest.raises(ValueError, match="mode must be one of"):
        SketchTuner(trainer).sketch_tune(model, datamodule=datamodule, mode="up")
    assert not any(isinstance(m, SKLinear) for m in model.modules())
