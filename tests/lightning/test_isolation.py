"""The isolated validation pass: right numbers, and no trace left in the trainer."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, accuracy, fit_digits, make_trainer, metrics_path

from panther_lightning.isolation import detached_trainer, read_metric, run_validation
from panther_lightning.timing import StepTimer, capture_forward_inputs


class EvaluateAtTrainEnd(pl.Callback):
    """Evaluates the model several times (full and 2-batch passes) where the tuner would."""

    def __init__(self) -> None:
        self.values = []
        self.calls = []

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for max_batches in (None, 2, None, 2):
            with detached_trainer(trainer), capture_forward_inputs(pl_module, 3) as calls:
                self.values.append(read_metric(run_validation(trainer, max_batches), "val_acc", trainer))
            self.calls = calls


def _fit(root: str, callbacks) -> tuple:
    return fit_digits(root, callbacks, hidden=64)


def _metrics_csv(root: str) -> str:
    with open(metrics_path(root)) as handle:
        return handle.read()


def test_isolated_passes_measure_the_model_and_leave_no_trace(tmp_path):
    plain_trainer, plain_model = _fit(str(tmp_path / "plain"), [])
    probe = EvaluateAtTrainEnd()
    trainer, model = _fit(str(tmp_path / "probed"), [probe])

    dm = DigitsDataModule()
    dm.setup()
    full, first_two = accuracy(model, dm), accuracy(model, dm, batches=2)
    assert probe.values == pytest.approx([full, first_two, full, first_two], abs=1e-6)
    # the full pass equals what the last epoch's validation logged (same weights)
    assert probe.values[0] == pytest.approx(float(trainer.callback_metrics["val_acc"]), abs=1e-6)

    for a, b in zip(plain_model.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert _metrics_csv(str(tmp_path / "plain")) == _metrics_csv(str(tmp_path / "probed"))
    assert {k: float(v) for k, v in plain_trainer.callback_metrics.items()} == \
        {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert trainer.state.stage is None and trainer.state.status == plain_trainer.state.status
    assert trainer.global_step == plain_trainer.global_step
    assert trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed == \
        plain_trainer.fit_loop.epoch_loop.val_loop.batch_progress.total.completed


def test_calls_redirected_through_forward_are_not_captured(model):
    """Lightning's DDP runs ``validation_step(batch, idx)`` through a swapped ``forward``; the real
    forward it calls inside is what a step replays."""
    x = torch.randn(16, 64)
    original = model.forward

    def redirected(batch, batch_idx):  # what Lightning's forward redirection installs
        model.forward = original  # it puts the real forward back before running the step
        return model(batch[0])

    with capture_forward_inputs(model, 5) as calls:
        model.forward = redirected
        model((x, torch.zeros(16)), 0)
    del model.forward  # back to the class's forward
    assert len(calls) == 1 and len(calls[0][0]) == 1 and torch.equal(calls[0][0][0], x)


def test_step_timer_times_captured_inputs_without_side_effects(model):
    x = torch.randn(16, 64)
    with capture_forward_inputs(model, 1) as calls:
        with torch.inference_mode():
            model(x)
        model(x)  # beyond the limit: not captured
    assert len(calls) == 1 and torch.equal(calls[0][0][0], x) and not calls[0][0][0].is_inference()
    model.eval()
    before = [p.clone() for p in model.parameters()]
    timing = StepTimer(calls, torch.device("cpu"), backward=True, warmup=1, repeats=3).time(model)
    assert timing.mode == "train" and timing.repeats == 3 and timing.median_s > 0
    assert timing.threads == torch.get_num_threads() and timing.device == "cpu"
    assert not model.training and all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_step_timer_needs_inputs():
    with pytest.raises(ValueError, match="forward was never called"):
        StepTimer([], torch.device("cpu"))


def test_full_pass_after_resuming_and_before_any_validation(tmp_path):
    """Restored loops (restarting=True) and not-yet-loaded validation data still give full passes."""
    first = make_trainer(str(tmp_path / "first"), max_epochs=1)
    pl.seed_everything(0, verbose=False)
    first.fit(DigitsClassifier(hidden=64), DigitsDataModule())
    path = str(tmp_path / "epoch1.ckpt")
    first.save_checkpoint(path)

    dm = DigitsDataModule()
    dm.setup()
    for kwargs in ({}, {"check_val_every_n_epoch": 5, "num_sanity_val_steps": 0}):
        probe = EvaluateAtTrainEnd()
        trainer = make_trainer(str(tmp_path / "resumed"), [probe], max_epochs=2, **kwargs)
        model = DigitsClassifier(hidden=64)
        trainer.fit(model, DigitsDataModule(), ckpt_path=path)
        full, first_two = accuracy(model, dm), accuracy(model, dm, batches=2)
        assert probe.values == pytest.approx([full, first_two, full, first_two], abs=1e-6)
