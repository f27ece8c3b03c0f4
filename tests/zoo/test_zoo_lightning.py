"""``SketchTuneCallback`` in real ``Trainer.fit`` runs on architectures nobody here wrote.

* a model built on ``nn.Transformer`` (validation in eval mode with a padding mask: the encoder's
  fused fast path, which used to crash at the end of ``fit`` once its FFN layers were sketched),
  tuned on ``val_loss`` with ``mode="min"``;
* GPT-2 from ``transformers`` (every projection a ``Conv1D``), tuned on ``val_acc``;
* what happens when nothing can be tuned, when tuning fails, and on Ctrl-C: the finished
  training run is never lost.
"""

from __future__ import annotations

import copy
import os
import signal
import warnings
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from zoo_models import HAS_TRANSFORMERS, VOCAB, ZOO, TorchTransformer

from panther.nn import SketchedModule
from panther_lightning import SketchTuneCallback, load_sketched_checkpoint

warnings.filterwarnings("ignore", message=".*does not have many workers.*")
warnings.filterwarnings("ignore", message=".*litlogger.*|.*litmodels.*")
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="needs transformers")
SEQ = 8


class TokenModule(pl.LightningModule):
    """Next-token prediction on random sequences whose second half repeats the first (learnable)."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr

    def loss_and_accuracy(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple:
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, _ = self.loss_and_accuracy(*batch)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        loss, accuracy = self.loss_and_accuracy(*batch)
        self.log_dict({"val_loss": loss, "val_acc": accuracy})

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class TransformerCopier(TokenModule):
    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.net = TorchTransformer()

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.net(tokens, tokens[:, :-1], padding)

    def loss_and_accuracy(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple:
        logits = self(tokens, padding)
        target = tokens[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
        return loss, (logits.argmax(-1) == target).float().mean()


class GPT2Module(TokenModule):
    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__(lr)
        self.save_hyperparameters()
        self.net = ZOO["gpt2"].build_model()

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        return self.net(input_ids=tokens, attention_mask=(~padding).long()).logits

    def loss_and_accuracy(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple:
        logits = self(tokens, padding)[:, :-1]
        target = tokens[:, 1:]
        loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1))
        return loss, (logits.argmax(-1) == target).float().mean()


def token_loaders() -> tuple:
    generator = torch.Generator().manual_seed(0)
    half = torch.randint(2, VOCAB, (96, SEQ // 2), generator=generator)
    tokens = torch.cat([half, half], dim=1)
    padding = torch.zeros_like(tokens, dtype=torch.bool)
    padding[::4, -2:] = True  # every fourth sequence is padded: masks reach the encoder's fast path
    train = DataLoader(TensorDataset(tokens[:64], padding[:64]), batch_size=16, shuffle=True, generator=generator)
    val = DataLoader(TensorDataset(tokens[64:], padding[64:]), batch_size=16)
    return train, val


def fit(root: str, module: pl.LightningModule, callbacks: list[pl.Callback], **kwargs: Any) -> pl.Trainer:
    options: dict[str, Any] = dict(max_epochs=2, accelerator="cpu", devices=1, logger=False,
                                   enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                                   default_root_dir=root)
    trainer = pl.Trainer(callbacks=callbacks, **{**options, **kwargs})
    train, val = token_loaders()
    trainer.fit(module, train, val)
    return trainer


def outputs(module: pl.LightningModule) -> torch.Tensor:
    _, val = token_loaders()
    tokens, padding = next(iter(val))
    module.eval()
    with torch.no_grad():
        return module(tokens, padding)


def sketched_names(module: nn.Module) -> list[str]:
    return [name for name, m in module.named_modules() if isinstance(m, SketchedModule)]


class TrainedState(pl.Callback):
    """Snapshots the weights when training ends, before the tuning callback (listed after it) runs."""

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.state = copy.deepcopy(pl_module.state_dict())


class EventLog(pl.Callback):
    """Remembers how many warnings had been recorded when the first epoch started."""

    def __init__(self, recorded: list[warnings.WarningMessage]) -> None:
        self.recorded, self.at_first_epoch = recorded, None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.at_first_epoch is None:
            self.at_first_epoch = len(self.recorded)


def assert_dense_as_trained(module: pl.LightningModule, trained: dict[str, torch.Tensor]) -> None:
    assert not sketched_names(module)
    state = module.state_dict()
    assert state.keys() == trained.keys() and all(torch.equal(state[k], trained[k]) for k in state)


def test_transformer_fit_applies_tuning_on_val_loss_and_reloads(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(monitor="val_loss", mode="min", max_drop=0.5, objective="size", n_trials=3,
                                  verbose=False)
    module = TransformerCopier()
    trainer = fit(str(tmp_path), module, [callback])
    assert trainer.state.finished and callback.failure is None
    assert callback.report.plan and set(callback.report.plan) == set(sketched_names(module))
    assert all(".linear" in name or name == "net.head" for name in callback.report.plan)  # FFNs and the head
    assert callback.report.tuned_metric <= callback.report.threshold_metric  # mode="min": at most the bound
    path = os.path.join(tmp_path, "tuned.ckpt")
    trainer.save_checkpoint(path)
    loaded = load_sketched_checkpoint(TransformerCopier, path)
    assert sketched_names(loaded) == sketched_names(module)
    assert torch.equal(outputs(loaded), outputs(module))


@needs_transformers
def test_gpt2_fit_tunes_its_conv1d_projections_by_default_and_reloads(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(max_drop=0.2, objective="size", n_trials=2, max_total_trials=10, verbose=False)
    module = GPT2Module()
    trainer = fit(str(tmp_path), module, [callback])
    assert callback.failure is None and callback.report.plan
    assert "net.lm_head" not in callback.report.plan  # tied to the embedding: skipped, and the summary says why
    assert all(type(module.net.get_submodule(n[len("net."):])).__name__ == "SKLinear" for n in callback.report.plan)
    assert "net.lm_head: its parameters are shared with" in callback.tuner.summary()
    path = os.path.join(tmp_path, "tuned.ckpt")
    trainer.save_checkpoint(path)
    loaded = load_sketched_checkpoint(GPT2Module, path, weights_only=True)
    assert torch.equal(outputs(loaded), outputs(module))


@needs_transformers
def test_a_selector_with_nothing_tunable_warns_at_setup_and_fit_finishes(tmp_path):
    """GPT-2's only nn.Linear is the tied lm_head: reported before the first epoch, not after the last."""
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(configs=[{"layer_names": {"type": "Linear"}, "params": "auto"}], verbose=False)
    module, trained = GPT2Module(), TrainedState()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        events = EventLog(recorded)
        trainer = fit(str(tmp_path), module, [events, trained, callback], max_epochs=1)
    nothing = [i for i, w in enumerate(recorded) if "nothing to tune" in str(w.message)]
    assert len(nothing) == 1 and nothing[0] < events.at_first_epoch
    assert "lm_head" in str(recorded[nothing[0]].message) and "shared with" in str(recorded[nothing[0]].message)
    assert trainer.state.finished and callback.report is None and "lm_head" in callback.failure
    assert_dense_as_trained(module, trained.state)


class FailsWhileSketched(TransformerCopier):
    """Raises ``error`` from ``step`` whenever a sketched layer is installed."""

    def __init__(self, error: type = RuntimeError, step: str = "training") -> None:
        super().__init__()
        self.error, self.step = error, step

    def loss_and_accuracy(self, tokens: torch.Tensor, padding: torch.Tensor) -> tuple:
        phase = "training" if self.training else "validation"
        if sketched_names(self) and phase == self.step:
            raise self.error("sketched layers are not allowed here")
        return super().loss_and_accuracy(tokens, padding)


def test_a_failure_during_tuning_keeps_the_trained_dense_model_and_fit_finishes(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(monitor="val_loss", mode="min", max_drop=0.5, objective="size", n_trials=2,
                                  finetune_epochs=1, verbose=False)  # the fine-tune (training_step) raises
    module, trained = FailsWhileSketched(), TrainedState()
    with pytest.warns(UserWarning, match="tuning failed .*RuntimeError: sketched layers are not allowed"):
        trainer = fit(str(tmp_path), module, [trained, callback])
    assert trainer.state.finished and "RuntimeError" in callback.failure and callback.report is None
    assert_dense_as_trained(module, trained.state)


def test_ctrl_c_during_tuning_stops_with_the_model_restored(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(monitor="val_loss", mode="min", max_drop=0.5, objective="size", n_trials=2,
                                  verbose=False)
    module, trained = FailsWhileSketched(KeyboardInterrupt, step="validation"), TrainedState()
    handler = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit):  # Lightning's graceful shutdown after a KeyboardInterrupt
            fit(str(tmp_path), module, [trained, callback])
    finally:
        signal.signal(signal.SIGINT, handler)  # Lightning ignores further Ctrl-C while shutting down
    assert callback.report is None
    assert_dense_as_trained(module, trained.state)


@needs_transformers
def test_sketch_tune_hook_rejects_configs_with_nothing_tunable_before_validating(tmp_path):
    from panther_lightning import SketchTuner

    module = GPT2Module()
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    _, val = token_loaders()
    with pytest.raises(ValueError, match="nothing to tune: .*lm_head"):
        SketchTuner(trainer).sketch_tune(module, val_dataloaders=val,
                                         configs=[{"layer_names": {"type": "Linear"}, "params": "auto"}])
    assert trainer.state.fn is None  # validate never started


def test_sketch_tune_hook_restores_the_dense_model_when_tuning_fails(tmp_path):
    from panther_lightning import SketchTuner

    pl.seed_everything(0, verbose=False)
    module = FailsWhileSketched()  # fine-tuning the sketches (training_step) raises
    trained = copy.deepcopy(module.state_dict())
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         default_root_dir=str(tmp_path))
    train, val = token_loaders()
    with pytest.raises(RuntimeError, match="sketched layers are not allowed"):
        SketchTuner(trainer).sketch_tune(module, train_dataloaders=train, val_dataloaders=val, monitor="val_loss",
                                         mode="min", max_drop=0.5, objective="size", n_trials=2, finetune_epochs=1,
                                         verbose=False)
    assert_dense_as_trained(module, trained)


def test_when_every_candidate_fails_fit_finishes_dense_with_one_warning_saying_why(tmp_path):
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(monitor="val_loss", mode="min", max_drop=0.5, objective="size", n_trials=2,
                                  verbose=False)
    module, trained = FailsWhileSketched(RuntimeError, step="validation"), TrainedState()
    with warnings.catch_warnings(record=True) as recorded:
        warnings.simplefilter("always")
        trainer = fit(str(tmp_path), module, [trained, callback])
    dense = [str(w.message) for w in recorded if "the model stays dense" in str(w.message)]
    assert dense == ["SketchTuneCallback: the model stays dense: every trial failed (last error: "
                     "RuntimeError: sketched layers are not allowed here)"]
    assert trainer.state.finished and callback.failure is None and not callback.report.plan
    assert all(r.status == "failed" for r in callback.tuner.results.records)
    assert_dense_as_trained(module, trained.state)
