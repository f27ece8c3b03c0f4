"""A worker killed with SIGKILL in the middle of a trial: its trial is failed, retried, and nothing is lost.

Workers are ``tuning_worker.py`` processes; ``--hang-at K`` parks one inside its K-th trial, where
the test kills it. On PostgreSQL and SQLite the workers beat (``heartbeat_interval=1``,
``grace_period=5``) and each reports a host name of its own (``--host``), so only the heartbeat can
reveal the death; on a journal file, which has no heartbeat, the dead process is noticed by its pid.
"""

import os
import signal

import optuna
import pytest
from optuna.trial import TrialState
from tuning_worker import RANKS, STUDY, THRESHOLD, finish, start, wait_for

from panther.tuner import OptunaSearch


def kill_when_hanging(worker, out) -> int:
    """SIGKILL ``worker`` once it is inside its hanging trial; return the rank of that trial."""
    hang = out.with_name(out.name + ".hang")
    wait_for(hang, [worker])
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()  # reaped: its pid is gone
    return int(hang.read_text())


def ranks_of(trials, state):
    return sorted(t.params["low_rank"] for t in trials if t.state == state)


def finished_by(trials, pid):
    """Ranks the process ``pid`` completed (its token ``host:pid:nonce`` is on its trials)."""
    return sorted(t.params["low_rank"] for t in trials if t.state == TrialState.COMPLETE
                  and t.user_attrs.get("panther.worker", "").split(":")[1] == str(pid))


def check_retried_once(trials, hung_rank):
    """The killed trial is the only failure, and exactly one completed trial is its retry."""
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.params["low_rank"] == hung_rank
    retries = [t for t in trials if failed.number in t.system_attrs.get("retry_history", [])]
    assert [(t.state, t.params["low_rank"]) for t in retries] == [(TrialState.COMPLETE, hung_rank)]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def best_plan(results):
    rank = min(int(r) for r, accuracy in results.items() if accuracy >= THRESHOLD)
    return {"0": {"type": "SKLinear", "params": {"low_rank": rank}}}


def test_killed_worker_on_postgres_is_retried_by_the_others(postgres, tmp_path):
    url = postgres.create_database()
    go = tmp_path / "go"
    outs = [tmp_path / f"worker{i}.json" for i in range(3)]
    victim = start(url, outs[0], "--go", str(go), "--heartbeat", "--host", "machine0", "--hang-at", "2")
    survivors = [start(url, out, "--go", str(go), "--heartbeat", "--host", f"machine{i}")
                 for i, out in enumerate(outs[1:], start=1)]
    for out in outs:
        wait_for(out.with_name(out.name + ".ready"), [victim, *survivors])
    go.touch()
    hung_rank = kill_when_hanging(victim, outs[0])
    results = [finish(worker, out) for worker, out in zip(survivors, outs[1:], strict=True)]

    trials = optuna.load_study(study_name=f"{STUDY}::0", storage=url).trials
    assert ranks_of(trials, TrialState.COMPLETE) == RANKS  # none lost, none counted twice
    check_retried_once(trials, hung_rank)
    before_kill = finished_by(trials, victim.pid)
    assert len(before_kill) == 1  # the victim finished one trial before it hung in its second
    assert sorted(before_kill + results[0]["evaluated"] + results[1]["evaluated"]) == RANKS
    expected = best_plan(results[0]["results"])
    for result in results:
        assert sorted(map(int, result["results"])) == RANKS  # the victim's finished trial too
        assert result["best"] == expected

    fresh = finish(start(url, tmp_path / "fresh.json", "--heartbeat", "--host", "machine3"), tmp_path / "fresh.json")
    assert fresh["evaluated"] == []  # the budget of n_trials is spent in total
    assert fresh["results"] == results[0]["results"] and fresh["best"] == expected
    assert len(optuna.load_study(study_name=f"{STUDY}::0", storage=url).trials) == len(trials)


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_interrupted_process_resumes_to_n_trials_in_total(kind, tmp_path):
    if kind == "sqlite":  # the resumed process acts as another machine: the stale heartbeat tells
        storage, options, again = f"sqlite:///{tmp_path / 'study.db'}", ["--heartbeat"], ["--host", "machine1"]
        study_storage = storage
    else:  # no heartbeat: the resumed process sees that the first one's pid is gone
        storage, options, again = f"journal:{tmp_path / 'study.log'}", [], []
        study_storage = OptunaSearch.journal_storage(tmp_path / "study.log")
    first = start(storage, tmp_path / "first.json", "--hang-at", "4", *options)
    hung_rank = kill_when_hanging(first, tmp_path / "first.json")
    before_kill = finished_by(optuna.load_study(study_name=f"{STUDY}::0", storage=study_storage).trials, first.pid)
    assert len(before_kill) == 3

    resumed = finish(start(storage, tmp_path / "resumed.json", *options, *again), tmp_path / "resumed.json")
    assert hung_rank in resumed["evaluated"]  # the killed trial is run again
    assert sorted(before_kill + resumed["evaluated"]) == RANKS  # and nothing else twice
    trials = optuna.load_study(study_name=f"{STUDY}::0", storage=study_storage).trials
    assert ranks_of(trials, TrialState.COMPLETE) == RANKS
    check_retried_once(trials, hung_rank)
    assert sorted(map(int, resumed["results"])) == RANKS
    assert resumed["best"] == best_plan(resumed["results"])
