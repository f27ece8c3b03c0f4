"""What tuning in Lightning shows while it runs, and the trial table it leaves for the trainer's loggers."""

from __future__ import annotations

import csv
import os
import re
import sys
from typing import Any

import lightning.pytorch as pl
import pytest
from conftest import DigitsClassifier, DigitsDataModule, fit_digits, make_trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, Logger

from panther.tuner.results import TuningResults
from panther_lightning import SketchTuneCallback, SketchTuner

#: Two layers, four ranks each, three trials each: at most 3 + 3 evaluations.
CONFIGS = [{"layer_names": ["net.0", "net.2"], "params": {"num_terms": [1], "low_rank": [4, 8, 16, 32]},
            "separate": True}]
OPTIONS: dict[str, Any] = dict(configs=CONFIGS, n_trials=3, max_drop=0.05, objective="size")
PLANNED = 2 * 3
TRIAL_LINE = re.compile(r"\[net\.[02]\] trial \d+:")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _segments(out: str) -> list[str]:
    """The terminal output as drawn: escape sequences dropped, split at every ``\\r`` and newline."""
    return re.split(r"[\r\n]", ANSI.sub("", out))


def _bars(out: str) -> list[str]:
    """Every state the tuning bar was drawn in (tqdm redraws it after ``\\r``)."""
    return [part for part in _segments(out) if part.startswith("sketch tuning")]


def _trial_lines(out: str) -> list[str]:
    return [part for part in _segments(out) if TRIAL_LINE.match(part)]


def _sketch_tune(root: str, tune_kwargs: dict[str, Any] | None = None,
                 **trainer_kwargs: Any) -> tuple[pl.Trainer, SketchTuner, Any]:
    """A briefly trained digits MLP, then ``SketchTuner.sketch_tune`` with :data:`OPTIONS` (and ``tune_kwargs``)."""
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule()
    trainer = make_trainer(root, max_epochs=1, **trainer_kwargs)
    trainer.fit(DigitsClassifier(hidden=128), datamodule=dm)
    tuner = SketchTuner(trainer)
    autotuner = tuner.sketch_tune(trainer.lightning_module, datamodule=dm, **OPTIONS, **(tune_kwargs or {}))
    return trainer, tuner, autotuner


def _progress_bar(kind: str) -> ProgressBar:
    if kind == "rich":
        pytest.importorskip("rich")
        return RichProgressBar()
    return TQDMProgressBar()


# Rich redraws its display from a thread; one failing (it reads the trainer's callbacks, which
# tuning detaches) would only warn, so that warning fails the test here.
@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("trainer_bar", ["tqdm", "rich"])
def test_callback_on_a_terminal_shows_a_bar_of_the_trials_the_group_and_the_best_saving(tmp_path, capsys,
                                                                                         monkeypatch, trainer_bar):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    callback = SketchTuneCallback(**OPTIONS)
    fit_digits(str(tmp_path), [callback, _progress_bar(trainer_bar)], enable_progress_bar=True, max_epochs=1)
    out = capsys.readouterr().out
    records = callback.tuner.results.records
    assert 0 < len(records) <= PLANNED
    final = _bars(out)[-1]
    assert re.search(rf"\b{len(records)}/{PLANNED}\b", final), final
    assert f"group {records[-1].group}" in final
    best = max(1 - r.size_ratio for r in records if r.feasible)
    assert f"best saving {best:.0%}" in final
    # the per-trial lines are written above the bar, and the summary after it
    assert len(_trial_lines(out)) == len(records)
    assert out.rindex("sketch tuning") < out.index("tuning summary")


def test_no_bar_when_the_trainer_has_none_even_on_a_terminal(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    _, _, autotuner = _sketch_tune(str(tmp_path), enable_progress_bar=False)
    out = capsys.readouterr().out
    assert not _bars(out)
    assert len(_trial_lines(out)) == len(autotuner.results.records) > 0


def test_without_a_terminal_each_trial_is_one_line_and_no_bar(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: False)
    _, _, autotuner = _sketch_tune(str(tmp_path), enable_progress_bar=True)
    out = capsys.readouterr().out
    assert not _bars(out)
    lines = _trial_lines(out)
    assert len(lines) == len(autotuner.results.records) > 0


def test_not_verbose_shows_neither(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    callback = SketchTuneCallback(**OPTIONS, verbose=False)
    fit_digits(str(tmp_path), [callback], enable_progress_bar=True, max_epochs=1)
    out = capsys.readouterr().out
    assert callback.tuner.results.records and not _bars(out) and not _trial_lines(out)


def _expected_rows(results: TuningResults) -> list[dict[str, str]]:
    """The CSV rows as they should read back: one per layer per trial record, missing values empty."""
    def text(value: Any) -> str:
        return "" if value is None else str(value)

    rows = []
    for record in results.records:
        for layer in record.layer_names:
            rows.append({"layer_name": layer, "group": record.group, "trial": str(record.trial),
                         **{name: text(value) for name, value in record.params.items()},
                         "accuracy": text(record.accuracy), "score": text(record.score),
                         "feasible": str(record.feasible), "status": record.status,
                         "bytes": text(record.bytes), "dense_bytes": text(record.dense_bytes)})
    return rows


def test_sketch_trials_csv_beside_the_plan_holds_every_trial(tmp_path):
    callback = SketchTuneCallback(**OPTIONS, verbose=False)
    trainer, _ = fit_digits(str(tmp_path), [callback], max_epochs=1)
    assert callback.trials_file == os.path.join(trainer.log_dir, "sketch_trials.csv")
    assert os.path.dirname(callback.trials_file) == os.path.dirname(callback.plan_file)
    with open(callback.trials_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = _expected_rows(callback.tuner.results)
    assert len(rows) == len(expected) == len(callback.tuner.results.records) > 0  # one layer per group here
    assert [{key: row[key] for key in want} for row, want in zip(rows, expected, strict=True)] == expected
    # the columns of get_results_dataframe(), in its order
    assert list(rows[0]) == list(callback.tuner.get_results_dataframe().columns)


def test_sketch_tune_writes_the_trials_beside_a_given_plan_path(tmp_path):
    plan = tmp_path / "out" / "plan.json"
    _, tuner, autotuner = _sketch_tune(str(tmp_path), dict(plan_path=str(plan), verbose=False))
    assert tuner.trials_file == str(tmp_path / "out" / "sketch_trials.csv")
    with open(tuner.trials_file, newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = _expected_rows(autotuner.results)
    assert [{key: row[key] for key in want} for row, want in zip(rows, expected, strict=True)] == expected


class _TextWriter:
    """Records ``add_text`` calls as TensorBoard's ``SummaryWriter`` receives them."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str, int]] = []

    def add_text(self, tag: str, text_string: str, global_step: int) -> None:
        self.texts.append((tag, text_string, global_step))


class _TextLogger(Logger):
    """A logger whose experiment takes text, as TensorBoardLogger's does."""

    def __init__(self) -> None:
        super().__init__()
        self.writer = _TextWriter()

    @property
    def name(self) -> str:
        return "text"

    @property
    def version(self) -> int:
        return 0

    @property
    def experiment(self) -> _TextWriter:
        return self.writer

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: Any = None) -> None:
        pass


def _markdown_rows(text: str) -> list[list[str]]:
    """The cells of a Markdown table's header and body rows (the ``|---|`` separator dropped)."""
    lines = text.strip().splitlines()
    assert set(lines[1]) == {"|", "-"}, lines[1]
    return [[cell.strip() for cell in line.strip().strip("|").split(" | ")] for line in [lines[0], *lines[2:]]]


def test_a_logger_taking_text_gets_the_trials_table(tmp_path):
    text_logger = _TextLogger()
    callback = SketchTuneCallback(**OPTIONS, verbose=False)
    trainer, _ = fit_digits(str(tmp_path), [callback], max_epochs=1, logger=[CSVLogger(str(tmp_path)), text_logger])
    ((tag, text, step),) = text_logger.writer.texts
    assert tag == "sketch/trials" and step == trainer.global_step
    header, *body = _markdown_rows(text)
    records = callback.tuner.results.records
    assert header[:3] == ["layer_name", "group", "trial"] and "accuracy" in header and "low_rank" in header
    assert [(row[0], row[1], int(row[2])) for row in body] == [(r.layer_names[0], r.group, r.trial) for r in records]
    ranks = [row[header.index("low_rank")] for row in body]
    assert ranks == [str(r.params["low_rank"]) for r in records]


def test_tensorboard_logger_gets_the_trials_table(tmp_path):
    pytest.importorskip("tensorboard")
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(str(tmp_path))
    callback = SketchTuneCallback(**OPTIONS, verbose=False)
    fit_digits(str(tmp_path), [callback], max_epochs=1, logger=logger)
    events = EventAccumulator(logger.log_dir, size_guidance={"tensors": 0})
    events.Reload()
    (event,) = events.Tensors("sketch/trials/text_summary")
    text = event.tensor_proto.string_val[0].decode()
    header, *body = _markdown_rows(text)
    assert [int(row[header.index("trial")]) for row in body] == [r.trial for r in callback.tuner.results.records]
