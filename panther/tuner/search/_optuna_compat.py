"""Every private Optuna name ``panther.tuner.search`` touches, behind one small named helper each.

Sharing a study between workers needs what Optuna keeps private: a study's storage handle and id
(the handle Optuna's own ``fail_stale_trials`` works on), a trial's storage id (to write to a trial
that another worker created), an RDB storage's list of trials whose heartbeat went stale, and the
RDB storage behind that handle (whose database engine locks a study's budget, see :mod:`._budget_lock`).
No other module names them. :data:`PRIVATE_ATTRIBUTES` lists them, and
``tests/tuner/test_optuna_compat.py`` checks each against the installed Optuna, so an upgrade that
renames one fails there, by name, and not in the middle of a distributed tuning run.
``pyproject.toml`` bounds ``optuna`` to the major versions that test has passed on.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import FrozenTrial, Trial

#: Private attributes used here, by the class holding them (``Study``'s and ``FrozenTrial``'s are
#: instance attributes). The storage's is a method of the handle a study on an RDB storage holds
#: (Optuna wraps it in a caching ``BaseStorage``).
PRIVATE_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "optuna.study.Study": ("_storage", "_study_id"),
    "optuna.trial.Trial": ("_trial_id",),
    "optuna.trial.FrozenTrial": ("_trial_id",),
    "optuna.storages.BaseStorage": ("_get_stale_trial_ids", "_backend"),
}


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage handle ``study`` reads and writes through (shared by its trials)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """``study``'s id in its storage."""
    return study._study_id


def trial_id(trial: Trial | FrozenTrial) -> int:
    """``trial``'s id in its storage (unlike ``trial.number``, what the storage's trial methods take)."""
    return trial._trial_id


def stale_trial_ids(storage: BaseStorage, study: int) -> list[int]:
    """Ids of study ``study``'s running trials whose heartbeat is older than the grace period
    (a storage with heartbeats: the test Optuna's ``fail_stale_trials`` applies)."""
    return storage._get_stale_trial_ids(study)  # type: ignore[attr-defined]


def rdb_engine(storage: BaseStorage) -> Any:
    """The SQLAlchemy engine of the RDB storage behind a study's handle ``storage``; ``None`` for other storages."""
    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a caching storage
    return backend.engine if isinstance(backend, RDBStorage) else None
