"""Resuming an allocation from its study (SQLite, and PostgreSQL where installed): no plan is
evaluated twice, nothing is reused wrongly.

``KnownAccuracy`` counts full evaluations, an independent record of what each run evaluated.
"""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState
from test_allocation_study import default_tuner
from test_tuner_allocation import FourLayers, KnownAccuracy

from panther.tuner import OptunaSearch


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    """A fresh database: an SQLite file, or one on the session's local PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'resume.db'}"
    return request.getfixturevalue("postgres").create_database()


def run(storage: str, threshold: float = 0.97, model=None):
    model = FourLayers() if model is None else model
    accuracy = KnownAccuracy(model)
    search = OptunaSearch(study_name="resume", storage=storage, load_if_exists=True)
    tuner = default_tuner(model, accuracy, threshold, search_algorithm=search)
    tuner.tune()
    return tuner, accuracy


def labels(tuner) -> set:
    return {tuple(sorted((g, p["low_rank"]) for g, p in plan.choices.items())) for plan in tuner.results.plans}


def test_a_second_run_of_the_same_tuning_evaluates_no_plan_again(storage):
    first, first_accuracy = run(storage)
    assert first_accuracy.calls == 1 + len(first.results.plans)  # the baseline and every plan
    second, second_accuracy = run(storage)
    assert second_accuracy.calls == 1  # the baseline only
    assert all(plan.reused for plan in second.results.plans)
    assert second.get_best_params() == first.get_best_params()
    assert second.results.composed_accuracy == first.results.composed_accuracy
    study = optuna.load_study(study_name="resume::allocation@0.97", storage=storage)
    assert len(study.trials) == len(first.results.plans)  # nothing recorded twice
    assert study.best_trial.user_attrs["plan"] == first.results.chosen_plan


def test_another_threshold_evaluates_only_the_plans_it_has_not_seen(storage):
    first, _ = run(storage, threshold=0.97)
    second, accuracy = run(storage, threshold=0.99)
    fresh = [p for p in second.results.plans if not p.reused]
    reused = [p for p in second.results.plans if p.reused]
    assert accuracy.calls == 1 + len(fresh)
    assert reused and labels(second) & labels(first)
    seen = labels(first)
    assert all(tuple(sorted((g, c["low_rank"]) for g, c in p.choices.items())) in seen for p in reused)
    assert all(p.feasible == (p.accuracy >= 0.99) for p in second.results.plans)
    study = second.search_algorithm.study
    assert study.study_name == "resume::allocation@0.99" and len(study.trials) == len(second.results.plans)
    assert study.best_trial.user_attrs["plan"] == second.results.chosen_plan
    assert study.best_trial.user_attrs["accuracy"] >= 0.99


def test_a_changed_model_reuses_nothing(tmp_path):
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    run(storage)
    changed = FourLayers()
    with torch.no_grad():
        changed.second.weight.mul_(1.01)
    tuner, accuracy = run(storage, model=changed)
    assert not any(p.reused for p in tuner.results.plans)
    assert accuracy.calls == 1 + len(tuner.results.plans)


def test_the_layers_are_profiled_once_per_model_calibration_set_and_space(tmp_path, monkeypatch):
    import panther.tuner._allocate as allocate

    calls = []
    profile = allocate.profile_layers
    monkeypatch.setattr(allocate, "profile_layers", lambda *a, **k: calls.append(1) or profile(*a, **k))
    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    first, _ = run(storage)
    assert len(calls) == 1
    second, _ = run(storage, threshold=0.99)  # another threshold: the same options
    assert len(calls) == 1
    study = optuna.load_study(study_name="resume::allocation@0.97", storage=storage)
    assert [k for k in study.user_attrs if k.startswith("profile:")]  # stored with the study
    changed = FourLayers()
    with torch.no_grad():
        changed.first.bias.add_(0.1)  # any weight of the model counts
    run(storage, model=changed)
    assert len(calls) == 2
    # the reloaded options lead to the same plans as profiling them again
    again, _ = run(f"sqlite:///{tmp_path / 'fresh.db'}", threshold=0.99)
    assert [p.choices for p in again.results.plans] == [p.choices for p in second.results.plans]
    assert again.get_best_params() == second.get_best_params()


_KILLED_RUN = """
import os, signal, sys
from test_allocation_resume import run
from test_tuner_allocation import KnownAccuracy

evaluate, last = KnownAccuracy.__call__, int(sys.argv[2])

def dies_mid_run(self, model):
    if self.calls == last:  # the baseline and last - 1 plans are done: die evaluating the next
        os.kill(os.getpid(), signal.SIGKILL)
    return evaluate(self, model)

KnownAccuracy.__call__ = dies_mid_run
run(sys.argv[1])
"""


def test_a_run_killed_half_way_resumes_with_nothing_lost_or_counted_twice(storage, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    reference, _ = run(f"sqlite:///{tmp_path / 'reference.db'}")
    plans = len(reference.results.plans)
    done = plans // 2
    here = os.path.dirname(os.path.abspath(__file__))
    # one thread, as tests/conftest.py sets here: the model's SVD-built weights are then the same bits in
    # both processes (the resume key hashes them; other bits are another model, rightly never reused)
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(here)), here])}
    killed = subprocess.run([sys.executable, "-c", _KILLED_RUN, storage, str(1 + done)], env=env, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    study = optuna.load_study(study_name="resume::allocation@0.97", storage=storage)
    finished = (TrialState.COMPLETE, TrialState.PRUNED)
    assert len(study.get_trials(states=finished)) == done  # every finished plan was stored as it finished
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 1  # the plan it was evaluating when killed
    resumed, accuracy = run(storage)
    assert accuracy.calls == 1 + plans - done  # the baseline and the plans the killed run did not finish
    assert resumed.get_best_params() == reference.get_best_params()
    study = optuna.load_study(study_name="resume::allocation@0.97", storage=storage)
    assert len(study.get_trials(states=finished)) == plans  # each plan once
    (dead,) = study.get_trials(states=(TrialState.FAIL,))  # the killed run's claim, failed on resume
    assert dead.user_attrs["dead_worker"] is True
    assert study.best_trial.user_attrs["plan"] == resumed.results.chosen_plan


def test_a_resumed_run_spends_the_budget_as_the_uninterrupted_run_did(tmp_path):
    """Reused plans count towards n_trials: the same walk, the same plans and choice, within the budget."""
    def budgeted(storage):
        model = FourLayers()
        accuracy = KnownAccuracy(model)
        tuner = default_tuner(model, accuracy, search_algorithm=OptunaSearch(
            n_trials=5, study_name="resume", storage=storage, load_if_exists=True))
        tuner.tune()
        return tuner, accuracy

    storage = f"sqlite:///{tmp_path / 'resume.db'}"
    first, _ = budgeted(storage)
    second, accuracy = budgeted(storage)
    assert len(first.results.plans) == len(second.results.plans) == 5
    assert [p.choices for p in second.results.plans] == [p.choices for p in first.results.plans]
    assert accuracy.calls == 1 and second.get_best_params() == first.get_best_params()

