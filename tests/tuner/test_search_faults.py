"""Dead workers' trials in ``OptunaSearch``: budget accounting, retries, and the heartbeat options."""

import copy
import datetime
import socket
import subprocess

import optuna
import pytest
from optuna.distributions import IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from panther.tuner import Int, OptunaSearch
from panther.tuner.search.faults import TOKEN_WRITE_S, RetryDeadTrials, budget_trials, may_still_finish

SPACE = {"x": Int(0, 9)}


def _trial(state, x, number_attrs=None, **user_attrs):
    return create_trial(state=state, value=float(x) if state == TrialState.COMPLETE else None, params={"x": x},
                        distributions={"x": IntDistribution(0, 9)}, user_attrs=user_attrs,
                        system_attrs=number_attrs or {})


def test_budget_counts_a_retry_instead_of_the_trial_it_replaces():
    study = optuna.create_study()
    study.add_trials([
        _trial(TrialState.COMPLETE, 1),                                   # 0: counts
        _trial(TrialState.FAIL, 2),                                       # 1: replaced by 3 -> not counted
        _trial(TrialState.FAIL, 3, **{"panther_surplus": True}),          # 2: surplus -> not counted
        _trial(TrialState.WAITING, 2, {"failed_trial": 1, "retry_history": [1]}),  # 3: the retry counts
        _trial(TrialState.FAIL, 4),                                       # 4: a plain failure counts
        _trial(TrialState.FAIL, 5),                                       # 5: replaced twice: by 6, then 7
        _trial(TrialState.FAIL, 5, {"failed_trial": 5, "retry_history": [5]}),
        _trial(TrialState.RUNNING, 5, {"failed_trial": 5, "retry_history": [5, 6]}),  # 7 counts
    ])
    assert [t.number for t in budget_trials(study.get_trials())] == [0, 3, 4, 7]


def test_retry_drops_the_tuners_records_and_is_queued_once_and_at_most_max_retry_times():
    study = optuna.create_study()
    study.add_trial(_trial(TrialState.FAIL, 5, **{"panther.worker": "h:1:a", "panther.accuracy": 0.5, "note": 1}))
    retry = RetryDeadTrials(max_retry=2)
    failed = study.trials[0]
    retry(study, failed)
    retry(study, failed)  # another worker reclaiming the same trial: no second copy
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.params == {"x": 5} and queued.user_attrs == {"note": 1}
    assert queued.system_attrs["retry_history"] == [0] and queued.system_attrs["failed_trial"] == 0

    again = create_trial(state=TrialState.FAIL, params=queued.params, distributions=queued.distributions,
                         system_attrs={**queued.system_attrs, "retry_history": [0, 1]})
    study.add_trial(again)
    retry(study, study.trials[-1])  # a third attempt would exceed max_retry=2
    assert len(study.get_trials(states=(TrialState.WAITING,))) == 1


def test_a_dead_local_process_trial_is_retried_without_heartbeat(tmp_path):
    storage = OptunaSearch.journal_storage(tmp_path / "study.log")
    dead = subprocess.Popen(["true"])
    dead.wait()  # reaped: its pid names no process now
    study = optuna.create_study(study_name="s::g", storage=storage, direction="maximize")
    trial = study.ask({"x": IntDistribution(0, 9)})
    trial.set_user_attr("panther.worker", f"{socket.gethostname()}:{dead.pid}:x")

    search = OptunaSearch(n_trials=2, study_name="s", storage=storage, load_if_exists=True, seed=0)
    search.start_group("g", SPACE)
    assert search.get_next_params() == {"x": trial.params["x"]}  # the dead trial's retry comes first
    states = [t.state for t in search.study.trials]
    assert states == [TrialState.FAIL, TrialState.RUNNING]
    search.update({"x": trial.params["x"]}, 1.0)
    assert search.get_next_params() is not None  # the failed attempt did not use up the budget
    search.update(search.pending_trial.params, 2.0)
    assert search.is_finished() and len(search.study.get_trials(states=(TrialState.COMPLETE,))) == 2


@pytest.mark.parametrize("kwargs, match", [
    ({"heartbeat_interval": 1}, "RDB URL"),
    ({"heartbeat_interval": 0, "storage": "sqlite://"}, "heartbeat_interval"),
    ({"grace_period": 2, "storage": "sqlite://"}, "needs heartbeat_interval"),
    ({"heartbeat_interval": 1, "grace_period": 1.5, "storage": "sqlite://"}, "grace_period"),
    ({"max_retry": -1}, "max_retry"),
])
def test_heartbeat_options_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OptunaSearch(**kwargs)


def test_heartbeat_storage_is_built_from_the_url(tmp_path):
    search = OptunaSearch(n_trials=1, storage=f"sqlite:///{tmp_path / 'h.db'}", heartbeat_interval=3,
                          grace_period=7, seed=0)
    search.start_group("g", SPACE)
    assert search.study._storage.get_heartbeat_interval() == 3
    params = search.get_next_params()
    search.update(params, 1.0)
    assert search.is_finished()


def test_a_running_trial_without_its_token_yet_is_waited_for_only_while_young():
    """Another worker creates its trial, then writes its token: between the two it must still count."""
    now = datetime.datetime.now()
    young = FrozenTrial(number=0, state=TrialState.RUNNING, value=None, datetime_start=now,
                        datetime_complete=None, params={}, distributions={}, user_attrs={}, system_attrs={},
                        intermediate_values={}, trial_id=0)
    old = copy.copy(young)
    old.datetime_start = now - datetime.timedelta(seconds=TOKEN_WRITE_S + 1)
    assert may_still_finish(young, heartbeat=True) and may_still_finish(young, heartbeat=False)
    assert not may_still_finish(old, heartbeat=True)
