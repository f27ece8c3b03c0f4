"""What a tuning run shows while it runs and leaves for the trainer's loggers, beyond the summary.

While it runs: the tuner's own progress (:mod:`panther.tuner._progress`), whose bar follows the
trainer's progress-bar setting, as Lightning's own loops and tuners do. Afterwards: every trial as
a table, one row per layer per trial with the columns of ``SKAutoTuner.get_results_dataframe()``
(:func:`panther.tuner.results.results_rows`, so pandas is not needed), written as
``sketch_trials.csv`` beside the plan file and sent as text to loggers that take it (TensorBoard).
The summary scalars (:meth:`SketchTuneReport.logged_metrics`) say what was applied; the table
says how it was found.
"""

from __future__ import annotations

import csv
import os
from typing import Any

import lightning.pytorch as pl

from panther.tuner.results import TuningResults, results_rows

TRIALS_FILE = "sketch_trials.csv"
#: The TensorBoard text tag of the trials table.
TRIALS_TAG = "sketch/trials"


def progress_bar_setting(trainer: pl.Trainer) -> bool | None:
    """The tuner's ``progress_bar``: off where the trainer shows none, else a bar on a terminal only.

    Read before the session detaches the trainer's callbacks (the progress bar is one of them).
    ``enable_progress_bar=False`` leaves the trainer without a progress-bar callback; one that is
    disabled (``refresh_rate=0``, or not rank 0) counts as none.
    """
    bar = trainer.progress_bar_callback
    if bar is None or not getattr(bar, "is_enabled", True):
        return False
    return None


def stop_live_display(trainer: pl.Trainer) -> None:
    """Stop the trainer's live progress display (``RichProgressBar``'s) before tuning starts.

    Rich redraws it from a thread that reads ``trainer.progress_bar_callback``, which the session
    detaches (the thread then fails), and it captures stdout, which would garble the tuning bar and
    lines. Lightning stops it at the stage's ``teardown`` anyway and starts a new one for the next
    stage; a tqdm bar has no live display and is left alone.
    """
    live = getattr(trainer.progress_bar_callback, "progress", None)
    if callable(getattr(live, "stop", None)):
        live.stop()


def trials_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Every column of ``rows`` in first-seen order (groups tune different parameters)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_trials(results: TuningResults, plan_file: str | None, trainer: pl.Trainer) -> str | None:
    """Write every trial to ``sketch_trials.csv`` beside ``plan_file`` (rank 0 only); its path, or ``None``.

    Without a plan file (no log directory and no ``plan_path``) there is nowhere to put it.
    Missing values are empty cells, as pandas' ``to_csv`` writes them; no trial, an empty file.
    """
    if plan_file is None:
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(plan_file)), TRIALS_FILE)
    if trainer.is_global_zero:
        rows = results_rows(results)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", newline="") as handle:
            if rows:
                writer = csv.DictWriter(handle, fieldnames=trials_columns(rows))
                writer.writeheader()
                writer.writerows(rows)
    return path


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """``rows`` as a Markdown table (TensorBoard renders its text as Markdown)."""
    columns = trials_columns(rows)

    def cell(value: Any) -> str:
        if value is None:
            return ""
        text = f"{value:.4g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def log_trials_text(results: TuningResults, trainer: pl.Trainer) -> None:
    """Add the trials table as text to every logger whose experiment takes text (TensorBoard's ``add_text``).

    Duck-typed rather than ``isinstance(TensorBoardLogger)``: tensorboardX writers and custom
    loggers with a ``SummaryWriter`` get it too. Rank 0 only.
    """
    if not trainer.is_global_zero:
        return
    rows = results_rows(results)
    if not rows:
        return
    for logger in trainer.loggers:
        add_text = getattr(getattr(logger, "experiment", None), "add_text", None)
        if callable(add_text):
            add_text(TRIALS_TAG, markdown_table(rows), global_step=trainer.global_step)
