"""SketchTuneCallback end to end on real (tiny) Lightning runs."""

from __future__ import annotations

import glob
import json
import os

import lightning.pytorch as pl
import pytest
import torch
from conftest import (
    DigitsClassifier,
    DigitsDataModule,
    accuracy,
    fit_digits,
    make_trainer,
    metrics_rows,
    without_sketch_columns,
)
from lightning.pytorch.callbacks import ModelCheckpoint

from panther.nn import SKLinear
from panther_lightning import SketchTuneCallback


def _fit(root: str, callbacks: list[pl.Callback], **trainer_kwargs) -> tuple:
    checkpoint = ModelCheckpoint(dirpath=os.path.join(root, "ckpt"), save_top_k=-1)
    return fit_digits(root, [*callbacks, checkpoint], **trainer_kwargs)


def _checkpoint_weights(root: str) -> dict[str, dict[str, torch.Tensor]]:
    files = sorted(glob.glob(os.path.join(root, "ckpt", "*.ckpt")))
    return {os.path.basename(f): torch.load(f, weights_only=False)["state_dict"] for f in files}


def test_callback_tunes_applies_and_leaves_the_trainer_as_without_it(tmp_path):
    plain_trainer, _ = _fit(str(tmp_path / "plain"), [])
    callback = SketchTuneCallback(max_drop=0.02, objective="size", n_trials=6, verbose=False)
    trainer, model = _fit(str(tmp_path / "tuned"), [callback])

    # layers replaced, as reported
    sketched = {name for name, m in model.named_modules() if isinstance(m, SKLinear)}
    assert sketched and sketched == set(callback.best_params) == set(callback.report.plan)
    assert callback.tuner is not None and callback.tuner.get_best_params() == callback.best_params
    # the bound holds on the final model, measured independently
    dm = DigitsDataModule()
    dm.setup()
    dense_acc = float(plain_trainer.callback_metrics["val_acc"])
    assert callback.report.dense_metric == pytest.approx(dense_acc, abs=1e-6)
    final_acc = accuracy(model, dm)
    assert final_acc == pytest.approx(callback.report.tuned_metric, abs=1e-6)
    assert final_acc >= dense_acc - 0.02 - 1e-6
    assert callback.report.tuned_bytes < callback.report.dense_bytes
    # each layer was held to its share of the 0.02 drop, by weight
    results = callback.tuner.results
    dense_bytes = {g: r.dense_bytes for r in results.records for g in [r.group]}
    assert set(results.group_thresholds) == set(dense_bytes) and len(dense_bytes) > 1
    for group, threshold in results.group_thresholds.items():
        share = dense_bytes[group] / sum(dense_bytes.values())
        assert threshold == pytest.approx(dense_acc - 0.02 * share, abs=1e-6)

    # the trainer: same logs (apart from the summary row), metrics, checkpoints and counters
    plain_rows, rows = metrics_rows(str(tmp_path / "plain")), metrics_rows(str(tmp_path / "tuned"))
    assert without_sketch_columns(rows) == without_sketch_columns(plain_rows)
    summary = [r for r in rows if r.get("sketch/sketched_layers")]
    assert len(summary) == 1 and float(summary[0]["sketch/sketched_layers"]) == len(sketched)
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == \
        {k: float(v) for k, v in plain_trainer.callback_metrics.items()}
    plain_ckpts, ckpts = _checkpoint_weights(str(tmp_path / "plain")), _checkpoint_weights(str(tmp_path / "tuned"))
    # beside the epoch checkpoints: the tuned model's own (see test_lifecycle.py)
    assert os.path.dirname(callback.tuned_checkpoint_path) == os.path.join(str(tmp_path / "tuned"), "ckpt")
    tuned_ckpt = ckpts.pop(os.path.basename(callback.tuned_checkpoint_path))
    assert tuned_ckpt.keys() == model.state_dict().keys()
    assert plain_ckpts.keys() == ckpts.keys() and ckpts
    for name in ckpts:
        assert all(torch.equal(a, b) for a, b in zip(plain_ckpts[name].values(), ckpts[name].values(), strict=True))
    assert (trainer.global_step, trainer.current_epoch) == (plain_trainer.global_step, plain_trainer.current_epoch)

    # the plan file re-creates the same structure
    with open(callback.plan_file) as handle:
        assert json.load(handle) == callback.report.plan
    # the optimizers were rebuilt for the sketched parameters
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.parameters()}


def test_min_mode_bounds_the_loss_from_above(tmp_path):
    callback = SketchTuneCallback(monitor="val_loss", mode="min", max_drop=0.05, objective="size", n_trials=5,
                                  verbose=False)
    trainer, model = _fit(str(tmp_path), [callback])
    report = callback.report
    assert report.dense_metric == pytest.approx(float(trainer.callback_metrics["val_loss"]), abs=1e-5)
    assert report.threshold_metric == pytest.approx(report.dense_metric + 0.05)
    assert report.best_params, "a 5% loss budget admits some sketch of a 128-wide MLP"
    assert report.tuned_metric <= report.threshold_metric
    dm = DigitsDataModule()
    dm.setup()
    with torch.no_grad():
        losses = [torch.nn.functional.cross_entropy(model(x), y) for x, y in dm.val_dataloader()]
    sizes = [len(y) for _, y in dm.val_dataloader()]
    manual = sum(loss.item() * n for loss, n in zip(losses, sizes, strict=True)) / sum(sizes)
    assert manual == pytest.approx(report.tuned_metric, abs=1e-5)


def test_absolute_threshold_and_speed_objective_accept_only_faster_plans(tmp_path):
    callback = SketchTuneCallback(accuracy_threshold=0.8, objective="speed", n_trials=4, timing_repeats=5,
                                  screen_batches=2, verbose=False)
    _, model = _fit(str(tmp_path), [callback])
    report, results = callback.report, callback.tuner.results
    assert report.threshold_metric == 0.8
    timing = report.dense_timing
    assert timing["threads"] == torch.get_num_threads() and timing["repeats"] == 5
    assert timing["precision"] == "32-true" and timing["device"] == "cpu" and timing["mode"] == "inference"
    sketched = {n for n, m in model.named_modules() if isinstance(m, SKLinear)}
    assert sketched == set(report.best_params)
    # whatever this machine measured: a layer is kept only if its sketch was timed faster than dense,
    # and the whole plan only if the tuned model was timed faster than the dense one
    for group, layers in results.groups.items():
        record = results.selected_record(group)  # the installed trial (may be a spare-margin one, not the best)
        if set(layers) & sketched:
            # a spare-margin trial (below its group's share, so never timed alone) is vetted by the
            # composed model's timing instead, checked below
            assert record.accuracy >= 0.8 and (record.speed is None or record.speed > 1.0)
    if sketched:
        assert report.speedup > 1.0 and report.tuned_metric >= 0.8
    else:
        assert report.tuned_metric == report.dense_metric


def test_finetune_trains_the_sketched_model_outside_the_fit_loop(tmp_path):
    callback = SketchTuneCallback(max_drop=0.05, objective="size", n_trials=4, finetune_epochs=1, verbose=False)
    trainer, model = _fit(str(tmp_path), [callback])
    plain_trainer, _ = _fit(str(tmp_path / "plain"), [])
    assert callback.report.best_params
    dm = DigitsDataModule()
    dm.setup()
    assert callback.report.finetuned_metric == pytest.approx(accuracy(model, dm), abs=1e-6)
    assert trainer.global_step == plain_trainer.global_step
    assert float(trainer.callback_metrics["train_loss"]) == float(plain_trainer.callback_metrics["train_loss"])


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "maximum"}, "mode must be one of"),
    ({"monitor": ""}, "monitor must be"),
    ({"max_drop": -0.1}, "max_drop must be >= 0"),
    ({"accuracy_threshold": float("nan")}, "accuracy_threshold must be a finite number"),
    ({"n_trials": 0}, "n_trials must be an integer >= 1"),
    ({"objective": "latency"}, "objective must be one of"),
    ({"configs": [{"layer_names": "net", "params": "auto", "bogus": 1}]}, "unknown LayerConfig keys"),
    ({"configs": 42}, "tuning configs must be"),
    ({"n_trials": 5, "search_algorithm": object()}, "not both"),
    ({"share_accuracy_drop": "no"}, "share_accuracy_drop must be True or False"),
])
def test_bad_arguments_fail_in_init(kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SketchTuneCallback(**kwargs)


def test_configs_accept_objects_dicts_and_the_default():
    from panther.tuner import Int, LayerConfig, OptunaSearch, TuningConfigs

    config = LayerConfig(layer_names=["net.2"], params={"low_rank": Int(4, 16, step=4)})
    as_dict = {"layer_names": ["net.2"], "params": {"low_rank": {"type": "int", "low": 4, "high": 16, "step": 4}}}
    for given in (TuningConfigs([config]), [config], config, [as_dict], as_dict):
        assert list(SketchTuneCallback(configs=given).options.configs) == [config]
    (default,) = SketchTuneCallback().options.configs
    assert default.layer_names == {"type": ["Linear", "Conv1D"]} and default.is_auto and default.separate
    search = OptunaSearch(n_trials=2, seed=3)
    assert SketchTuneCallback(search_algorithm=search).options.search_algorithm is search


class NoValidation(DigitsClassifier):
    validation_step = pl.LightningModule.validation_step


def test_missing_validation_fails_before_training(tmp_path):
    trainer = make_trainer(str(tmp_path), [SketchTuneCallback()], limit_val_batches=0)
    model = DigitsClassifier()
    with pytest.raises(ValueError, match="limit_val_batches=0"):
        trainer.fit(model, DigitsDataModule())
    assert trainer.global_step == 0
    trainer = make_trainer(str(tmp_path), [SketchTuneCallback()])
    with pytest.raises(ValueError, match="does not define"):
        trainer.fit(NoValidation(), DigitsDataModule())
    assert trainer.global_step == 0


def test_unknown_monitor_is_reported_with_the_logged_names(tmp_path):
    trainer = make_trainer(str(tmp_path), [SketchTuneCallback(monitor="val_f1", verbose=False)], max_epochs=1)
    with pytest.raises(KeyError, match="val_acc"):
        trainer.fit(DigitsClassifier(hidden=32), DigitsDataModule())
