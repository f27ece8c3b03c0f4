"""One worker at a time counts a shared study's budget and creates its next trial (PostgreSQL).

Counting the trials that use up ``n_trials`` and asking Optuna for a new one are separate steps. Two
workers that both count the last free slot would both create a trial, and the later one is a
surplus proposal: failed at once, a ``FAIL`` row in the study and in every plot of it. On
PostgreSQL :func:`budget_lock` runs the two steps under a transaction-scoped advisory lock keyed
by the study, so a worker counts only after the previous worker's trial exists. Other storages
have no such lock here: a surplus proposal stays possible there and is failed as before
(:func:`~panther.tuner.search._workers.ask_within_budget`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import optuna

from panther.tuner.search._optuna_compat import rdb_engine, study_id, study_storage

#: First key of the two-key advisory lock (``"PANT"``); the study's id is the second.
_LOCK_NAMESPACE = 0x50414E54


@contextlib.contextmanager
def budget_lock(study: optuna.Study) -> Iterator[None]:
    """Hold ``study``'s budget lock (PostgreSQL) until the block ends; elsewhere, no lock."""
    engine = rdb_engine(study_storage(study))
    if engine is None or engine.dialect.name != "postgresql":
        yield
        return
    import sqlalchemy

    # released when the transaction ends, also when the worker dies and its connection drops
    with engine.connect() as connection, connection.begin():
        connection.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:namespace, :study)"),
                           {"namespace": _LOCK_NAMESPACE, "study": study_id(study)})
        yield
