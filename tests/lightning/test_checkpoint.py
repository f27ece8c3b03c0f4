"""Checkpoints of tuned models: resume, load_sketched_checkpoint, the opt-in mixin."""

from __future__ import annotations

import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, make_trainer

from panther.nn import SKLinear
from panther.plans import apply_plan
from panther_lightning import (
    SketchCheckpointMixin,
    SketchTuneCallback,
    install_sketch_loading,
    load_sketched_checkpoint,
)


class MixinClassifier(SketchCheckpointMixin, DigitsClassifier):
    pass


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A tuned model and the checkpoint saved after tuning."""
    root = tmp_path_factory.mktemp("tuned")
    pl.seed_everything(0, verbose=False)
    callback = SketchTuneCallback(max_drop=0.03, objective="size", n_trials=4, verbose=False)
    trainer = make_trainer(str(root), [callback])
    model = MixinClassifier(hidden=128)
    trainer.fit(model, DigitsDataModule())
    assert callback.best_params
    path = os.path.join(root, "tuned.ckpt")
    trainer.save_checkpoint(path)
    return model, path, callback


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(0, 1, 5 * 64).reshape(5, 64)
    model.eval()
    with torch.no_grad():
        return model(x)


def test_load_sketched_checkpoint_rebuilds_the_dense_class(tuned):
    model, path, callback = tuned
    loaded = load_sketched_checkpoint(DigitsClassifier, path)
    assert type(loaded) is DigitsClassifier
    assert {n for n, m in loaded.named_modules() if isinstance(m, SKLinear)} == set(callback.best_params)
    assert torch.equal(_outputs(loaded), _outputs(model))
    strict = load_sketched_checkpoint(DigitsClassifier, path, weights_only=True)
    assert torch.equal(_outputs(strict), _outputs(model))


def test_plain_load_needs_the_opt_in(tuned):
    model, path, _ = tuned
    with pytest.raises(RuntimeError, match="Missing key"):
        DigitsClassifier.load_from_checkpoint(path)
    loaded = MixinClassifier.load_from_checkpoint(path)
    assert torch.equal(_outputs(loaded), _outputs(model))


def test_checkpoint_carries_the_plan_in_the_callback_state(tuned):
    _, path, callback = tuned
    checkpoint = torch.load(path, weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("SketchTuneCallback")]
    assert state["report"]["plan"] == callback.report.plan


def test_resume_from_a_tuned_checkpoint(tuned, tmp_path):
    model, path, callback = tuned
    resumed_callback = SketchTuneCallback(max_drop=0.03, objective="size", n_trials=4, verbose=False)
    trainer = make_trainer(str(tmp_path), [resumed_callback], max_epochs=3)
    fresh = DigitsClassifier(hidden=128)  # the plain class: the callback rebuilds it while loading
    trainer.fit(fresh, DigitsDataModule(), ckpt_path=path)
    assert trainer.current_epoch == 3 and trainer.global_step > 0
    assert resumed_callback.done and resumed_callback.tuner is None  # not tuned a second time
    assert resumed_callback.best_params == callback.best_params
    assert {n for n, m in fresh.named_modules() if isinstance(m, SKLinear)} == set(callback.best_params)
    assert not torch.equal(_outputs(fresh), _outputs(model))  # it trained on


def test_layers_follow_the_state_dict_they_load():
    pl.seed_everything(0, verbose=False)
    model = install_sketch_loading(DigitsClassifier(hidden=32))
    dense_state = {k: v.clone() for k, v in model.state_dict().items()}
    apply_plan(model, {"net.2": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 4, "init": "svd"}}})
    sketched_state = model.state_dict()
    sketched_outputs = _outputs(model)
    # its own tensors without their description (as synchronised between processes): the same layers
    model.load_state_dict({k: v for k, v in sketched_state.items() if isinstance(v, torch.Tensor)}, strict=False)
    assert isinstance(model.net[2], SKLinear)
    # a dense state dict puts the dense layer back, with exactly its weights
    model.load_state_dict(dense_state)
    assert type(model.net[2]) is torch.nn.Linear and torch.equal(model.net[2].weight, dense_state["net.2.weight"])
    # and a sketched one the sketch
    model.load_state_dict(sketched_state)
    assert isinstance(model.net[2], SKLinear) and torch.equal(_outputs(model), sketched_outputs)


def test_a_dense_layer_that_cannot_be_rebuilt_is_named_with_the_fix():
    model = install_sketch_loading(DigitsClassifier(hidden=32))
    apply_plan(model, {"net.2": {"type": "SKLinear", "params": {"low_rank": None, "quantize": True}}})
    state = {k: v for k, v in DigitsClassifier(hidden=32).state_dict().items()}
    state["net.2.weight"] = torch.zeros(16, 32)  # not the shape of this model's layer
    with pytest.raises(ValueError, match=r"'net\.2'.*\(16, 32\).*load_sketched_checkpoint"):
        model.load_state_dict(state)
