"""``OptunaSearch``: the default search algorithm, driving an Optuna study by ask/tell.

One study per layer group
    :meth:`OptunaSearch.start_group` opens the study ``f"{study_name}::{group_name}"`` (the
    default ``study_name`` is ``"panther"``). With a ``storage`` each group therefore gets its own
    persistent study (no ``DuplicatedStudyError`` on the second group, no mixing of groups), and
    ``load_if_exists=True`` reopens exactly that group's study on resume. ``.study`` is the
    current (or last) study, ``.studies`` all of them by group.

Budget across runs and processes
    :meth:`OptunaSearch.is_finished` counts the trials already in the group's study (complete,
    pruned, failed, queued, and running ones of other workers), so a resumed run, or several
    processes sharing one storage, stop at ``n_trials`` *in total*. On PostgreSQL a worker counts
    the budget and creates its trial under a lock, so no two workers take the same last slot; on
    other storages two workers may race for it, and the later proposal is failed at once, tagged
    with the user attribute ``panther_surplus``, and not handed out. Once the budget is spent, a
    worker waits for the other workers' running trials, so that every worker ends with the whole
    study's results.
    Workers must pass ``load_if_exists=True`` and the same ``study_name``. Storage is an RDB URL
    (``"sqlite:///tuning.db"``, ``"postgresql://..."``) or any Optuna storage object, e.g. a file
    journal, which needs no database server: ``OptunaSearch.journal_storage("tuning.log")``.

Workers that die
    A worker killed mid-trial leaves that trial running. With ``heartbeat_interval`` (an RDB
    URL), each worker beats for its running trial and the others reclaim a trial whose beat
    stopped for ``grace_period`` seconds, on any host; on every storage, a trial of a dead process
    on the same host is reclaimed too. A reclaimed trial is failed and queued again (``max_retry``
    times at most), the failed attempt stops counting, and a surviving or later worker runs the
    retry. See :mod:`panther.tuner.search.faults`.

Grid search
    With a ``GridSampler`` the search also finishes once every grid point is evaluated, even if
    ``n_trials`` is larger.

Modules
    This class holds the per-group state; opening studies (:mod:`._studies`), sharing one study
    between workers (:mod:`._workers`, its budget lock :mod:`._budget_lock`), the JSON state file
    (:mod:`._state_file`) and Optuna's private names (:mod:`._optuna_compat`) live in private
    modules of their own.

Logging
    Optuna logs every created study and finished trial at INFO; while its verbosity is at that
    default, these calls run at WARNING (the tuner reports progress itself). Set another
    verbosity (e.g. ``optuna.logging.set_verbosity(optuna.logging.DEBUG)``) to see them.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import optuna
from optuna.pruners import BasePruner
from optuna.samplers import BaseSampler, TPESampler
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, Trial, TrialState, create_trial

from panther.space import ParamSpec, as_spec
from panther.tuner.search import _state_file, _studies, _workers
from panther.tuner.search._optuna_compat import study_storage, trial_id
from panther.tuner.search.base import KnownResult, SearchAlgorithm
from panther.tuner.search.faults import Heartbeat, RetryDeadTrials, heartbeat_enabled, new_nonce, worker_token

DEFAULT_STUDY_NAME = "panther"
#: Prefix of the user attributes holding the tuner's record of a trial (see :meth:`OptunaSearch.publish`).
RECORD_PREFIX = "panther."


class OptunaSearch(SearchAlgorithm):
    """Optuna-backed search (TPE by default); see the module docstring for groups and resuming.

    Args:
        n_trials: trials per layer group, counted over every run and worker sharing the study.
        sampler: any Optuna sampler (default ``TPESampler(seed=seed)``); each group's study gets
            a deep copy of it, as Optuna samplers keep per-study state.
        direction: ``"maximize"`` or ``"minimize"``.
        study_name: prefix of the per-group study names (default ``"panther"``).
        storage: ``None`` (in memory), an RDB URL, or an Optuna storage object.
        load_if_exists: reopen a group's existing study instead of failing.
        seed: seed of the default sampler (ignored, with a warning, when ``sampler`` is given).
        pruner: Optuna pruner consulted by :meth:`should_prune` (Optuna's default when ``None``).
        heartbeat_interval: seconds between the heartbeats of a running trial; needs ``storage``
            to be an RDB URL. Lets workers on any host notice a dead worker's trial and retry it.
        grace_period: seconds without a heartbeat after which a trial is failed (default: twice
            ``heartbeat_interval``).
        max_retry: how often a dead worker's trial is queued again (``None``: without limit). An
            ``RDBStorage`` object given as ``storage`` with a heartbeat of its own is watched the
            same way; its ``heartbeat_stale_trial_callback`` is not used, retries follow ``max_retry``.
    """

    accepts_param_specs = True

    def __init__(
        self,
        n_trials: int = 100,
        sampler: BaseSampler | None = None,
        direction: str = "maximize",
        study_name: str | None = None,
        storage: None | str | BaseStorage = None,
        load_if_exists: bool = False,
        seed: int | None = None,
        pruner: BasePruner | None = None,
        *,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        max_retry: int | None = 3,
    ) -> None:
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"n_trials must be a positive integer, got {n_trials!r}")
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")
        if study_name is not None and (not isinstance(study_name, str) or not study_name):
            raise ValueError(f"study_name must be a non-empty string or None, got {study_name!r}")
        if storage is not None and not isinstance(storage, (str, BaseStorage)):
            raise TypeError(f"storage must be None, a URL string or an optuna storage, got {type(storage).__name__}")
        if sampler is not None and not isinstance(sampler, BaseSampler):
            raise TypeError(f"sampler must be an optuna sampler, got {type(sampler).__name__}")
        if pruner is not None and not isinstance(pruner, BasePruner):
            raise TypeError(f"pruner must be an optuna pruner, got {type(pruner).__name__}")
        _studies.check_heartbeat(storage, heartbeat_interval, grace_period, max_retry)
        if sampler is not None and seed is not None:
            warnings.warn("OptunaSearch: seed is ignored because a sampler was given; seed the sampler instead",
                          stacklevel=2)
        self.n_trials = n_trials
        self.direction = direction
        self.study_name = study_name or DEFAULT_STUDY_NAME
        self.load_if_exists = load_if_exists
        self.seed = seed
        self.sampler: BaseSampler = sampler if sampler is not None else TPESampler(seed=seed)
        #: Whether the caller chose the sampler (then ``strategy="auto"`` searches with it, see ``SKAutoTuner``).
        self.sampler_given = sampler is not None
        self.pruner = pruner
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self._retry = RetryDeadTrials(max_retry)
        self._nonce = new_nonce()
        self._heartbeat: Heartbeat | None = None
        self._storage_arg = storage
        self._storage: BaseStorage | None = None
        self._studies: dict[str, optuna.Study] = {}
        self._spaces: dict[str, dict[str, ParamSpec]] = {}
        self._restored: dict[str, optuna.Study] = {}
        self._last: optuna.Study | None = None
        self._auto_groups = 0
        self._clear_group()

    def _clear_group(self) -> None:
        self._group: str | None = None
        self._current: optuna.Study | None = None
        self._pending: Trial | None = None
        self._pending_params: dict[str, Any] | None = None

    # -- storage and studies -------------------------------------------------------------------
    @staticmethod
    def journal_storage(path: str | os.PathLike) -> BaseStorage:
        """A file-based storage that several local processes can share (no database needed)."""
        return _studies.journal_storage(path)

    @property
    def study(self) -> optuna.Study | None:
        """The current layer group's study (the last one after :meth:`reset`)."""
        return self._current if self._current is not None else self._last

    @property
    def studies(self) -> dict[str, optuna.Study]:
        """Every group's study, by group name."""
        return dict(self._studies)

    @property
    def storage(self) -> BaseStorage | None:
        """The storage the studies live in (``None``: each study in memory)."""
        return self._resolved_storage()

    @property
    def pending_trial(self) -> Trial | None:
        """The trial handed out by :meth:`get_next_params` and not yet reported."""
        return self._pending

    def study_name_for(self, group_name: str) -> str:
        """Name of ``group_name``'s study in the storage."""
        return f"{self.study_name}::{group_name}"

    def _resolved_storage(self) -> BaseStorage | None:
        if self._storage is None and isinstance(self._storage_arg, str):
            self._storage = _studies.connect(self._storage_arg, self._rdb_options())
        elif self._storage is None and self._storage_arg is not None:
            self._storage = optuna.storages.get_storage(self._storage_arg)
        return self._storage

    def _rdb_options(self) -> dict[str, Any]:
        if self.heartbeat_interval is None:
            return {}
        return {"heartbeat_interval": self.heartbeat_interval, "grace_period": self.grace_period}

    def _open_study(self, group_name: str, load_if_exists: bool) -> optuna.Study:
        if self._storage_arg is None and load_if_exists and group_name in self._studies:
            return self._studies[group_name]  # in-memory "resume" within this process
        return _studies.open_study(self.study_name_for(group_name), self._resolved_storage(), self.sampler,
                                   self.pruner, self.direction, load_if_exists)

    # -- SearchAlgorithm -----------------------------------------------------------------------
    def initialize(self, param_space: dict[str, Any]) -> None:
        """Start a group with an automatic name (``group0``, ``group1``, ... per call)."""
        self.start_group(f"group{self._auto_groups}", param_space)
        self._auto_groups += 1

    def start_group(self, group_name: str, param_space: dict[str, Any]) -> None:
        """Open (or, with ``load_if_exists``/after :meth:`load_state`, reopen) the group's study."""
        if not isinstance(group_name, str) or not group_name:
            raise ValueError(f"group_name must be a non-empty string, got {group_name!r}")
        if not isinstance(param_space, dict) or not param_space:
            raise ValueError(f"param_space must be a non-empty dict of parameter specs, got {param_space!r}")
        space = {name: as_spec(spec) for name, spec in param_space.items()}
        self._abandon_pending()
        study = self._restored.pop(group_name, None)
        if study is None:
            study = self._open_study(group_name, self.load_if_exists)
        self._clear_group()
        self._group, self._current, self._last = group_name, study, study
        self._studies[group_name] = study
        self._spaces[group_name] = space

    def get_next_params(self) -> dict[str, Any] | None:
        study = self._require_study()
        if self._pending is not None:
            warnings.warn("OptunaSearch: the previous proposal was never reported; marking it failed", stacklevel=2)
            self._abandon_pending()
        if self.is_finished():
            return None
        space = self._spaces[self._group]  # type: ignore[index]
        token = worker_token(self._nonce) if self._storage_arg is not None else None  # shared storage
        trial = _workers.ask_within_budget(study, {name: spec.to_optuna() for name, spec in space.items()},
                                           self.n_trials, token, self._retry)
        if trial is None:
            return None
        if heartbeat_enabled(study_storage(study)):
            self._heartbeat = Heartbeat(study_storage(study), trial_id(trial))
        self._pending = trial
        self._pending_params = {name: spec.decode(trial.params[name]) for name, spec in space.items()}
        return dict(self._pending_params)

    def update(self, params: dict[str, Any], score: float | None) -> None:
        """Tell the pending trial its score; ``None``/NaN marks it failed.

        Without a pending trial the result is added as a finished trial (a known configuration).
        """
        study = self._require_study()
        value = None if score is None else float(score)
        failed = value is None or math.isnan(value)
        if self._pending is None:
            study.add_trial(self._external_trial(params, None if failed else value))
            return
        expected = self._pending_params or {}
        if {name: params.get(name) for name in expected} != expected:
            raise ValueError(f"update() got params {params!r} but the pending trial proposed {expected!r}")
        trial = self._take_pending()
        if failed:
            self._tell(trial, state=TrialState.FAIL)
        else:
            self._tell(trial, value=value)

    def add_known(self, params: dict[str, Any], score: float | None, record: dict[str, Any]) -> None:
        """Add a configuration evaluated outside the search (e.g. a probe) as a finished trial.

        The tuner's ``record`` travels with it (as for :meth:`publish`), so the study (plots,
        storage, a resumed run) has the whole record. A configuration the study already holds as a
        finished trial is not added twice.
        """
        study = self._require_study()
        value = None if score is None or math.isnan(float(score)) else float(score)
        trial = self._external_trial(params, value)
        if any(t.params == trial.params for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))):
            return
        for key, attr in record.items():
            trial.set_user_attr(RECORD_PREFIX + key, attr)
        study.add_trial(trial)

    def planned_trials(self) -> int | None:
        """``n_trials``: each group's budget (all workers sharing the study together)."""
        return self.n_trials

    def publish(self, record: dict[str, Any]) -> None:
        """Store the tuner's record on the pending trial as ``panther.<field>`` user attributes."""
        if self._pending is None:
            return
        for key, value in record.items():
            self.set_user_attr(RECORD_PREFIX + key, value)

    def known_result(self, params: dict[str, Any]) -> KnownResult | None:
        """An earlier trial of the same parameters finished with the tuner's record, by any worker.

        Only an earlier trial (lower number) than the pending one is considered, and waited for while
        it may still finish (see :func:`~panther.tuner.search.faults.may_still_finish`), so two
        workers never wait on each other.
        """
        study, pending = self._current, self._pending
        if study is None or pending is None:
            return None
        space = self._spaces[self._group]  # type: ignore[index]
        encoded = {name: space[name].encode(value) for name, value in params.items()}
        earlier = _workers.earlier_trial(study, pending.number, encoded, _has_record)
        return None if earlier is None else self._known(earlier, space)

    def stored_results(self) -> list[KnownResult]:
        """The current group's finished trials that carry the tuner's record (a resumed run, other workers)."""
        study = self._current
        if study is None:
            return []
        space = self._spaces[self._group]  # type: ignore[index]
        return [self._known(t, space) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if _has_record(t) and set(t.params) == set(space)]

    @staticmethod
    def _known(trial: FrozenTrial, space: dict[str, ParamSpec]) -> KnownResult:
        params = {name: space[name].decode(value) for name, value in trial.params.items()}
        record = {key[len(RECORD_PREFIX):]: value for key, value in trial.user_attrs.items()
                  if key.startswith(RECORD_PREFIX)}
        return KnownResult(params, trial.value, record)

    def record(self, key: str, value: Any) -> None:
        """Store ``key=value`` on the pending trial (warns and drops it when none is pending)."""
        if self._pending is None:
            warnings.warn(f"OptunaSearch.record({key!r}): no pending trial, value dropped", stacklevel=2)
            return
        self.set_user_attr(key, value)

    def is_finished(self) -> bool:
        """Whether the group's budget is spent; then first waits for other workers' running trials
        (:func:`~panther.tuner.search._workers.settle`)."""
        study = self._current
        if study is None:
            return False
        mine = None if self._pending is None else self._pending.number
        return _workers.settle(study, self.n_trials, self._retry, mine)

    def get_best_params(self) -> dict[str, Any] | None:
        best = self._best_trial()
        if best is None:
            return None
        space = self._spaces.get(self._group or "", {})
        return {name: space[name].decode(v) if name in space else v for name, v in best.params.items()}

    def get_best_score(self) -> float | None:
        best = self._best_trial()
        return None if best is None else best.value

    def reset(self) -> None:
        """Fail any pending trial and leave the current group; ``.studies`` are kept as records."""
        self._abandon_pending()
        self._clear_group()
        self._auto_groups = 0

    # -- trial-level extras ----------------------------------------------------------------------
    def set_user_attr(self, key: str, value: Any) -> None:
        """Set a user attribute on the pending trial."""
        self._require_pending("set_user_attr").set_user_attr(key, _plain(value))

    def report_intermediate(self, value: float, step: int) -> None:
        """Report an intermediate objective value of the pending trial (for pruners)."""
        self._require_pending("report_intermediate").report(float(value), step)

    def should_prune(self) -> bool:
        """Whether the study's pruner wants the pending trial stopped."""
        return self._require_pending("should_prune").should_prune()

    def prune(self) -> None:
        """Finish the pending trial as pruned (after :meth:`should_prune` said so)."""
        self._require_pending("prune")
        trial = self._take_pending()
        self._tell(trial, state=TrialState.PRUNED)

    def get_trials_dataframe(self, all_groups: bool = False) -> Any:
        """The current study's trials as a DataFrame; ``all_groups`` stacks every group's."""
        try:
            import pandas as pd
        except ImportError as err:
            raise ImportError("get_trials_dataframe() requires pandas: pip install pandas") from err
        if not all_groups:
            return self._require_study().trials_dataframe()
        frames = [study.trials_dataframe().assign(group=name) for name, study in self._studies.items()]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # -- persistence ----------------------------------------------------------------------------
    def save_state(self, filepath: str) -> None:
        """Write every group's finished trials and search space as JSON (no pickle).

        :meth:`load_state` re-adds them with ``study.add_trial``, so a later run continues up to
        ``n_trials`` per group. Categorical parameters mapped to indices (see
        :mod:`panther.tuner.params`) are stored as indices; their space is then not saved.
        """
        groups = {name: _state_file.group_state(study, self._spaces.get(name, {}))
                  for name, study in self._studies.items()}
        header = {"study_name": self.study_name, "direction": self.direction, "n_trials": self.n_trials,
                  "current_group": self._group}
        _state_file.write_state(filepath, header, groups)

    def load_state(self, filepath: str) -> None:
        """Restore what :meth:`save_state` wrote; the next ``start_group`` of a saved group resumes it.

        A group whose study already holds trials in this search's storage keeps them (the storage
        is the newer record) instead of receiving the saved ones again.
        """
        state = _state_file.read_state(filepath, self.direction)
        self._abandon_pending()
        self._clear_group()
        for name, group in state["groups"].items():
            study = self._open_study(name, load_if_exists=True)
            if not study.get_trials(deepcopy=False):
                study.add_trials(_state_file.group_trials(group))
            self._studies[name] = self._restored[name] = self._last = study
            space = _state_file.group_space(group)
            if space is not None:
                self._spaces[name] = space
        current = state.get("current_group")
        if current in self._studies:
            self._group, self._current = current, self._studies[current]
            self._spaces.setdefault(current, {})

    # -- internals ------------------------------------------------------------------------------
    def _require_study(self) -> optuna.Study:
        if self._current is None:
            raise RuntimeError("OptunaSearch: study not initialized: call start_group() (or initialize()) before "
                               "proposing or reporting trials")
        return self._current

    def _require_pending(self, what: str) -> Trial:
        if self._pending is None:
            raise RuntimeError(f"OptunaSearch.{what}: no pending trial; call it between get_next_params() and update()")
        return self._pending

    def _take_pending(self) -> Trial:
        """Clear the pending proposal (stopping its heartbeat) and return its trial."""
        trial, self._pending, self._pending_params = self._pending, None, None
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        return trial  # type: ignore[return-value]

    def _abandon_pending(self) -> None:
        if self._pending is not None:
            self._tell(self._take_pending(), state=TrialState.FAIL)

    @staticmethod
    def _tell(trial: Trial, value: float | None = None, state: TrialState | None = None) -> None:
        _studies.tell(trial, value, state)

    def _best_trial(self) -> FrozenTrial | None:
        return _studies.best_trial(self._current)

    def _external_trial(self, params: dict[str, Any], value: float | None) -> FrozenTrial:
        space = self._spaces[self._group]  # type: ignore[index]
        if set(params) != set(space) or not all(space[k].contains(v) for k, v in params.items()):
            raise ValueError(f"update() without a pending trial needs params inside the space {space!r}, "
                             f"got {params!r}")
        return create_trial(
            state=TrialState.COMPLETE if value is not None else TrialState.FAIL,
            value=value,
            params={k: space[k].encode(v) for k, v in params.items()},
            distributions={k: spec.to_optuna() for k, spec in space.items()},
        )


def _has_record(trial: FrozenTrial) -> bool:
    """Whether ``trial`` carries the tuner's record (its ``status`` at least)."""
    return RECORD_PREFIX + "status" in trial.user_attrs


def _plain(value: Any) -> Any:
    """Numpy/torch scalars become Python numbers (RDB storages keep user attributes as JSON)."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", 1) == 0:
        return item()
    return value
