"""Study life-cycle for :class:`~panther.tuner.search.optuna_search.OptunaSearch`: storages, opening
a group's study, telling results, and Optuna's INFO logging kept quiet.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
import warnings
from collections.abc import Iterator
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState

#: Tries to open an RDB storage while other workers create its tables (see :func:`connect`).
_CONNECT_ATTEMPTS = 5


def journal_storage(path: str | os.PathLike) -> BaseStorage:
    """A file-based storage that several local processes can share (no database needed)."""
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(os.fspath(path)))


def connect(url: str, options: dict[str, Any]) -> BaseStorage:
    """The RDB storage at ``url``, retried while other workers create the tables of a fresh database.

    Workers started together on an empty database all try to create Optuna's schema; all but one
    get a duplicate-object error (SQLite: an operational "table already exists"), and find the
    schema complete a moment later.
    """
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # Optuna's heartbeat is "experimental"
        for attempt in range(1, _CONNECT_ATTEMPTS):
            try:
                return optuna.storages.get_storage(optuna.storages.RDBStorage(url, **options))
            except (IntegrityError, OperationalError, ProgrammingError):
                time.sleep(0.2 * attempt)
        return optuna.storages.get_storage(optuna.storages.RDBStorage(url, **options))  # the last try raises


def check_heartbeat(storage: Any, interval: Any, grace_period: Any, max_retry: Any) -> None:
    """Fail at construction, not in the middle of a distributed run, on bad heartbeat options."""
    for name, value, low in (("heartbeat_interval", interval, 1), ("grace_period", grace_period, 1),
                             ("max_retry", max_retry, 0)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"{name} must be an integer >= {low} or None, got {value!r}")
    if interval is None and grace_period is not None:
        raise ValueError("grace_period needs heartbeat_interval")
    if interval is not None and not isinstance(storage, str):
        raise ValueError("heartbeat_interval needs storage to be an RDB URL (e.g. 'postgresql://...'); for an "
                         "RDBStorage object, set heartbeat_interval on it instead")


def open_study(name: str, storage: BaseStorage | None, sampler: BaseSampler, pruner: BasePruner | None,
               direction: str, load_if_exists: bool) -> optuna.Study:
    """Create (or, with ``load_if_exists``, reopen) the study ``name``, checked to go ``direction``."""
    try:
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage,
                # Optuna samplers cache per-study state, so each study gets a pristine copy.
                sampler=copy.deepcopy(sampler),
                pruner=copy.deepcopy(pruner),
                direction=direction,
                study_name=name,
                load_if_exists=load_if_exists,
            )
    except optuna.exceptions.DuplicatedStudyError as err:
        raise optuna.exceptions.DuplicatedStudyError(
            f"study {name!r} already exists in the storage; pass load_if_exists=True to resume it "
            "or choose another study_name"
        ) from err
    found = study.direction.name.lower()
    if found != direction:
        raise ValueError(f"study {name!r} in the storage is set to {found}, but this search is to {direction}")
    return study


def tell(trial: Trial, value: float | None = None, state: TrialState | None = None) -> None:
    """``study.tell`` of ``trial``, tolerating the ``GridSampler``'s stop outside ``optimize``."""
    study = trial.study
    try:
        with quiet_optuna():
            study.tell(trial, value, state=state)
    except RuntimeError:
        # GridSampler calls study.stop() after the last grid point, which Optuna only allows
        # inside study.optimize(); the result is stored before that, so only re-raise if not.
        if not _is_finished(study, trial.number):
            raise


def best_trial(study: optuna.Study | None) -> FrozenTrial | None:
    """``study``'s best trial, or ``None`` before any completed one."""
    if study is None:
        return None
    try:
        return study.best_trial
    except ValueError:  # no completed trial yet
        return None


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Run at WARNING while Optuna's verbosity is at its INFO default."""
    if optuna.logging.get_verbosity() != optuna.logging.INFO:
        yield
        return
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(optuna.logging.INFO)


def _is_finished(study: optuna.Study, number: int) -> bool:
    return any(t.number == number and t.state.is_finished() for t in study.get_trials(deepcopy=False))
