"""What a ``verbose`` tuner shows: one line per trial in logs, a progress bar on a terminal."""

from __future__ import annotations

import re
import sys

from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

SPACE = {"num_terms": [1], "low_rank": [2, 4, 8]}


def tuner_for(model, accuracy_fn, strategy: str = "search") -> SKAutoTuner:
    return SKAutoTuner(model, TuningConfigs([LayerConfig(["fc1", "fc2"], SPACE)]), accuracy_fn, verbose=True,
                       accuracy_threshold=0.5, strategy=strategy)


def test_without_a_terminal_each_trial_is_one_line(digits_model, accuracy_fn, capsys):
    tuner = tuner_for(digits_model, accuracy_fn)
    tuner.tune()
    out = capsys.readouterr().out
    trial_lines = [line for line in out.splitlines() if re.match(r"\[fc[12]\] trial \d+:", line)]
    assert len(trial_lines) == len(tuner.results.records) == 6
    assert "sketch tuning" not in out and "reusing" not in out
    assert "tuning summary" in out


def test_an_allocating_tuner_shows_one_line_per_whole_model_plan(digits_model, accuracy_fn, capsys):
    tuner = tuner_for(digits_model, accuracy_fn, strategy="allocate")
    tuner.tune()
    out = capsys.readouterr().out
    plan_lines = [line for line in out.splitlines() if re.match(r"allocation plan \d+ \((bisect|sensitivity)", line)]
    assert len(plan_lines) == len(tuner.results.plans) > 0
    assert "whole-model plans evaluated" in out


def test_on_a_terminal_a_bar_counts_the_trials_and_shows_the_best_saving(digits_model, accuracy_fn, capsys,
                                                                        monkeypatch):
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    tuner = tuner_for(digits_model, accuracy_fn)
    tuner.tune()
    out = capsys.readouterr().out
    final_bar = [part for part in re.split(r"[\r\n]", out) if part.startswith("sketch tuning")][-1]
    assert re.search(r"\b6/6\b", final_bar)  # evaluations of the most this run can make (two spaces of 3)
    best = max(1 - r.size_ratio for r in tuner.results.records if r.feasible)
    assert f"best saving {best:.0%}" in final_bar
    assert out.index("sketch tuning") < out.index("tuning summary")


def test_quiet_by_default(digits_model, accuracy_fn, capsys):
    SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", SPACE)]), accuracy_fn).tune()
    assert capsys.readouterr().out == ""
