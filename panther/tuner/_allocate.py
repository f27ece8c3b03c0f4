"""Whole-model allocation: one accuracy budget spent over every group, verified by full evaluations.

Searching each group on its own needs trials per group, so on a model with dozens of layers a
budget of a few dozen evaluations probes almost nothing. Allocation instead predicts every option's
damage and price per layer without evaluating the model, and spends full evaluations only on
whole-model plans:

1. **Options.** Every configuration of each group's finite space, and dense. A layer's relative
   output error per option is predicted where its kind can (a rank's error from the layer's
   spectrum) and measured on the calibration inputs otherwise (int8); its price is stored bytes, or,
   when the tuner maximises a speed function, the option's measured time on the layer's input
   (:mod:`panther.tuner._allocation.profile`).
2. **Path.** :class:`~panther.tuner._allocation.AllocationPath` orders every least-cost choice of
   options (a point of the path: a whole-model plan) for a summed error ``Σ s·e²`` (errors add in
   energy; ``s`` is a role's sensitivity, 1 at first). Priced by time, a group's options whose
   times are within :data:`SPEED_TIE` of each other are taken as equally fast, and the one with
   the lower predicted error wins (then fewer bytes, then dense, then the space's order), so timing
   noise does not flip a layer between, e.g., int8 and smoothed int8.
3. **Bisection** of the position on that path with full evaluations: the cheapest plan that meets
   the accuracy threshold, in about ``log2(#plans)`` evaluations. ``W`` worker processes on one
   storage split each round into ``W`` positions instead (a k-section,
   :mod:`panther.tuner._allocation.workers`), and split the probes of step 4.
4. **Correction.** Layers in repeated blocks share a role (:func:`role_of`: their name with block
   indices replaced, e.g. ``encoder.layer.#.attention.self.query``, and their shape). The bisected
   plan is evaluated one role at a time, which measures each role's sensitivity
   ``s = drop / Σ e²``; the path is rebuilt with those and bisected again, starting at the plan the
   corrected prediction picks.
5. **Choice** (:func:`choose_plan`). The cheapest feasible plan evaluated; with a speed function
   the fastest measured one, where plans within :data:`SPEED_TIE` of it tie and the most accurate
   wins. Its groups get one record each (``phase="allocation"``) holding the plan's measured
   accuracy; every evaluated plan is a :class:`~panther.tuner.results.PlanRecord` in ``results.plans``,
   made and measured by the trial runner like a search's trials.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from panther.nn.dense import is_linear_like
from panther.nn.factorize import keep_decompositions
from panther.tuner._allocation import AllocationPath, Option, PathPoint
from panther.tuner._allocation.profile import LayerProfile, LayerRecorder, profile_layers
from panther.tuner._allocation.workers import WorkerBoard, ksection, share
from panther.tuner._budget import Budget
from panther.tuner._evaluation import describe
from panther.tuner._groups import TuningGroup
from panther.tuner._installer import LayerInstaller, params_key
from panther.tuner._plan_trials import PlanTrials, tuning_key
from panther.tuner._trials import TrialRunner
from panther.tuner.results import PlanRecord, TuningResults

logger = logging.getLogger(__name__)

#: Most roles whose sensitivity is measured (one evaluation each); beyond it the correction is skipped.
MAX_ROLES = 16
#: Measured speeds this close (relative) to the fastest feasible plan are a tie, which the more
#: accurate plan wins: on a shared machine such differences are noise, the accuracy is not. So are
#: the measured times of one group's options (the more accurate option wins, see :meth:`Allocation.path`).
SPEED_TIE = 0.03
#: Sensitivities are kept within this factor of their median: a role whose drop is lost in the
#: noise must not become free, nor one noisy drop dominate the plan.
SENSITIVITY_SPREAD = 30.0


def role_of(layer: str, shape: Hashable = None) -> str:
    """The layer's role across repeated blocks: its name with whole numeric components replaced,
    and its shape (so the differently sized layers of one ``nn.Sequential`` keep their own roles)."""
    pattern = re.sub(r"(?<![^.])\d+(?![^.])", "#", layer)
    return pattern if shape is None else f"{pattern} {shape}"


def allocatable_reason(group: TuningGroup, kinds: Mapping[str, Any], dense: Mapping[str, nn.Module],
                       calibrated: bool) -> str | None:
    """Why ``group`` cannot be allocated (``None`` when it can): a finite space of single-input
    kinds, measured on calibration data or (linear layers only) on Gaussian rows."""
    if any(spec.values() is None for spec in group.space.values()):
        return f"{group.name}: its space has a continuous parameter (allocation enumerates configurations)"
    for name in group.layers:
        if not kinds[name].profiles_alone:
            return f"{name}: a {kinds[name].name} layer cannot be measured on its own input"
        if not calibrated and not is_linear_like(dense[name]):
            return f"{name}: a {type(dense[name]).__name__} layer is measured on calibration_data, and none was given"
    return None


def _configurations(group: TuningGroup, kind: Any) -> list[dict[str, Any]]:
    """Every combination of the group's space, once per distinct module it builds."""
    names = list(group.space)
    values = [group.space[name].values() for name in names]
    unique: dict[tuple, dict[str, Any]] = {}
    for combo in itertools.product(*values):  # type: ignore[arg-type]
        params = kind.canonical_params(dict(zip(names, combo, strict=True)))
        unique.setdefault(params_key(params), params)
    return list(unique.values())


def _progress(action: str, done: int, total: int, started: float) -> None:
    """One INFO line on a long step: what, which of how many, how many left, time so far."""
    logger.info("allocation: %s (%d/%d, %d left, %.0f s so far)", action, done + 1, total, total - done - 1,
                time.perf_counter() - started)


def choose_plan(plans: Sequence[PlanRecord], by_speed: bool) -> PlanRecord | None:
    """The plan to install among evaluated ones (``results.plans``); ``None`` if none qualifies.

    Only feasible plans that replace something and were not a sensitivity probe qualify. By speed:
    the fastest measured, except that plans within :data:`SPEED_TIE` of it tie and the most
    accurate of those wins. By size: the most bytes saved (ties: the more accurate).
    """
    feasible = [p for p in plans if p.feasible and p.phase != "sensitivity" and p.choices]
    if not feasible:
        return None
    if by_speed:
        fastest = max(p.speed for p in feasible)  # type: ignore[type-var]
        tied = [p for p in feasible if p.speed >= (1.0 - SPEED_TIE) * fastest]  # type: ignore[operator]
        return max(tied, key=lambda p: (p.accuracy, p.speed))  # type: ignore[arg-type,return-value]
    return min(feasible, key=lambda p: (p.bytes - p.dense_bytes, -p.accuracy))  # type: ignore[operator]


def _choices(point: PathPoint) -> dict[str, dict[str, Any]]:
    """``{group: params}`` of the groups ``point`` replaces."""
    return {g: dict(o.params) for g, o in point.choices.items() if o.params is not None}


@dataclass
class _GroupOptions:
    """One group's configurations, with per-layer errors and the group's price for each."""

    configurations: dict[Hashable, dict[str, Any]]  # key -> params
    layer_errors: dict[str, dict[Hashable, float]]  # layer -> key -> relative output error
    price: dict[Hashable, float]  # key -> bytes or seconds of the group's layers
    dense_price: float
    bytes: dict[Hashable, int]  # key -> stored bytes of the group's layers

    def to_json(self) -> dict[str, Any]:
        """Plain data (configurations in order, per-configuration lists) for the study's storage."""
        keys = list(self.configurations)
        return {"configurations": [self.configurations[k] for k in keys],
                "layer_errors": {name: [errors[k] for k in keys] for name, errors in self.layer_errors.items()},
                "price": [self.price[k] for k in keys], "dense_price": self.dense_price,
                "bytes": [self.bytes[k] for k in keys]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> _GroupOptions:
        keys = [params_key(p) for p in data["configurations"]]
        return cls(configurations=dict(zip(keys, data["configurations"], strict=True)),
                   layer_errors={name: dict(zip(keys, errors, strict=True))
                                 for name, errors in data["layer_errors"].items()},
                   price=dict(zip(keys, data["price"], strict=True)), dense_price=float(data["dense_price"]),
                   bytes=dict(zip(keys, data["bytes"], strict=True)))


class Allocation:
    """Runs steps 1-5 of the module docstring for ``groups``.

    Args:
        groups: the tuned groups (every one allocatable, see :func:`allocatable_reason`).
        installer: the tuner's layers (dense originals, builds, calibration covariances).
        runner: makes, measures and keeps every record (the plans', and the chosen groups').
        threshold: the whole model's accuracy threshold.
        baseline: the dense model's accuracy.
        speed_func: the user's ``optmization_eval_func`` or ``None`` (then the price is bytes).
        calibration: ``(batches, forward)`` to measure options on, or ``None`` (Gaussian inputs).
        on_plan: called after each evaluated plan (progress).
        broadcast: ``f(obj) -> rank 0's obj`` in multi-process runs, so every process prices the
            options with the same (rank 0's) measurements; ``None`` in a single process.
        trials: records every evaluated plan as a trial of the search's Optuna study
            (:mod:`panther.tuner._plan_trials`); ``None``: the plans are in ``results.plans`` only.
    """

    def __init__(self, groups: Sequence[TuningGroup], installer: LayerInstaller, runner: TrialRunner,
                 threshold: float, baseline: float, speed_func: Callable[..., float] | None,
                 calibration: tuple[Iterable[Any], Callable[[nn.Module, Any], Any]] | None,
                 results: TuningResults, on_plan: Callable[[PlanRecord], None] = lambda plan: None,
                 broadcast: Callable[[Any], Any] | None = None, trials: PlanTrials | None = None) -> None:
        self.groups = {g.name: g for g in groups}
        self.installer, self.runner = installer, runner
        self.threshold, self.baseline, self.speed_func = threshold, baseline, speed_func
        self.calibration, self.results, self.on_plan = calibration, results, on_plan
        self.broadcast, self.trials = broadcast, trials
        self._evaluated: dict[tuple, PlanRecord] = {}  # plan key -> its record in results.plans
        self._bytes: dict[str, dict[Hashable, int]] = {}  # group -> configuration key -> stored bytes
        self._kept_dense: dict[str, str] = {}  # group -> why options() took it out of the allocation
        self._board: WorkerBoard | None = None  # shared with other worker processes (see run())
        self._workers = 1  # workers splitting the search (agreed on the board)

    def _role(self, name: str) -> str:
        return role_of(name, self.installer.kinds[name].shape_key(self.installer.originals[name]))

    # -- 1. options ----------------------------------------------------------------------------
    def options(self) -> dict[str, _GroupOptions]:
        """Every group's configurations with predicted or measured errors and prices."""
        recorder = LayerRecorder({name: self.installer.originals[name] for g in self.groups.values()
                                  for name in g.layers})
        with recorder.attached():  # the covariances' pass records the profile's samples too
            self.installer.calibrate()
        candidates: dict[str, dict[Hashable, nn.Module]] = {}
        predicted: dict[str, dict[Hashable, float]] = {}
        configurations: dict[str, dict[Hashable, dict[str, Any]]] = {}
        started = time.perf_counter()
        for index, group in enumerate(self.groups.values()):
            _progress(f"building the options of {group.name}", index, len(self.groups), started)
            configurations[group.name] = {}
            for params in _configurations(group, self.installer.kinds[group.layers[0]]):
                key = params_key(params)
                built = self._build_all(group, params)
                if built is None:
                    continue
                configurations[group.name][key] = params
                for name, module in built.items():
                    candidates.setdefault(name, {})[key] = module
                    error = self.installer.kinds[name].predicted_error(self.installer.originals[name], params,
                                                                      self.installer.input_covs.get(name))
                    if error is not None:
                        predicted.setdefault(name, {})[key] = error
        batches, forward = self.calibration if self.calibration is not None else (None, None)
        for group_name, error in self._groups_that_raise(candidates).items():
            for name in self.groups[group_name].layers:
                candidates.pop(name, None)
            self._keep_dense(self.groups[group_name], f"its replacement makes the model raise ({error})")
        started = time.perf_counter()
        with self.installer.swapped(self.installer.originals):
            profiles = profile_layers(self.installer.model, candidates, predicted, batches, forward,  # type: ignore[arg-type]
                                      time_candidates=self.speed_func is not None,
                                      progress=lambda line: logger.info("allocation: %s", line),
                                      recorded=recorder if recorder.observed else None)
        if self.broadcast is not None:  # timings differ per process; plans must not
            profiles = self.broadcast(profiles)
        logger.info("allocation: %d options of %d layers profiled in %.1f s (%d errors predicted, %d measured)",
                    sum(map(len, candidates.values())), len(candidates), time.perf_counter() - started,
                    sum(map(len, predicted.values())),
                    sum(len(c) for c in candidates.values()) - sum(map(len, predicted.values())))
        for group in list(self.groups.values()):
            unreached = [n for n in group.layers if n in profiles and not profiles[n].reached]
            if unreached:
                self._keep_dense(group, f"no calibration batch ran {unreached}, so its options cannot be weighed")
        return {name: self._group_options(group, configurations[name], profiles)
                for name, group in self.groups.items()}

    def _stored_options(self, key: str) -> dict[str, _GroupOptions] | None:
        """The options an earlier run of the same tuning (``key``) profiled, from the study; ``None``: profile."""
        stored = None if self.trials is None else self.trials.load_profile(key)
        if stored is None or set(stored["groups"]) | set(stored["dense"]) != set(self.groups):
            return None
        self.installer.calibrate()  # the candidates of evaluated plans are built from the covariances
        for group, reason in stored["dense"].items():
            self._keep_dense(self.groups[group], reason)
        logger.info("allocation: the options of %d groups were profiled by an earlier run (tuning key %s)",
                    len(stored["groups"]), key)
        return {group: _GroupOptions.from_json(data) for group, data in stored["groups"].items()}

    def _keep_dense(self, group: TuningGroup, reason: str) -> None:
        """Take ``group`` out of the allocation with a failed record saying why (it stays dense)."""
        self.runner.new_record(group, {}, phase="allocation", status="failed", error=reason)
        logger.warning("[%s] stays dense: %s", group.name, reason)
        del self.groups[group.name]
        self._kept_dense[group.name] = reason

    def _groups_that_raise(self, candidates: Mapping[str, Mapping[Hashable, nn.Module]]) -> dict[str, str]:
        """Groups whose replacement makes the model raise on a calibration batch (e.g. a parent that
        computes with the child's dense weight), with the error.

        One batch with every group replaced finds none in the common case; only after an error is
        each group tried alone. Without calibration data a raising plan just misses the threshold.
        """
        if self.calibration is None:
            return {}
        batches, forward = self.calibration
        batch = next(iter(batches), None)
        if batch is None:
            return {}
        first = {name: next(iter(options.values())) for name, options in candidates.items() if options}

        def error_with(names: Iterable[str]) -> Exception | None:
            try:
                with torch.no_grad(), self.installer.swapped({n: first[n] for n in names}):
                    forward(self.installer.model, batch)
            except Exception as exc:
                return exc
            return None

        if error_with(first) is None:
            return {}
        failing = {}
        for group in self.groups.values():
            error = error_with([n for n in group.layers if n in first])
            if error is not None:
                failing[group.name] = f"{type(error).__name__}: {error}"
        return failing

    def _build_all(self, group: TuningGroup, params: Mapping[str, Any]) -> dict[str, nn.Module] | None:
        """The group's candidates for ``params``, or ``None`` for a combination the kind rejects."""
        try:
            return {name: self.installer.build(name, params, group.copy_weights) for name in group.layers}
        except (ValueError, TypeError) as exc:
            logger.debug("[%s] %s cannot be built: %s", group.name, describe(params), exc)
            return None

    def _group_options(self, group: TuningGroup, configurations: dict[Hashable, dict[str, Any]],
                       profiles: Mapping[str, LayerProfile]) -> _GroupOptions:
        by_time = self.speed_func is not None

        def price(profile: LayerProfile, key: Hashable | None) -> float:
            if by_time:
                return profile.dense_seconds if key is None else profile.seconds[key]  # type: ignore[return-value]
            return float(profile.dense_bytes if key is None else profile.bytes[key])

        layers = [profiles[name] for name in group.layers]
        return _GroupOptions(
            configurations=configurations,
            layer_errors={name: dict(profiles[name].error) for name in group.layers},
            price={key: sum(price(p, key) for p in layers) for key in configurations},
            dense_price=sum(price(p, None) for p in layers),
            bytes={key: sum(p.bytes[key] for p in layers) for key in configurations})

    # -- 2.-4. path, bisection, correction -------------------------------------------------------
    def path(self, options: Mapping[str, _GroupOptions], sensitivity: Mapping[str, float]) -> AllocationPath:
        """The path over every group's options, errors weighed by the roles' ``sensitivity`` (default 1)."""
        def error(name: str, layer_errors: Mapping[Hashable, float], key: Hashable) -> float:
            return sensitivity.get(self._role(name), 1.0) * layer_errors[key] ** 2

        def preferred(group: str, o: _GroupOptions) -> list[Option]:
            """Dense, then every configuration, fewest bytes first (equal: dense, then the space's order)."""
            keys: list[Hashable | None] = [None, *o.configurations]
            dense_bytes = self.installer.dense_bytes(self.groups[group].layers)
            keys.sort(key=lambda key: dense_bytes if key is None else o.bytes[key])  # stable
            return [Option(None, 0.0, o.dense_price) if key is None else
                    Option(o.configurations[key], sum(error(n, e, key) for n, e in o.layer_errors.items()),
                           o.price[key]) for key in keys]

        # by speed, prices are timings: options within the noise tie (the more accurate wins)
        tie = SPEED_TIE if self.speed_func is not None else 0.0
        return AllocationPath({group: preferred(group, o) for group, o in options.items()}, tie=tie)

    def run(self, budget: Budget) -> None:
        """Allocate, evaluate, choose; the decisions go to ``results`` (the model is left dense)."""
        # every plan installs its layers' options: each layer decomposed once, each option built once
        with keep_decompositions(), self.installer.reusing_builds():
            self._run(budget)

    def _run(self, budget: Budget) -> None:
        spaces = {g.name: _configurations(g, self.installer.kinds[g.layers[0]]) for g in self.groups.values()}
        key = tuning_key(self.installer.model, None if self.calibration is None else self.calibration[0],
                         spaces, self.speed_func is not None)
        # several processes on one storage share the work (broadcast ranks walk together instead)
        self._board = None if self.trials is None or self.broadcast is not None else self.trials.board()
        if self._board is not None:
            self._board.register()
        try:
            self._allocate(budget, key)
        finally:
            if self._board is not None:
                self._board.leave()

    def _allocate(self, budget: Budget, key: str) -> None:
        options, profiling = self._shared_options(key)
        self._bytes = {group: o.bytes for group, o in options.items()}  # for the chosen plan's records
        if self.trials is not None:
            layers = [name for group in options for name in self.groups[group].layers]
            self.trials.open({group: list(o.configurations.values()) for group, o in options.items()},
                             {group: self.groups[group].layers for group in options},
                             self.installer.dense_bytes(layers), key)
            self.trials.save_profile(key, {"groups": {g: o.to_json() for g, o in options.items()},
                                           "dense": self._kept_dense})
        if self._board is not None:
            if profiling is not None:
                self._board.done(profiling)
            # every worker splits the rounds between the workers registered when the first one got here
            self._workers = self._board.agree(f"workers:{self.trials.group}:{key}",  # type: ignore[union-attr]
                                              self._board.settled_workers)
            logger.info("allocation: %d workers share the search", self._workers)
        path = self.path(options, {})
        logger.info("allocation: %d plans on the path of %d groups", len(path), len(options))
        found = self._bisect(path, budget, guess=None)
        sensitivity = self._sensitivities(found, options, budget) if found is not None else None
        if sensitivity:
            corrected = self.path(options, sensitivity)
            predicted_drop = self.baseline - self.threshold
            try:
                guess = corrected.position_for_budget(predicted_drop)
            except ValueError:
                guess = None
            self._bisect(corrected, budget, guess=guess)
        self._choose()

    def _shared_options(self, key: str) -> tuple[dict[str, _GroupOptions], str | None]:
        """The options, and the board's claim to finish once they are stored (``None``: none held).

        The first worker to get here profiles and stores them; another waits for it and loads them,
        so by speed every worker prices the options with the same timings (a dead one's claim is
        taken over).
        """
        profiling = f"profile:{key}"
        while True:
            options = self._stored_options(key)
            if options is not None:
                return options, None
            if self._board is None:
                return self.options(), None
            if self._board.claim(profiling):
                break
            self._board.wait(profiling)
        options = self.options()
        # as the other workers will read them: the same floats in every worker
        return {group: _GroupOptions.from_json(o.to_json()) for group, o in options.items()}, profiling

    def _share(self) -> WorkerBoard | None:
        """The board to split evaluations on, ``None`` for one worker (everything here, in order)."""
        return self._board if self._workers > 1 else None

    def _bisect(self, path: AllocationPath, budget: Budget, guess: int | None) -> PathPoint | None:
        """The cheapest plan on ``path`` found to meet the threshold (``None``: none was, within the budget).

        The last position (every group at its most accurate option, dense) is taken to meet it: it
        is the dense model, already measured. ``guess`` is the first position tried. With ``W``
        workers each round evaluates ``W`` positions, one per worker (:func:`ksection`).
        """
        def meets(position: int) -> bool:
            return self._evaluate(path.point(position), budget, phase="bisect").feasible

        def name(position: int) -> str:
            return self.trials.claim_name(_choices(path.point(position)))  # type: ignore[union-attr]

        found = ksection(len(path), self._workers, guess, self._share(), name, meets, budget.exhausted)
        return None if found is None else path.point(found)

    def _sensitivities(self, found: PathPoint, options: Mapping[str, _GroupOptions],
                       budget: Budget) -> dict[str, float]:
        """Each role's accuracy drop per unit of predicted ``Σ e²``, measured on the roles of ``found``."""
        energy: dict[str, float] = {}
        for group, option in found.choices.items():
            if option.params is None:
                continue
            key = params_key(option.params)
            for name, errors in options[group].layer_errors.items():
                energy[self._role(name)] = energy.get(self._role(name), 0.0) + errors[key] ** 2
        roles = [role for role, value in energy.items() if value > 0]
        if len(roles) < 2 or len(roles) > MAX_ROLES:
            return {}
        def alone(role: str) -> PathPoint:
            return PathPoint({g: o if o.params is not None and all(self._role(n) == role for n in self.groups[g].layers)
                              else Option(None, 0.0, 0.0) for g, o in found.choices.items()}, 0.0, 0.0)

        def drop(role: str) -> float:
            record = self._evaluate(alone(role), budget, phase="sensitivity", role=role)
            accuracy = math.nan if record.accuracy is None else record.accuracy
            return max(self.baseline - accuracy, 0.0) if math.isfinite(accuracy) else math.inf

        # the probes are independent: split between the workers
        drops = share(self._share(), roles, lambda role: self.trials.claim_name(_choices(alone(role))),  # type: ignore[union-attr]
                      drop, budget.exhausted)
        if len(drops) < len(roles):
            return {}
        rates = {role: drops[role] / energy[role] for role in roles}
        finite = sorted(r for r in rates.values() if math.isfinite(r) and r > 0)
        if not finite:
            return {}
        median = finite[len(finite) // 2]
        clipped = {role: min(max(rate, median / SENSITIVITY_SPREAD), median * SENSITIVITY_SPREAD)
                   for role, rate in rates.items()}
        logger.info("allocation: role sensitivities (drop per unit Σe²): %s",
                    ", ".join(f"{role} {value:.3g}" for role, value in clipped.items()))
        return clipped

    # -- evaluating and choosing ---------------------------------------------------------------
    def _evaluate(self, point: PathPoint, budget: Budget, phase: str, role: str | None = None) -> PlanRecord:
        """The plan ``point`` chooses, measured by the runner (speed only when it meets the threshold)."""
        choices = _choices(point)
        key = tuple(sorted((g, params_key(p)) for g, p in choices.items()))
        if key in self._evaluated:
            return self._evaluated[key]
        record = self._stored_plan(point, choices, phase, role)
        if record is None:
            timed = phase != "sensitivity"  # a probe measures a role's accuracy drop only
            record = self.runner.evaluate_plan(self.groups, choices, phase, self.threshold, timed=timed, role=role,
                                               predicted_error=point.error)
            if record.error is not None:  # a plan that raises misses the threshold; the model is restored
                logger.warning("allocation: plan %d failed: %s", record.number, record.error)
        # a reused plan is counted like an evaluation: a resumed run walks the path as far as an uninterrupted one
        budget.spend()
        return self._add(key, record)

    def _stored_plan(self, point: PathPoint, choices: dict[str, dict[str, Any]], phase: str,
                     role: str | None) -> PlanRecord | None:
        """The plan's record from measurements a resumed study holds, or ``None`` to evaluate it.

        Feasibility is judged against this run's threshold; a plan that now needs a speed it was
        never measured with (it missed an earlier threshold, or was a probe) is evaluated again.
        """
        stored = None if self.trials is None else self.trials.stored(choices)
        if stored is None or stored.get("accuracy") is None:
            return None
        accuracy, speed = float(stored["accuracy"]), stored.get("speed")
        feasible = accuracy >= self.threshold
        if feasible and self.speed_func is not None and phase != "sensitivity":
            if speed is None:
                return None
            feasible = math.isfinite(speed)
        return self.runner.new_plan(self.groups, choices, phase, role=role, accuracy=accuracy, speed=speed,
                                    feasible=feasible, bytes=stored["bytes"], dense_bytes=stored["dense_bytes"],
                                    predicted_error=point.error, reused=True)

    def _add(self, key: tuple, record: PlanRecord) -> PlanRecord:
        """Note an evaluated (or reused) plan: the study, the log, progress."""
        self._evaluated[key] = record
        if self.trials is not None:
            self.trials.record(record)
        speed = "" if record.speed is None else f", speed {record.speed:.4g}"
        accuracy = "-" if record.accuracy is None else f"{record.accuracy:.4f}"
        logger.info("allocation plan %d (%s%s): %d groups replaced, accuracy %s%s, bytes %d/%d, %s%s",
                    record.number, record.phase, f" {record.role}" if record.role else "", len(record.choices),
                    accuracy, speed, record.bytes, record.dense_bytes,
                    "meets the threshold" if record.feasible else "below the threshold",
                    " (stored by an earlier run)" if record.reused else "")
        self.on_plan(record)
        return record

    def _choose(self) -> None:
        """Record the chosen plan: the fastest measured feasible one (ties: the most accurate), else the smallest."""
        chosen = choose_plan(self.results.plans, by_speed=self.speed_func is not None)
        if self.trials is not None:
            self.trials.chose(chosen)
        if chosen is None:
            logger.warning("allocation: no evaluated plan met the threshold; every layer stays dense")
            return
        self.results.chosen_plan = chosen.number
        self.results.composed_accuracy = chosen.accuracy
        for group_name, params in chosen.choices.items():
            group = self.groups[group_name]
            size = self._bytes[group_name][params_key(params)]
            dense = self.installer.dense_bytes(group.layers)
            score = chosen.speed if self.speed_func is not None else 1.0 - size / dense
            record = self.runner.new_record(group, params, phase="allocation", accuracy=chosen.accuracy,
                                            speed=chosen.speed, feasible=True, bytes=size, score=score)
            self.results.chosen[group_name] = record.trial
        logger.info("allocation: plan %d chosen, accuracy %.4f, bytes %d/%d", chosen.number, chosen.accuracy,
                    chosen.bytes, chosen.dense_bytes)
