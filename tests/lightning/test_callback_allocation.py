"""The callback's default strategy: whole-model allocation, int8 included on CPU, and what reloads it."""

from __future__ import annotations

import os

import optuna
import pytest
import torch
from conftest import DigitsClassifier, DigitsDataModule, accuracy, fit_digits

from panther.nn import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.tuner.search import OptunaSearch
from panther_lightning import SketchTuneCallback, load_sketched_checkpoint

REPLACEMENTS = (SKLinear, Int8Linear, Int8SKLinear)


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    x = torch.linspace(0, 1, 5 * 64).reshape(5, 64)
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("calibration_batches", [0, 4])
def test_default_callback_allocates_and_the_checkpoint_reloads(tmp_path, calibration_batches: int):
    plain_trainer, _ = fit_digits(str(tmp_path / "plain"), [])
    dense_acc = float(plain_trainer.callback_metrics["val_acc"])
    callback = SketchTuneCallback(max_drop=0.02, objective="size", calibration_batches=calibration_batches,
                                  verbose=False)
    trainer, model = fit_digits(str(tmp_path / "tuned"), [callback])

    tuner = callback.tuner
    assert tuner is not None and tuner.allocates and tuner.results.plans
    replaced = {n: type(m) for n, m in model.named_modules() if isinstance(m, REPLACEMENTS)}
    assert set(replaced) == set(callback.best_params)
    assert Int8Linear in replaced.values() or Int8SKLinear in replaced.values()  # int8 is offered on CPU
    dm = DigitsDataModule()
    dm.setup()
    final_acc = accuracy(model, dm)
    assert final_acc == pytest.approx(callback.report.tuned_metric, abs=1e-6)
    assert final_acc >= dense_acc - 0.02 - 1e-6
    assert callback.report.tuned_bytes < callback.report.dense_bytes

    path = os.path.join(tmp_path, "tuned.ckpt")
    trainer.save_checkpoint(path)
    strict = load_sketched_checkpoint(DigitsClassifier, path, weights_only=True)
    assert {n: type(m) for n, m in strict.named_modules() if isinstance(m, REPLACEMENTS)} == replaced
    assert torch.equal(_outputs(strict), _outputs(model))


@pytest.mark.parametrize("how", ["sampler", "n_trials"])
def test_a_chosen_search_keeps_the_per_group_search(tmp_path, how):
    """The tuner's rule: a search that names its sampler, or ``n_trials``, asks for the per-group search."""
    chosen = ({"search_algorithm": OptunaSearch(n_trials=3, sampler=optuna.samplers.TPESampler(seed=0))}
              if how == "sampler" else {"n_trials": 3})
    callback = SketchTuneCallback(max_drop=0.02, objective="size", verbose=False, **chosen)
    fit_digits(str(tmp_path), [callback])
    assert callback.tuner is not None and not callback.tuner.allocates and not callback.tuner.results.plans


def test_a_plain_optuna_search_lends_its_study_to_the_allocation(tmp_path):
    search = OptunaSearch(n_trials=30, seed=0)
    callback = SketchTuneCallback(max_drop=0.02, objective="size", verbose=False, search_algorithm=search)
    fit_digits(str(tmp_path), [callback])
    assert callback.tuner is not None and callback.tuner.allocates and callback.tuner.results.plans
    plans = callback.tuner.results.plans
    assert sorted(t.user_attrs["plan"] for t in search.study.trials) == sorted(p.number for p in plans)
    assert search.study.user_attrs["chosen_plan"] == callback.tuner.results.chosen_plan
