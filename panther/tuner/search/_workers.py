"""Worker sharing for :class:`~panther.tuner.search.optuna_search.OptunaSearch`: several processes on one study.

The budget ``n_trials`` counts every worker's trials (:func:`~panther.tuner.search.faults.budget_trials`);
a worker asks for a trial only while a slot is free, counted under a lock where the storage has one,
and a proposal beyond the budget all the same is failed at once (:func:`ask_within_budget`); a
worker whose budget is spent waits for the others' running trials (:func:`settle`) so that each
ends with the whole study; and a proposal another worker already evaluated (or is evaluating) is
answered with its trial (:func:`earlier_trial`). Dead workers' trials are reclaimed in
:mod:`panther.tuner.search.faults`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import optuna
from optuna.distributions import BaseDistribution
from optuna.samplers import GridSampler
from optuna.trial import FrozenTrial, Trial, TrialState

from panther.tuner.search._budget_lock import budget_lock
from panther.tuner.search._optuna_compat import study_storage
from panther.tuner.search._studies import quiet_optuna, tell
from panther.tuner.search.faults import (
    SURPLUS_ATTR,
    WORKER_ATTR,
    RetryDeadTrials,
    budget_trials,
    heartbeat_enabled,
    may_still_finish,
    reclaim_dead_trials,
    retries_pending,
)

#: Seconds between looks at the study while waiting for other workers' running trials.
_WAIT_POLL_S = 0.5
#: Seconds between looks while waiting for another worker's run of the very same parameters.
_SAME_TRIAL_POLL_S = 0.05
#: Longest wait for that run before evaluating the parameters here after all.
_SAME_TRIAL_PATIENCE_S = 600.0
#: Seconds to wait for another worker to queue the retry of a trial it has just reclaimed.
_RETRY_PATIENCE_S = 30.0


def ask_within_budget(study: optuna.Study, distributions: dict[str, BaseDistribution], n_trials: int,
                      token: str | None, retry: RetryDeadTrials) -> Trial | None:
    """A new trial inside the budget, or ``None`` once it is spent (after :func:`settle`).

    The budget is counted and the trial asked for under :func:`~._budget_lock.budget_lock`, so on
    PostgreSQL no two workers take the same last slot. Where another worker's trial was created
    between the two steps anyway (other storages), the proposal is failed as surplus. ``token``
    (the worker's, for a shared storage) is written on the trial at once, so other workers can tell
    whether it still runs.
    """
    while True:
        with budget_lock(study):
            counted = budget_trials(study.get_trials(deepcopy=False))
            if len(counted) < n_trials or any(t.state == TrialState.WAITING for t in counted):
                trial = _ask(study, distributions)  # a queued retry is popped, not created
                break
        if settle(study, n_trials, retry, mine=None):  # spent: wait for the others' last trials
            return None
    if token is not None:
        trial.set_user_attr(WORKER_ATTR, token)
    earlier = [t for t in budget_trials(study.get_trials(deepcopy=False)) if t.number < trial.number]
    if len(earlier) < n_trials:
        return trial
    trial.set_user_attr(SURPLUS_ATTR, True)  # another worker took the last slot meanwhile
    tell(trial, state=TrialState.FAIL)
    settle(study, n_trials, retry, mine=None)  # as is_finished() would have: wait for the others' last trials
    return None


def _ask(study: optuna.Study, distributions: dict[str, BaseDistribution]) -> Trial:
    with quiet_optuna(), warnings.catch_warnings():
        # Optuna warns that heartbeats belong to study.optimize(); the search beats itself.
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        return study.ask(distributions)


def settle(study: optuna.Study, n_trials: int, retry: RetryDeadTrials, mine: int | None) -> bool:
    """Whether ``study``'s budget is spent, once no other worker's trial may still finish.

    ``mine`` is the number of this worker's pending trial (not waited for). A dead worker's trial
    found meanwhile is failed and queued again, which makes the budget unspent again.
    """
    heartbeat = heartbeat_enabled(study_storage(study))
    patience = time.monotonic() + _RETRY_PATIENCE_S
    while True:
        reclaim_dead_trials(study, retry)
        trials = study.get_trials(deepcopy=False)
        counted = budget_trials(trials)
        if any(t.state == TrialState.WAITING for t in counted):
            return False  # a queued trial (a retry) is part of the budget: run it
        spent = len(counted) >= n_trials or (
            isinstance(study.sampler, GridSampler) and study.sampler.is_exhausted(study))
        running = any(t.number != mine and may_still_finish(t, heartbeat) for t in trials)
        # (a retry not queued within the patience was lost with the worker that reclaimed it)
        queuing = time.monotonic() < patience and bool(retries_pending(trials, retry))
        if not spent or not (running or queuing):
            return spent
        time.sleep(_WAIT_POLL_S)


def earlier_trial(study: optuna.Study, number: int, params: dict[str, Any],
                  has_record: Callable[[FrozenTrial], bool],
                  finished: tuple[TrialState, ...] = (TrialState.COMPLETE,)) -> FrozenTrial | None:
    """A trial numbered below ``number`` with exactly ``params`` (encoded), a record, and a state in ``finished``.

    A matching trial that may still finish is waited for (see
    :func:`~panther.tuner.search.faults.may_still_finish`); only lower numbers count, so two workers
    never wait on each other.
    """
    heartbeat = heartbeat_enabled(study_storage(study))
    deadline = time.monotonic() + _SAME_TRIAL_PATIENCE_S
    while time.monotonic() < deadline:
        same = [t for t in study.get_trials(deepcopy=False) if t.number < number and t.params == params]
        done = [t for t in same if t.state in finished and has_record(t)]
        if done:
            return done[0]
        if not any(may_still_finish(t, heartbeat) for t in same):
            return None
        time.sleep(_SAME_TRIAL_POLL_S)
    return None
