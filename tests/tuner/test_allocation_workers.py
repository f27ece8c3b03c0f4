"""Three worker processes sharing one allocation on one storage (SQLite, and PostgreSQL where installed).

Each worker is its own process running the same tuning (:data:`_WORKER`); ``KnownAccuracy`` counts
each process's full evaluations, an independent record of who evaluated what. The single-process
run is the reference for the chosen plan (the accuracy is monotone along the path, so the k-section
of several workers finds the plan the bisection of one does).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState
from test_allocation_resume import run

from panther.tuner._allocation.workers import ksection_positions

HERE = os.path.dirname(os.path.abspath(__file__))
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.dirname(HERE)), HERE])}

_WORKER = """
import json, os, signal, sys, time
from test_allocation_study import default_tuner
from test_tuner_allocation import FourLayers, KnownAccuracy
from panther.tuner import OptunaSearch

storage, out, go, speed, die_at = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1", int(sys.argv[5])
first_plan_kills = sys.argv[6]  # a marker file: the first worker to evaluate a plan creates it, and dies
evaluate = KnownAccuracy.__call__

def chosen_to_die(calls):
    if calls == die_at:
        return True
    if not first_plan_kills or calls != 1:  # call 0: the baseline
        return False
    try:
        os.close(os.open(first_plan_kills, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False  # another worker was first
    return True

def paced(self, model):
    if chosen_to_die(self.calls):  # the others see this plan claimed, then its worker die
        open(out + ".dying", "w").close()
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1)  # an evaluation takes a while, so the workers overlap
    return evaluate(self, model)

KnownAccuracy.__call__ = paced
open(out + ".ready", "w").close()
while not os.path.exists(go):
    time.sleep(0.01)
model = FourLayers()
accuracy = KnownAccuracy(model)
speed_func = (lambda m: 1.0 / sum(p.numel() for p in m.parameters())) if speed else None
tuner = default_tuner(model, accuracy, search_algorithm=OptunaSearch(study_name="w", storage=storage,
                      load_if_exists=True), optmization_eval_func=speed_func)
tuner.tune()
key = lambda plan: sorted((g, p["low_rank"]) for g, p in plan.choices.items())
with open(out + ".tmp", "w") as handle:
    json.dump({"evaluated": [key(p) for p in tuner.results.plans if not p.reused],
               "plans": sorted(key(p) for p in tuner.results.plans), "calls": accuracy.calls,
               "best": tuner.get_best_params()}, handle)
os.replace(out + ".tmp", out)
"""


@pytest.fixture(params=["sqlite", "postgresql"])
def storage(request, tmp_path) -> str:
    """A fresh database: an SQLite file, or one on the session's local PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'workers.db'}"
    return request.getfixturevalue("postgres").create_database()


def start_workers(storage: str, tmp_path, speed: bool = False, doomed: int | None = None,
                  first_plan_kills: bool = False) -> list:
    """Run three workers together; their exit codes and outputs (``None`` for one that died).

    ``doomed``: that worker starts alone and is killed during its first plan; the others start
    while it evaluates that plan, so they find it claimed, and its worker die. ``first_plan_kills``:
    all start together, and the first to evaluate a plan (one of the first round's) is killed
    during it, a second after the others got their own plans of the round.
    """
    outs = [str(tmp_path / f"worker{i}.json") for i in range(3)]
    gos = [tmp_path / ("first" if i == doomed else "go") for i in range(3)]
    marker = str(tmp_path / "killed") if first_plan_kills else ""
    workers = [subprocess.Popen([sys.executable, "-c", _WORKER, storage, out, str(go), str(int(speed)),
                                 str(1 if i == doomed else -1), marker], env=ENV)
               for i, (out, go) in enumerate(zip(outs, gos, strict=True))]
    deadline = time.monotonic() + 120
    while not all(os.path.exists(out + ".ready") for out in outs) and time.monotonic() < deadline:
        time.sleep(0.05)
    if doomed is not None:
        gos[doomed].touch()
        while not os.path.exists(outs[doomed] + ".dying") and time.monotonic() < deadline:
            time.sleep(0.05)
    (tmp_path / "go").touch()  # the (other) workers start tuning together
    deadline = time.monotonic() + 300
    while None in [w.poll() for w in workers] and time.monotonic() < deadline:  # polls (reaps) each one
        time.sleep(0.05)  # reaps a killed worker at once: a zombie's pid would still look alive
    codes = [w.wait(timeout=1) for w in workers]
    return codes, [json.loads(open(out).read()) if os.path.exists(out) else None for out in outs]


def plan_trials(storage: str, study: str) -> list:
    return optuna.load_study(study_name=study, storage=storage).get_trials(
        states=(TrialState.COMPLETE, TrialState.PRUNED))


def test_ksection_positions_split_the_bracket_and_one_worker_bisects():
    assert ksection_positions(-1, 11, 1) == [5] == [(-1 + 11) // 2]
    assert ksection_positions(-1, 11, 3) == [2, 5, 8]  # four parts of 3 (or 2) positions
    assert ksection_positions(3, 6, 3) == [4, 5]  # fewer left than workers: every one
    assert ksection_positions(3, 4, 3) == []


@pytest.mark.parametrize("speed", [False, True], ids=["bytes", "speed"])
def test_three_workers_split_one_allocation_evaluate_no_plan_twice_and_agree(storage, tmp_path, speed):
    codes, results = start_workers(storage, tmp_path, speed=speed)
    assert codes == [0, 0, 0]
    evaluated = [tuple(map(tuple, plan)) for result in results for plan in result["evaluated"]]
    assert len(evaluated) == len(set(evaluated))  # each plan evaluated once, by one worker
    assert sum(r["calls"] for r in results) == 3 + len(evaluated)  # 3 baselines, then each plan once
    if len(evaluated) > 1:  # by speed on these tiny layers, a loaded machine may time every option slower than dense
        assert sum(bool(r["evaluated"]) for r in results) > 1  # the work was split
    assert all(r["plans"] == results[0]["plans"] for r in results)  # one walk: same profile, same rounds
    assert all(r["best"] == results[0]["best"] for r in results)
    if not speed:  # by size the choice is the path's threshold plan, whoever walks it
        reference, _ = run(f"sqlite:///{tmp_path / 'reference.db'}")
        assert results[0]["best"] == reference.get_best_params()
    study = "w::allocation@0.97" + ("+speed" if speed else "")
    stored = [tuple(sorted(t.params.items())) for t in plan_trials(storage, study)]
    assert len(stored) == len(set(stored)) == len(evaluated)


def test_a_worker_killed_half_way_loses_nothing_and_counts_nothing_twice(storage, tmp_path):
    codes, results = start_workers(storage, tmp_path, doomed=1)
    assert codes == [0, -signal.SIGKILL, 0] and results[1] is None
    survivors = [results[0], results[2]]
    assert survivors[0]["best"] == survivors[1]["best"] and survivors[0]["plans"] == survivors[1]["plans"]
    trials = plan_trials(storage, "w::allocation@0.97")
    stored = [tuple(sorted(t.params.items())) for t in trials]
    assert len(stored) == len(set(stored))  # each plan stored once
    survived = [tuple(map(tuple, p)) for r in survivors for p in r["evaluated"]]
    assert len(survived) == len(set(survived))
    assert len(stored) == len(survived)  # the plan the killed worker was on was evaluated by a survivor
    study = optuna.load_study(study_name="w::allocation@0.97", storage=storage)
    # the killed worker's claim (still running, or failed by a survivor that found its process gone): its plan ...
    (claim,) = [t for t in study.get_trials() if t.state == TrialState.RUNNING or t.user_attrs.get("dead_worker")]
    assert tuple(sorted(claim.params.items())) in stored  # ... was evaluated by a survivor
    rerun, accuracy = run_again(storage)
    assert accuracy.calls == 1 and rerun.get_best_params() == survivors[0]["best"]


def test_a_worker_killed_mid_round_of_three_loses_nothing_and_counts_nothing_twice(storage, tmp_path):
    codes, results = start_workers(storage, tmp_path, first_plan_kills=True)
    assert sorted(codes) == [-signal.SIGKILL, 0, 0]
    board = optuna.load_study(study_name="w::workers", storage=storage)
    (agreed,) = [t.user_attrs["value"] for t in board.get_trials(states=(TrialState.COMPLETE,))
                 if t.user_attrs["claim"].startswith("workers:")]
    assert agreed == 3  # the rounds were split three ways: the killed worker's plan was one third of one
    killed = codes.index(-signal.SIGKILL)
    survivors = [result for index, result in enumerate(results) if index != killed]
    assert results[killed] is None and survivors[0]["plans"] == survivors[1]["plans"]
    reference, _ = run(f"sqlite:///{tmp_path / 'reference.db'}")  # one worker, nothing killed
    assert survivors[0]["best"] == survivors[1]["best"] == reference.get_best_params()  # nothing lost
    evaluated = [tuple(map(tuple, plan)) for result in survivors for plan in result["evaluated"]]
    assert len(evaluated) == len(set(evaluated))  # each plan evaluated once, by one survivor
    assert sum(r["calls"] for r in survivors) == 2 + len(evaluated)  # 2 baselines, then each plan once
    stored = [tuple(sorted(t.params.items())) for t in plan_trials(storage, "w::allocation@0.97")]
    assert len(stored) == len(set(stored)) == len(evaluated)  # each plan a finished trial once
    study = optuna.load_study(study_name="w::allocation@0.97", storage=storage)
    # the killed worker's claim was taken over: failed by a survivor that found its process gone ...
    (claim,) = [t for t in study.get_trials() if t.state == TrialState.RUNNING or t.user_attrs.get("dead_worker")]
    assert claim.state == TrialState.FAIL and claim.user_attrs["dead_worker"]
    assert tuple(sorted(claim.params.items())) in stored  # ... and its plan evaluated by one of them
    rerun, accuracy = run_again(storage)
    assert accuracy.calls == 1 and rerun.get_best_params() == reference.get_best_params()


def run_again(storage: str):
    from test_allocation_study import default_tuner
    from test_tuner_allocation import FourLayers, KnownAccuracy

    from panther.tuner import OptunaSearch

    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = default_tuner(model, accuracy, search_algorithm=OptunaSearch(study_name="w", storage=storage,
                                                                         load_if_exists=True))
    tuner.tune()
    return tuner, accuracy
