"""Several worker processes sharing one allocation through the search's storage.

A :class:`WorkerBoard` is a small study of its own (``f"{study_name}::workers"``) whose trials are
claims: a ``RUNNING`` trial naming what it claims (user attribute ``claim``) and the worker's token.
The lowest-numbered claim of a name whose worker lives (or that is ``COMPLETE``) holds it, so two
workers claiming at once never both win; a claim whose process is gone (same host,
:func:`~panther.tuner.search.faults.process_gone`) holds nothing, so a killed worker's work is taken
over. Workers register a claim of their own while they run (:meth:`WorkerBoard.live_workers` counts
them) and agree on shared values (:meth:`WorkerBoard.agree`: the first one's value is everyone's).

:func:`share` splits independent evaluations: each worker evaluates the items no one has claimed,
then waits for the others' and reuses their results. :func:`ksection_positions` are one round of the
search along the plan path with ``W`` workers: ``W`` positions splitting the bracket in ``W + 1``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable
from typing import Any, TypeVar

import optuna
from optuna.trial import TrialState, create_trial

from panther.tuner.search._optuna_compat import study_id, study_storage
from panther.tuner.search._studies import quiet_optuna
from panther.tuner.search.faults import WORKER_ATTR, process_gone

#: User attribute naming what a board trial claims.
CLAIM_ATTR = "claim"
#: User attribute holding an agreed value (see :meth:`WorkerBoard.agree`).
VALUE_ATTR = "value"
#: Seconds between looks while waiting for another worker's claim.
_POLL_S = 0.05
#: Seconds :meth:`WorkerBoard.settled_workers` waits for more workers to register (workers started
#: together arrive at slightly different times; a single one pays it once per tuning).
SETTLE_S = 0.5
#: Longest it keeps waiting while more keep arriving.
_SETTLE_MAX_S = 5.0

T = TypeVar("T", bound=Hashable)


def ksection_positions(low: int, high: int, workers: int) -> list[int]:
    """The positions strictly between ``low`` and ``high`` splitting it into ``workers + 1`` parts
    (every one when fewer remain); one worker: the bisection's midpoint ``(low + high) // 2``."""
    return sorted({low + (i * (high - low)) // (workers + 1) for i in range(1, workers + 1)} - {low, high})


class WorkerBoard:
    """Claims, registrations and agreed values of the workers on one storage (see the module docstring)."""

    def __init__(self, storage: Any, study_name: str, token: str) -> None:
        with quiet_optuna():
            self.study = optuna.create_study(study_name=study_name, storage=storage, load_if_exists=True)
        self.token = token
        self._storage = study_storage(self.study)
        self._mine: dict[str, int] = {}  # claim name -> this worker's trial id

    def _holder(self, name: str, below: int | None = None) -> Any:
        """The trial holding ``name`` (numbered below ``below`` when given), or ``None``."""
        for trial in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.COMPLETE)):
            if trial.user_attrs.get(CLAIM_ATTR) != name or (below is not None and trial.number >= below):
                continue
            if trial.state == TrialState.COMPLETE or not process_gone(trial.user_attrs.get(WORKER_ATTR)):
                return trial
        return None

    def claim(self, name: str) -> bool:
        """Claim ``name`` for this worker: ``True`` when it holds it now, ``False`` when another did first."""
        if name in self._mine:
            return True
        trial_id = self._storage.create_new_trial(study_id(self.study), template_trial=create_trial(
            state=TrialState.RUNNING, user_attrs={CLAIM_ATTR: name, WORKER_ATTR: self.token}))
        if self._holder(name, below=self._storage.get_trial(trial_id).number) is not None:
            self._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            return False
        self._mine[name] = trial_id
        return True

    def done(self, name: str, value: Any = None) -> None:
        """Finish this worker's claim of ``name`` (with an agreed ``value``)."""
        trial_id = self._mine.pop(name)
        if value is not None:
            self._storage.set_trial_user_attr(trial_id, VALUE_ATTR, value)
        self._storage.set_trial_state_values(trial_id, state=TrialState.COMPLETE, values=[0.0])

    def wait(self, name: str) -> Any:
        """Wait until no live worker works on ``name``; its finished claim, or ``None`` (none, or it died)."""
        while True:
            holder = self._holder(name)
            if holder is None or holder.state == TrialState.COMPLETE:
                return holder
            time.sleep(_POLL_S)

    def agree(self, name: str, compute: Callable[[], Any]) -> Any:
        """The value of ``name`` every worker uses: the first claimant's ``compute()``."""
        while True:
            if self.claim(name):
                value = compute()
                self.done(name, value)
                return value
            finished = self.wait(name)
            if finished is not None:
                return finished.user_attrs.get(VALUE_ATTR)

    def register(self) -> None:
        """Count this worker among the live ones until :meth:`leave`."""
        self.claim(f"worker:{self.token}")

    def leave(self) -> None:
        """Finish every claim this worker still holds (its registration too)."""
        for name in list(self._mine):
            self.done(name)

    def settled_workers(self) -> int:
        """:meth:`live_workers` once no new one registered for :data:`SETTLE_S` (at most :data:`_SETTLE_MAX_S`)."""
        deadline = time.monotonic() + _SETTLE_MAX_S
        count = self.live_workers()
        while time.monotonic() < deadline:
            time.sleep(SETTLE_S)
            now = self.live_workers()
            if now <= count:
                return count
            count = now
        return count

    def live_workers(self) -> int:
        """Registered workers whose process has not gone (at least this one)."""
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return max(1, sum(str(t.user_attrs.get(CLAIM_ATTR, "")).startswith("worker:")
                          and not process_gone(t.user_attrs.get(WORKER_ATTR)) for t in running))


def share(board: WorkerBoard | None, items: Iterable[T], name: Callable[[T], str],
          evaluate: Callable[[T], Any], stop: Callable[[], bool] = lambda: False) -> dict[T, Any]:
    """``evaluate(item)`` of every item (until ``stop()``), split between the workers on ``board``.

    This worker evaluates the items no one has claimed first, then waits for the others' claims and
    evaluates those items too, which reuses the measurements their workers stored (an item whose
    worker died is evaluated here). Without a board: every item here, in order.
    """
    items = list(items)
    results: dict[T, Any] = {}
    if board is not None:
        for item in items:
            if stop():
                return results
            if board.claim(name(item)):
                try:
                    results[item] = evaluate(item)
                finally:
                    board.done(name(item))
    for item in items:
        if item in results:
            continue
        if stop():
            return results
        if board is not None:
            board.wait(name(item))
        results[item] = evaluate(item)
    return results


def ksection(length: int, workers: int, guess: int | None, board: WorkerBoard | None,
             name_at: Callable[[int], str], meets_at: Callable[[int], bool],
             stop: Callable[[], bool]) -> int | None:
    """The lowest position of ``0 .. length-1`` found to meet (``meets_at``), in rounds of
    :func:`ksection_positions` split between the workers by :func:`share`; ``None``: none was.

    The last position is taken to meet (the dense model). ``guess`` is one of the first round's
    positions (with one worker: the whole first round, as in a bisection).
    """
    low, high = -1, length - 1  # invariant: ``low`` misses (or is unknown below 0), ``high`` meets
    best = None if high > 0 else high
    while high - low > 1 and not stop():
        positions = ksection_positions(low, high, workers)
        if guess is not None and low < guess < high:
            positions = sorted({guess, *ksection_positions(low, high, workers - 1)})
        guess = None
        results = share(board, positions, name_at, meets_at, stop)
        meets = [p for p in positions if results.get(p) is True]
        if meets:
            high = best = min(meets)
        misses = [p for p in positions if results.get(p) is False and p < high]
        if misses:
            low = max(misses)
    return best
