"""Every whole-model plan the allocation evaluates, as a trial of the search's Optuna study.

So the spec's tools work after an allocating tune as after a search: ``tuner.search_algorithm.study``,
``get_trials_dataframe()``, ``optuna.visualization.*`` and ``optuna-dashboard``. The study is one
of the search's groups, ``f"{study_name}::allocation@<threshold>"`` in the search's storage (below).

A trial per evaluated plan
    One categorical parameter per tuned layer: its option's label (:func:`option_labels`, e.g.
    ``"dense"``, ``"method=sketch+low_rank=64"``, ``"method=int8"``: the parameters that differ between
    the layer's options, as its kind names them) among all of that
    layer's options, fixed for the study, so parameter importances and slices compare layers. User
    attributes: ``plan`` (its record's ``number`` in ``results.plans``), ``phase``, ``role``, ``accuracy``,
    ``speed``, ``bytes``, ``dense_bytes``, ``feasible``, ``predicted_error``, ``duration_s``,
    ``reused`` (measured by an earlier run, see below) and ``tuning_key``.

The value, and why an infeasible plan is never the study's best
    The tuner's objective, as the search path tells it (:mod:`panther.tuner._trials`): with a speed
    function the measured speed, otherwise the fraction of the tuned layers' dense bytes the plan
    saves. A plan below the threshold gets ``INFEASIBLE_SCORE + (accuracy - threshold)``: below
    every feasible value on any Optuna version (no reliance on constrained ``best_trial``), yet
    ordered by accuracy. A plan that is not a candidate (a sensitivity probe, which replaces one
    role only and is never installed, or a plan replacing nothing) is ``PRUNED`` with its accuracy
    as the intermediate value at step 0; a failed plan (its evaluation raised or gave NaN) is ``FAIL``.
    So ``study.best_params`` / ``best_value`` are the chosen plan whenever the choice is the best
    objective: always by size; by speed, the tuner prefers the most accurate plan within
    ``SPEED_TIE`` of the fastest (timing noise), which may be a plan just below the study's best.
    The chosen plan's number is the study's user attribute ``chosen_plan`` in every case.

One study per threshold and objective, resumed without evaluating a plan twice
    The study is the group ``allocation@<threshold>`` (``+speed`` with a speed function), as its
    values depend on both. Every trial carries ``tuning_key``, a content hash of the model's
    weights, the calibration batches and the allocated options (:func:`tuning_key`). A run whose
    search has a storage and ``load_if_exists=True`` reuses the measurements of every plan any
    ``allocation@...`` study in that storage holds under the same key (so does a search object
    tuned before in this process, for its studies of other thresholds):
    a second run of the same tuning evaluates no plan again, one with another threshold only the
    plans it has not seen (a plan measured without its speed, below an earlier threshold, is
    evaluated again when it now needs one). A changed model, calibration set or space has another
    key, so nothing is reused wrongly. The accuracy function is taken to be the same. The
    per-layer options (errors, prices, bytes) are stored too, as the study's user attribute
    ``profile:<tuning_key>``, so a resumed run does not profile the layers again.

Several workers on one storage
    With a storage, a plan is claimed before it is evaluated: a ``RUNNING`` trial carrying the
    worker's token (as the per-group search does, :mod:`panther.tuner.search.faults`). A worker
    whose claim has an earlier one for the same plan waits for that trial and reuses its
    measurements (its own claim is failed, user attribute ``duplicate_of``), so workers running
    the same tuning together evaluate no plan twice and end with the same plan. An earlier claim
    whose process is gone (same host) is failed and the plan evaluated. The workers split one
    allocation through a board of claims, the study ``f"{study_name}::workers"``
    (:mod:`panther.tuner._allocation.workers`): each worker registers there while it runs; the
    first to need the options profiles them (claim ``profile:<tuning_key>``) and the others wait
    and load them, so by speed every worker's options have the same prices; the number of workers
    ``W`` is agreed once per study and key (the live registrations when the first worker reaches the
    search, claim ``workers:<group>:<tuning_key>``); the role probes are split, and the search
    along the path evaluates ``W`` positions per round (a k-section), each worker claiming distinct
    ones and reusing the others'. All workers thus walk the same rounds and choose the same plan.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import optuna
import torch
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial
from torch import nn

from panther.space import Categorical
from panther.tuner._allocation.workers import WorkerBoard
from panther.tuner._installer import params_key
from panther.tuner._trials import INFEASIBLE_SCORE
from panther.tuner.results import PlanRecord
from panther.tuner.search._optuna_compat import study_id, study_storage, trial_id
from panther.tuner.search._workers import earlier_trial
from panther.tuner.search.faults import WORKER_ATTR, new_nonce, process_gone, worker_token
from panther.tuner.search.optuna_search import OptunaSearch

#: Prefix of the search's groups (study suffixes) holding the allocation's plans.
ALLOCATION_GROUP = "allocation"
#: The label of a layer left dense.
DENSE = "dense"
#: User attribute -> the plan record's field it holds.
_ATTRS = {"plan": "number", **{name: name for name in ("phase", "role", "accuracy", "speed", "bytes", "dense_bytes",
                                                       "feasible", "predicted_error", "duration_s", "reused")}}
#: User attribute holding the content hash a trial was measured under (see :func:`tuning_key`).
KEY_ATTR = "tuning_key"
#: The search's group (study suffix) of the workers' board (:mod:`panther.tuner._allocation.workers`).
WORKERS_GROUP = "workers"
#: Prefix of the study's user attributes holding the profiled options, one per tuning key.
PROFILE_ATTR = "profile"


def tuning_key(model: nn.Module, batches: Iterable[Any] | None, options: Mapping[str, Sequence[Mapping[str, Any]]],
               by_speed: bool) -> str:
    """A content hash of what a plan's measurements depend on besides the plan: every parameter and
    buffer of ``model`` (dense), the calibration ``batches``, each group's ``options`` and the objective."""
    digest = hashlib.sha256(b"speed" if by_speed else b"bytes")
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        _hash_value(digest, tensor)
    for batch in batches or ():
        _hash_value(digest, batch)
    digest.update(repr(sorted((group, sorted(params_key(p) for p in opts)) for group, opts in options.items()))
                  .encode())
    return digest.hexdigest()[:20]


def _hash_value(digest: Any, value: Any) -> None:
    """Feed tensors by content (dtype, shape, bytes), containers item by item, anything else by ``repr``."""
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{flat.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        for key in value:
            digest.update(repr(key).encode())
            _hash_value(digest, value[key])
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            _hash_value(digest, item)
    else:
        digest.update(repr(value).encode())


def option_labels(options: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short distinct labels of one layer's options (canonical params of its kind), in order.

    Generic over kinds: a parameter with one value in every option that has it is left out; a
    ``True`` flag is its name, ``False`` / ``None`` (off, absent) are left out; the rest is
    ``name=value``, joined by ``+``. When two options would read the same, every label is the
    option's whole ``name=value`` list instead.
    """
    seen: dict[str, set] = {}
    for params in options:
        for name, value in params.items():
            seen.setdefault(name, set()).add(repr(value))

    def short(params: Mapping[str, Any]) -> str:
        parts = []
        for name, value in params.items():
            if value is None or value is False or (len(seen[name]) == 1 and value is not True):
                continue
            parts.append(name if value is True else f"{name}={value}")
        return "+".join(parts)

    labels = [short(p) for p in options]
    if len(set(labels)) < len(labels) or "" in labels or DENSE in labels:
        labels = [",".join(f"{k}={v}" for k, v in p.items()) or "default" for p in options]
    return labels


class PlanTrials:
    """Records the allocation's evaluated plans in ``search``'s study (see the module docstring).

    Args:
        search: the tuner's ``OptunaSearch`` (default or given).
        threshold: the whole model's accuracy threshold.
        by_speed: whether the objective is the speed function (else bytes saved).
    """

    def __init__(self, search: OptunaSearch, threshold: float, by_speed: bool) -> None:
        self.search, self.threshold, self.by_speed = search, threshold, by_speed
        self._labels: dict[str, dict[tuple, str]] = {}  # layer -> params key -> label
        self._groups: dict[str, list[str]] = {}  # group -> its layers
        self._distributions: dict[str, CategoricalDistribution] = {}
        self._dense_total = 0
        self._key = ""
        self._stored: dict[tuple, dict[str, Any]] = {}  # labels -> measurements found in the storage
        self._in_study: set[tuple] = set()  # labels of plans the current study already holds
        self._claimed: dict[tuple, int] = {}  # labels -> storage id of this worker's running trial for them
        self._token = worker_token(new_nonce())
        self._board: WorkerBoard | None = None

    @property
    def group(self) -> str:
        """The search group of this threshold and objective (see the module docstring)."""
        return f"{ALLOCATION_GROUP}@{self.threshold!r}{'+speed' if self.by_speed else ''}"

    def open(self, options: Mapping[str, Sequence[Mapping[str, Any]]], groups: Mapping[str, Sequence[str]],
             dense_total: int, key: str) -> None:
        """Start (or resume) the study: ``options`` per group (canonical params), ``groups`` their
        layers, ``dense_total`` the dense bytes of every allocated layer, ``key`` the :func:`tuning_key`."""
        self._groups = {g: list(layers) for g, layers in groups.items()}
        self._dense_total, self._key = dense_total, key
        space = {}
        for group, layers in self._groups.items():
            labels = dict(zip((params_key(p) for p in options[group]), option_labels(options[group]), strict=True))
            for layer in layers:
                self._labels[layer] = labels
                space[layer] = Categorical([DENSE, *labels.values()])
        if not space:
            return  # every group stays dense: no plan will be evaluated
        self.search.start_group(self.group, space)
        self._distributions = {layer: spec.to_optuna() for layer, spec in space.items()}  # type: ignore[misc]
        current = self.search.study
        for study in self._allocation_studies():
            for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
                if trial.user_attrs.get(KEY_ATTR) == key and set(trial.params) == set(space):
                    labels = _labels_key(trial.params)
                    known = self._stored.get(labels)
                    if known is None or (known.get("speed") is None and trial.user_attrs.get("speed") is not None):
                        self._stored[labels] = dict(trial.user_attrs)
                    if current is not None and study.study_name == current.study_name:
                        self._in_study.add(labels)

    def _allocation_studies(self) -> list[optuna.Study]:
        """The search's allocation studies: this process's, and those in its storage."""
        prefix = self.search.study_name_for(ALLOCATION_GROUP)
        studies = [s for g, s in self.search.studies.items() if g.startswith(ALLOCATION_GROUP)]
        storage = self.search.storage
        if storage is not None and self.search.load_if_exists:
            names = [n for n in optuna.get_all_study_names(storage) if n.startswith(prefix)]
            studies += [optuna.load_study(study_name=n, storage=storage) for n in names]
        return studies

    def load_profile(self, key: str) -> dict[str, Any] | None:
        """The per-layer options an earlier run stored under ``key`` (see :meth:`save_profile`), or ``None``."""
        for study in self._allocation_studies():
            found = study.user_attrs.get(f"{PROFILE_ATTR}:{key}")
            if found is not None:
                return found
        return None

    def save_profile(self, key: str, profile: dict[str, Any]) -> None:
        """Store the allocation's per-layer options (errors, prices, bytes) with the study, under ``key``."""
        if self._distributions:
            self.search.study.set_user_attr(f"{PROFILE_ATTR}:{key}", profile)  # type: ignore[union-attr]

    def stored(self, choices: Mapping[str, Mapping[str, Any]]) -> dict[str, Any] | None:
        """Measurements of the plan ``{group: params}`` stored under this tuning's key, or ``None``.

        With a storage, a plan not known yet is claimed (see the module docstring): the answer is
        then another worker's measurement of it, or ``None`` with the plan claimed for this worker.
        """
        if not self._distributions:
            return None
        labels = self.params(choices)
        known = self._stored.get(_labels_key(labels))
        if known is not None or self.search.storage is None:
            return known
        return self._claim(labels)

    def board(self) -> WorkerBoard | None:
        """The workers' board in the search's storage (see the module docstring); ``None`` without one."""
        if self.search.storage is None or not self.search.load_if_exists:
            return None
        if self._board is None:
            self._board = WorkerBoard(self.search.storage, self.search.study_name_for(WORKERS_GROUP), self._token)
        return self._board

    def claim_name(self, choices: Mapping[str, Mapping[str, Any]]) -> str:
        """The board's name of the plan ``{group: params}`` under this tuning's key."""
        digest = hashlib.sha256(repr(_labels_key(self.params(choices))).encode()).hexdigest()[:20]
        return f"plan:{self._key}:{digest}"

    def _claim(self, labels: dict[str, str]) -> dict[str, Any] | None:
        study = self.search.study
        storage = study_storage(study)  # type: ignore[arg-type]

        def measured(trial: Any) -> bool:
            return trial.user_attrs.get(KEY_ATTR) == self._key and trial.user_attrs.get("accuracy") is not None

        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):  # type: ignore[union-attr]
            if trial.params == labels and measured(trial):  # another worker's, finished meanwhile
                self._in_study.add(_labels_key(labels))
                self._stored[_labels_key(labels)] = dict(trial.user_attrs)
                return self._stored[_labels_key(labels)]
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # type: ignore[union-attr]
            if trial.params == labels and process_gone(trial.user_attrs.get(WORKER_ATTR)):
                _fail_quietly(storage, trial, "dead_worker", True)  # a killed run's claim
        claim = storage.create_new_trial(study_id(study), template_trial=create_trial(  # type: ignore[arg-type]
            state=TrialState.RUNNING, params=labels, distributions=self._distributions,
            user_attrs={WORKER_ATTR: self._token, KEY_ATTR: self._key}))
        number = storage.get_trial(claim).number
        earlier = earlier_trial(study, number, labels, measured,  # type: ignore[arg-type]
                                finished=(TrialState.COMPLETE, TrialState.PRUNED))
        if earlier is None:
            self._claimed[_labels_key(labels)] = claim
            return None
        _fail_quietly(storage, storage.get_trial(claim), "duplicate_of", earlier.number)
        self._in_study.add(_labels_key(labels))
        self._stored[_labels_key(labels)] = dict(earlier.user_attrs)
        return self._stored[_labels_key(labels)]

    def params(self, choices: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
        """Every layer's label in the plan ``{group: params}`` (groups not chosen are dense)."""
        labels = {layer: DENSE for layers in self._groups.values() for layer in layers}
        for group, params in choices.items():
            for layer in self._groups[group]:
                labels[layer] = self._labels[layer][params_key(params)]
        return labels

    def value(self, plan: PlanRecord) -> tuple[TrialState, float | None]:
        """The trial's state and value for an evaluated plan (see the module docstring)."""
        accuracy, speed = plan.accuracy, plan.speed
        if plan.status == "failed" or accuracy is None or not math.isfinite(accuracy) or (
                speed is not None and not math.isfinite(speed)):
            return TrialState.FAIL, None
        if plan.phase == "sensitivity" or not plan.choices:
            return TrialState.PRUNED, None
        if not plan.feasible:
            return TrialState.COMPLETE, INFEASIBLE_SCORE + (accuracy - self.threshold)
        if self.by_speed:
            return TrialState.COMPLETE, float(speed)  # type: ignore[arg-type]
        saved = plan.dense_bytes - plan.bytes  # type: ignore[operator]
        return TrialState.COMPLETE, saved / self._dense_total if self._dense_total else 0.0

    def record(self, plan: PlanRecord) -> None:
        """Add the evaluated ``plan`` (a ``results.plans`` record) as a finished trial."""
        if not self._distributions:
            return
        labels = self.params(plan.choices)
        if not plan.reused:
            self._stored[_labels_key(labels)] = {attr: _plain(getattr(plan, name)) for attr, name in _ATTRS.items()}
        if plan.reused and _labels_key(labels) in self._in_study:
            return  # resumed: the study holds this plan's measurements already
        self._in_study.add(_labels_key(labels))
        state, value = self.value(plan)
        accuracy = plan.accuracy
        steps = {0: accuracy} if state == TrialState.PRUNED else None
        attrs = {attr: _plain(getattr(plan, name)) for attr, name in _ATTRS.items()} | {KEY_ATTR: self._key}
        study = self.search.study
        claim = self._claimed.pop(_labels_key(labels), None)
        if claim is None:
            study.add_trial(create_trial(state=state, value=value, params=labels,  # type: ignore[union-attr]
                                         distributions=self._distributions, user_attrs=attrs,
                                         intermediate_values=steps))
            return
        storage = study_storage(study)  # type: ignore[arg-type]
        for name, attr in attrs.items():
            storage.set_trial_user_attr(claim, name, attr)
        if steps:
            storage.set_trial_intermediate_value(claim, 0, accuracy)
        study.tell(storage.get_trial(claim).number, value, state=state)  # type: ignore[union-attr]

    def chose(self, plan: PlanRecord | None) -> None:
        """Name the chosen plan on the study (``None``: none met the threshold)."""
        if not self._distributions:
            return
        self.search.study.set_user_attr("chosen_plan", None if plan is None else plan.number)  # type: ignore[union-attr]


def _fail_quietly(storage: Any, trial: Any, attr: str, value: Any) -> None:
    """Fail a running claim with ``attr=value`` (another worker may have failed or finished it first)."""
    try:
        storage.set_trial_user_attr(trial_id(trial), attr, value)
        storage.set_trial_state_values(trial_id(trial), state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass


def _labels_key(labels: Mapping[str, Any]) -> tuple:
    return tuple(sorted(labels.items()))


def _plain(value: Any) -> Any:
    """JSON-safe (RDB storages keep user attributes as JSON): NaN becomes ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
