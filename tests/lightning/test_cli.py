"""LightningCLI: the callback from flags and from a YAML file, its help, and bad values."""

from __future__ import annotations

import os
import sys

import pytest
import yaml
from conftest import EXAMPLES

from panther.nn import SKLinear
from panther_lightning import SketchTuneCallback

sys.path.insert(0, os.path.abspath(EXAMPLES))
from lightning_cli import main  # noqa: E402

COMMON = ["--trainer.max_epochs=2", "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
          "--trainer.accelerator=cpu", "--model.hidden=128", "--seed_everything=0"]


@pytest.fixture(autouse=True)
def _no_pytest_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning_cli.py"])


def _callback(cli) -> SketchTuneCallback:
    (callback,) = [c for c in cli.trainer.callbacks if isinstance(c, SketchTuneCallback)]
    return callback


def test_callback_from_flags(tmp_path):
    cli = main(["fit", *COMMON, f"--trainer.default_root_dir={tmp_path}",
                "--trainer.callbacks+=panther_lightning.SketchTuneCallback",
                "--trainer.callbacks.monitor=val_acc", "--trainer.callbacks.objective=size",
                "--trainer.callbacks.max_drop=0.05", "--trainer.callbacks.n_trials=3",
                "--trainer.callbacks.verbose=false",
                '--trainer.callbacks.configs=[{"layer_names": ["net.2"], "params": "auto"}]'])
    callback = _callback(cli)
    assert callback.options.max_drop == 0.05 and callback.options.objective == "size"
    assert set(callback.best_params) == {"net.2"}
    assert isinstance(cli.model.net[2], SKLinear) and not isinstance(cli.model.net[0], SKLinear)
    assert os.path.exists(callback.plan_file)


def test_callback_from_yaml_with_layer_configs(tmp_path):
    with open(os.path.join(EXAMPLES, "lightning_cli.yaml")) as handle:
        config = yaml.safe_load(handle)
    init_args = config["trainer"]["callbacks"][0]["init_args"]
    init_args.update(n_trials=3, verbose=False, max_drop=0.05)
    config["trainer"].update(max_epochs=2, default_root_dir=str(tmp_path))
    config["model"]["hidden"] = 128
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = main(["fit", f"--config={path}"])
    callback = _callback(cli)
    assert callback.options.configs[0].layer_names == ["net.0", "net.2"]
    assert set(callback.best_params) <= {"net.0", "net.2"} and callback.best_params
    for params in callback.best_params.values():
        assert 4 <= params["low_rank"] <= 32 and params["low_rank"] % 4 == 0 and params["init"] == "svd"


def test_help_documents_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--trainer.callbacks.help", "panther_lightning.SketchTuneCallback"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("configs", "monitor", "mode", "accuracy_threshold", "max_drop", "objective", "n_trials",
                   "finetune_epochs", "plan_path", "screen_batches", "strategy"):
        assert f"--trainer.callbacks.{option}" in text
    assert "largest allowed worsening" in " ".join(text.split())


def test_invalid_values_are_rejected_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["fit", *COMMON, f"--trainer.default_root_dir={tmp_path}",
              "--trainer.callbacks+=panther_lightning.SketchTuneCallback", "--trainer.callbacks.mode=maximum"])
    assert "Expected a typing.Literal['max', 'min']. Got value: maximum" in capsys.readouterr().err
    with pytest.raises(ValueError, match="max_drop must be >= 0"):
        main(["fit", *COMMON, f"--trainer.default_root_dir={tmp_path}",
              "--trainer.callbacks+=panther_lightning.SketchTuneCallback", "--trainer.callbacks.max_drop=-1"])
    assert not os.path.exists(tmp_path / "lightning_logs")
