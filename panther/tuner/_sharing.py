"""Reuse of earlier results: this run's, a resumed study's, and other workers' sharing one storage.

Several tuner processes pointed at one Optuna storage split the trials of each group: before a
proposal is evaluated, an identical trial finished elsewhere is adopted, and one still running in
a live worker is waited for (only an earlier one, so two workers never wait on each other).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

from panther.tuner._trials import RECORD_FIELDS, TrialRunner
from panther.tuner.evaluation import describe
from panther.tuner.groups import TuningGroup
from panther.tuner.results import TrialRecord

logger = logging.getLogger(__name__)

#: Prefix of the user attributes the tuner stores on Optuna trials (read back on resume / by other workers).
ATTR = "panther."
WORKER_ATTR = ATTR + "worker"


def worker_token() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_alive(worker: str | None, me: str) -> bool:
    """Whether ``worker`` (another tuner's token on its running trial) may still finish that trial.

    A worker on this host whose process is gone left the trial running when it died: not alive.
    Workers on other hosts cannot be checked and count as alive.
    """
    if worker is None or worker == me:
        return False
    host, _, rest = worker.partition(":")
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(rest.partition(":")[0]), 0)
    except ProcessLookupError:
        return False
    except (ValueError, OSError):
        return True
    return True


class SharedTrials:
    """Finds results for proposals before they are evaluated, and publishes the ones evaluated here."""

    def __init__(self, search: Any, runner: TrialRunner) -> None:
        self.search, self.runner = search, runner
        self.worker = worker_token()

    def result_for(self, group: TuningGroup, params: dict[str, Any]) -> TrialRecord | None:
        """An earlier result for identical ``params``, or ``None`` if they must be evaluated."""
        record = self.runner.known(group, params)
        if record is None:
            self._claim_pending()
            record = self._wait_for_other_worker(group, params)
        if record is None:
            return None
        results = self.runner.results
        results.reused_trials[group.name] = results.reused_trials.get(group.name, 0) + 1
        logger.debug("[%s] %s: already evaluated (trial %d), reusing its result", group.name, describe(params),
                    record.trial)
        return record

    def import_stored(self, group: TuningGroup) -> None:
        """Results already in the group's study (a resumed run): known, and part of the best choice."""
        study = getattr(self.search, "study", None)
        if study is None or not hasattr(study, "get_trials"):
            return
        from optuna.trial import TrialState

        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if ATTR + "status" not in trial.user_attrs or set(trial.params) != set(group.space):
                continue
            params = {name: group.space[name].decode(value) for name, value in trial.params.items()}
            if self.runner.known(group, params) is None:
                self._adopt(group, trial, params)

    def publish(self, record: TrialRecord) -> None:
        """Attach ``record`` to the search's pending trial (other workers and resumed runs read it)."""
        record_attr = getattr(self.search, "record", None)
        if not callable(record_attr) or getattr(self.search, "pending_trial", True) is None:
            return
        for field_name in RECORD_FIELDS:
            record_attr(ATTR + field_name, getattr(record, field_name))

    def attributes(self, record: TrialRecord) -> dict[str, Any]:
        """``record``'s fields as the user attributes stored with a trial."""
        return {ATTR + field_name: getattr(record, field_name) for field_name in RECORD_FIELDS}

    def _claim_pending(self) -> None:
        record_attr = getattr(self.search, "record", None)
        if callable(record_attr) and getattr(self.search, "pending_trial", None) is not None:
            record_attr(WORKER_ATTR, self.worker)

    def _wait_for_other_worker(self, group: TuningGroup, params: dict[str, Any]) -> TrialRecord | None:
        study, pending = getattr(self.search, "study", None), getattr(self.search, "pending_trial", None)
        if study is None or pending is None or getattr(study, "_storage", None) is None:
            return None
        from optuna.trial import TrialState

        encoded = {name: group.space[name].encode(value) for name, value in params.items()}
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            same = [t for t in study.get_trials(deepcopy=False) if t.number < pending.number and t.params == encoded]
            done = [t for t in same if t.state == TrialState.COMPLETE and ATTR + "status" in t.user_attrs]
            if done:
                return self._adopt(group, done[0], params)
            running = [t for t in same if t.state == TrialState.RUNNING
                       and worker_alive(t.user_attrs.get(WORKER_ATTR), self.worker)]
            if not running:
                return None
            time.sleep(0.05)
        return None

    def _adopt(self, group: TuningGroup, trial: Any, params: dict[str, Any]) -> TrialRecord:
        attrs = {f: trial.user_attrs.get(ATTR + f) for f in RECORD_FIELDS}
        return self.runner.new_record(group, params, "storage", score=trial.value, **attrs)
