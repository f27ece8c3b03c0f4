"""Workers that die mid-trial: heartbeats, reclaiming their trials, and which trials use up the budget.

Several processes share one Optuna study (see :mod:`panther.tuner.search.optuna_search`). A worker
killed while it evaluates a trial leaves that trial ``RUNNING`` forever, which would both eat a
slot of ``n_trials`` and keep the other workers waiting for its result. Two ways to notice:

* **Heartbeat** (RDB storages, any host): while a trial runs, :class:`Heartbeat` records a beat
  every ``heartbeat_interval`` seconds; a trial whose beat is older than the grace period is
  stale (the storage's own test, as Optuna's ``fail_stale_trials`` uses it).
* **Process check** (every storage, e.g. a journal file, which has no heartbeat; same host only):
  each trial carries its worker's token ``host:pid:nonce`` (:data:`WORKER_ATTR`); a trial whose
  process on this host is gone is dead. A worker on another host cannot be checked this way.

:func:`reclaim_dead_trials` marks a dead trial (:data:`RECLAIM_ATTR`), fails it (the storage lets
exactly one worker do that, so exactly one queues the retry) and queues a retry: a ``WAITING``
copy of the trial in Optuna's ``RetryFailedTrialCallback`` format (system attrs ``failed_trial``
and ``retry_history``, see :class:`RetryDeadTrials`). A worker that sees a marked failure whose
retry is not queued yet (:func:`retries_pending`) keeps waiting instead of taking the budget as
spent. The replaced original no longer counts towards the budget, its retry does
(:func:`budget_trials`), so no finished trial is lost and none is counted twice.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState, create_trial

from panther.tuner.search._optuna_compat import stale_trial_ids, study_id, study_storage, trial_id

logger = logging.getLogger(__name__)

#: User attribute holding the token of the worker evaluating a trial (the tuner writes the same key).
WORKER_ATTR = "panther.worker"
#: How long a running trial may lack its worker's token (it is written right after the trial is
#: created) before it counts as someone else's that will never report.
TOKEN_WRITE_S = 10.0
#: User attribute set on a dead worker's trial just before it is failed and queued again.
RECLAIM_ATTR = "panther.reclaimed"
#: User attribute marking a proposal failed at once because the budget was already spent.
SURPLUS_ATTR = "panther_surplus"
_BUDGET_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def worker_token(nonce: str) -> str:
    """``host:pid:nonce`` of the calling process (the pid is read now, so forked workers differ)."""
    return f"{socket.gethostname()}:{os.getpid()}:{nonce}"


def new_nonce() -> str:
    """A random tag telling apart two searches in one process."""
    return uuid.uuid4().hex[:8]


def process_gone(token: Any) -> bool:
    """Whether ``token`` names a process on this host that no longer exists (other hosts: unknown, ``False``)."""
    if not isinstance(token, str):
        return False
    host, _, rest = token.partition(":")
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return True
    except (ValueError, OSError):  # unparsable, or another user's live process
        return False
    return False


def heartbeat_enabled(storage: BaseStorage | None) -> bool:
    """Whether ``storage`` records heartbeats (an RDB storage created with ``heartbeat_interval``)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


class RetryDeadTrials:
    """Re-queue a dead worker's trial, at most ``max_retry`` times in a row.

    Like Optuna's ``RetryFailedTrialCallback`` (same system attrs), but the tuner's per-trial
    records (``panther.*`` user attrs, the dead worker's token among them) are not copied, and a
    trial already retried by another worker is not queued again.
    """

    def __init__(self, max_retry: int | None = 3) -> None:
        self.max_retry = max_retry

    def allows(self, trial: FrozenTrial) -> bool:
        """Whether ``trial`` may be queued again (its retries so far are below ``max_retry``)."""
        return self.max_retry is None or len(trial.system_attrs.get("retry_history", ())) < self.max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if not self.allows(trial):
            return
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        if trial.number in superseded_numbers(study.get_trials(deepcopy=False)):
            return
        study.add_trial(create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs={k: v for k, v in trial.user_attrs.items() if not k.startswith("panther.")},
            system_attrs={**trial.system_attrs, "failed_trial": trial.system_attrs.get("failed_trial", trial.number),
                          "retry_history": history},
        ))


def superseded_numbers(trials: Sequence[FrozenTrial]) -> set:
    """Numbers of failed trials that a retry replaced."""
    return {number for t in trials for number in t.system_attrs.get("retry_history", ())}


def budget_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that use up ``n_trials``: all but surplus proposals and the trials a retry replaced."""
    replaced = superseded_numbers(trials)
    return [t for t in trials if t.state in _BUDGET_STATES and t.number not in replaced
            and not t.user_attrs.get(SURPLUS_ATTR)]


def may_still_finish(trial: FrozenTrial, heartbeat: bool) -> bool:
    """Whether another worker's running ``trial`` is worth waiting for.

    With a heartbeat every panther trial of another process is (a dead worker's goes stale and is
    reclaimed); without one only those of a live process on this host, since a dead one elsewhere
    would never be noticed. A trial not yet carrying a token is waited for while it is young
    (:data:`TOKEN_WRITE_S`): otherwise a worker could stop just before another's last result lands.
    """
    token = trial.user_attrs.get(WORKER_ATTR)
    if trial.state != TrialState.RUNNING:
        return False
    if not isinstance(token, str):
        # Asking for a trial and writing its token are two writes: a worker may be between them.
        started = trial.datetime_start
        return started is not None and (datetime.datetime.now() - started).total_seconds() < TOKEN_WRITE_S
    host, _, rest = token.partition(":")
    local = host == socket.gethostname()
    if local and rest.partition(":")[0] == str(os.getpid()):
        return False  # this process's own (another search object's): waiting here would block it
    return heartbeat or (local and not process_gone(token))


def retries_pending(trials: Sequence[FrozenTrial], retry: RetryDeadTrials) -> list[FrozenTrial]:
    """Reclaimed trials whose retry is due but not queued yet (the reclaiming worker is about to)."""
    replaced = superseded_numbers(trials)
    return [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get(RECLAIM_ATTR)
            and t.number not in replaced and retry.allows(t)]


def reclaim_dead_trials(study: optuna.Study, retry: RetryDeadTrials) -> None:
    """Fail each dead worker's running trial and queue it again (see the module docstring)."""
    storage = study_storage(study)  # the handle Optuna's own fail_stale_trials works on
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = set(stale_trial_ids(storage, study_id(study))) if heartbeat_enabled(storage) else set()
    for trial in running:
        if trial_id(trial) not in stale and not process_gone(trial.user_attrs.get(WORKER_ATTR)):
            continue
        try:
            storage.set_trial_user_attr(trial_id(trial), RECLAIM_ATTR, True)
            if not storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker failed it first and queues the retry (or it finished after all)
        retry(study, storage.get_trial(trial_id(trial)))


class Heartbeat:
    """Records the pending trial's heartbeat in a daemon thread until :meth:`stop`.

    The first beat is recorded before the constructor returns: a trial that never beat is never
    stale in Optuna's test, so a worker killed before its thread's first beat would block the rest.
    A beat that fails (the database briefly away) is logged and tried again at the next interval.
    """

    def __init__(self, storage: BaseStorage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._beat, name=f"panther-heartbeat-{trial_id}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval()  # type: ignore[attr-defined]
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)  # type: ignore[attr-defined]
            except Exception:  # keep beating: a trial that misses beats would be retried elsewhere
                logger.warning("heartbeat of trial id %d failed", self._trial_id, exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
