"""What the tuner measured: one record per trial and per whole-model plan, a DataFrame view, a summary, safe files.

Results files are pickles (the documented ``.pkl`` API) holding only builtins (dict, list, str,
numbers, bool, None). They are read back with an unpickler that resolves no global at all, so a
crafted file cannot run code: anything but plain data is rejected with ``ValueError``.
"""

from __future__ import annotations

import io
import math
import os
import pickle
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

#: Trial outcomes: measured, failed (NaN accuracy / candidate could not be built), or answered
#: from an earlier identical proposal (``reused``) instead of evaluated again.
STATUSES = ("ok", "failed", "reused")
_FORMAT = "panther.tuner.results"
#: 3: ``plans`` are :class:`PlanRecord` s (numbered ``number``, with a ``status``); 2: sizes in bytes
#: (``bytes``/``dense_bytes``), ``plans`` as dicts (still read); 1 counted stored numbers.
_VERSION = 3
_PLAIN_TYPES = (str, int, float, bool, type(None))


@dataclass(kw_only=True)
class MeasuredPlan:
    """What evaluating one plan gave: the fields every record shares, whichever strategy made it.

    A plan is a choice ``{group: params}`` (``choices``); the trial runner's one measuring step
    (:meth:`TrialRunner.measure <panther.tuner._trials.TrialRunner.measure>`) fills these fields.
    A search trial (:class:`TrialRecord`) is a one-group plan, an allocation's (:class:`PlanRecord`)
    a whole-model one.
    """

    # trials: "probe" (budget pass), "search", "storage" (resumed) or "allocation"; plans: "bisect", "sensitivity"
    phase: str = "search"
    status: str = "ok"
    accuracy: float | None = None  # None: never measured (the candidates raised first)
    accuracy_std: float | None = None
    speed: float | None = None  # only measured for plans that meet the accuracy threshold
    speed_std: float | None = None
    feasible: bool = False
    bytes: int | None = None  # stored bytes (parameters + buffers) of the replaced layers: int8 counts 1 per weight
    dense_bytes: int | None = None  # the same layers' dense bytes
    error: str | None = None
    duration_s: float = 0.0

    @property
    def size_ratio(self) -> float | None:
        if self.bytes is None or not self.dense_bytes:
            return None
        return self.bytes / self.dense_bytes

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def _checked(cls, data: Mapping[str, Any], required: set[str]) -> Any:
        """``cls(**data)`` when ``data`` has the ``required`` fields, no unknown one and a known status."""
        known = {f.name for f in fields(cls)}
        if set(data) - known or not required <= set(data):
            raise ValueError(f"malformed {cls.__name__} {dict(data)!r}")
        record = cls(**dict(data))
        if record.status not in STATUSES:
            raise ValueError(f"malformed {cls.__name__} {dict(data)!r}")
        return record


@dataclass
class TrialRecord(MeasuredPlan):
    """One evaluated parameter proposal for one tuning group (a layer, or layers tuned jointly):
    the one-group plan ``{group: params}``."""

    group: str
    layer_names: list[str]
    trial: int
    params: dict[str, Any]
    score: float | None = None  # the value the search algorithm was told (higher is better)

    @property
    def choices(self) -> dict[str, dict[str, Any]]:
        """The plan this trial evaluated: its group with ``params``, every other group dense."""
        return {self.group: self.params}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialRecord:
        record = cls._checked(data, {"group", "layer_names", "trial", "params"})
        if not isinstance(record.params, dict):
            raise ValueError(f"malformed TrialRecord {dict(data)!r}")
        return record


@dataclass(kw_only=True)
class PlanRecord(MeasuredPlan):
    """One evaluated whole-model plan (``results.plans``): ``choices`` ``{group: params}`` (groups
    left out stay dense), numbered in the run; ``bytes`` / ``dense_bytes`` count the replaced layers."""

    number: int
    choices: dict[str, dict[str, Any]]
    role: str | None = None  # the role a sensitivity probe replaces alone
    predicted_error: float | None = None  # the path's summed error for this plan
    reused: bool = False  # measured by an earlier run (a resumed study), not evaluated again

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PlanRecord:
        record = cls._checked(data, {"number", "choices", "phase"})
        if not isinstance(record.choices, dict):
            raise ValueError(f"malformed PlanRecord {dict(data)!r}")
        return record

    @classmethod
    def from_version_2(cls, entry: Mapping[str, Any]) -> PlanRecord:
        """A format-2 ``plans`` entry (a dict numbered ``"plan"``, NaN accuracy for a plan that raised)."""
        data = {k: v for k, v in entry.items() if k != "plan"}
        accuracy = data.get("accuracy")
        failed = accuracy is None or not math.isfinite(accuracy)
        return cls.from_dict({**data, "number": entry["plan"], "status": "failed" if failed else "ok"})


@dataclass
class TuningResults:
    """Everything ``SKAutoTuner`` reports: trials, chosen parameters, and the composed-model check."""

    records: list[TrialRecord] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)  # group -> layer names
    reverted: list[str] = field(default_factory=list)  # groups put back to dense by the final check
    chosen: dict[str, int] = field(default_factory=dict)  # group -> trial the final check stepped up to
    baseline_accuracy: float | None = None
    composed_accuracy: float | None = None  # accuracy of the model with every kept winner installed
    reused_trials: dict[str, int] = field(default_factory=dict)
    group_thresholds: dict[str, float] = field(default_factory=dict)  # group -> accuracy its trials had to reach
    skipped: dict[str, str] = field(default_factory=dict)  # selected layer -> why it is not tuned
    #: Whole-model plans a strategy="allocate" run evaluated, in order (``plans[i].number == i + 1``).
    plans: list[PlanRecord] = field(default_factory=list)
    chosen_plan: int | None = None  # the number of the plan whose choices were recorded

    def best_record(self, group: str) -> TrialRecord | None:
        """The feasible record with the highest score (fewest bytes, then earliest, on ties)."""
        candidates = [r for r in self.records if r.group == group and r.feasible and r.status != "failed"]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (-(r.score or 0.0), r.bytes or 0, r.trial))

    def frontier(self) -> list[PlanRecord]:
        """The feasible Pareto set of ``plans`` (accuracy against speed, or bytes saved), most accurate
        first; any of them can be installed with ``SKAutoTuner.apply_plan`` (see :mod:`panther.tuner.frontier`)."""
        from panther.tuner.frontier import pareto_plans

        return pareto_plans(self.plans)

    def selected_record(self, group: str) -> TrialRecord | None:
        """The trial installed for ``group``: the best one, or the safer one the composed check chose."""
        if group in self.reverted:
            return None
        if group in self.chosen:
            return next(r for r in self.records if r.group == group and r.trial == self.chosen[group])
        return self.best_record(group)

    # -- persistence ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = {
            "format": _FORMAT,
            "version": _VERSION,
            "records": [r.to_dict() for r in self.records],
            "groups": self.groups,
            "reverted": self.reverted,
            "chosen": self.chosen,
            "baseline_accuracy": self.baseline_accuracy,
            "composed_accuracy": self.composed_accuracy,
            "reused_trials": self.reused_trials,
            "group_thresholds": self.group_thresholds,
            "skipped": self.skipped,
            "plans": [plan.to_dict() for plan in self.plans],
            "chosen_plan": self.chosen_plan,
        }
        _check_plain(data, "results")
        return data

    @classmethod
    def from_dict(cls, data: Any) -> TuningResults:
        if isinstance(data, dict) and data.get("format") == _FORMAT and data.get("version") == 1:
            raise ValueError("this results file is format 1, which counts stored numbers where this version "
                             "counts bytes; run tune() again to write a current one")
        if not isinstance(data, dict) or data.get("format") != _FORMAT or data.get("version") not in (2, _VERSION):
            raise ValueError("not a panther.tuner results file (missing or unknown format/version)")
        try:
            return cls(
                records=[TrialRecord.from_dict(r) for r in data["records"]],
                groups={str(k): [str(n) for n in v] for k, v in data["groups"].items()},
                reverted=[str(g) for g in data["reverted"]],
                chosen={str(k): int(v) for k, v in data.get("chosen", {}).items()},
                baseline_accuracy=data["baseline_accuracy"],
                composed_accuracy=data["composed_accuracy"],
                reused_trials={str(k): int(v) for k, v in data["reused_trials"].items()},
                group_thresholds={str(k): float(v) for k, v in data.get("group_thresholds", {}).items()},
                skipped={str(k): str(v) for k, v in data.get("skipped", {}).items()},
                plans=[PlanRecord.from_dict(plan) if data["version"] == _VERSION else PlanRecord.from_version_2(plan)
                       for plan in data.get("plans", [])],
                chosen_plan=data.get("chosen_plan"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed results file: {exc}") from None

    def save(self, path: str | os.PathLike) -> None:
        """Write the results; missing parent folders are created (as the original Panther did)."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "wb") as handle:
            pickle.dump(self.to_dict(), handle, protocol=4)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TuningResults:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no tuning results file at {os.fspath(path)!r}")
        with open(path, "rb") as handle:
            payload = handle.read()
        try:
            data = _PlainUnpickler(io.BytesIO(payload)).load()
        except ValueError:
            raise
        except Exception as exc:  # truncated/garbage files raise many unpickling error types
            raise ValueError(f"cannot read tuning results from {os.fspath(path)!r}: {exc}") from None
        return cls.from_dict(data)


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every global: only builtin containers and scalars can be rebuilt, so no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        raise ValueError(f"results file references {module}.{name}; only plain data is allowed")


def _check_plain(value: Any, where: str) -> None:
    """Make sure ``value`` is made of builtins only, so it round-trips through the safe loader."""
    if isinstance(value, _PLAIN_TYPES):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, _PLAIN_TYPES):
                raise ValueError(f"{where}: key {key!r} is not a plain value and cannot be saved")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(f"{where} holds a {type(value).__name__} ({value!r}); results files store plain data only")


# -- views ------------------------------------------------------------------------------------
def results_rows(results: TuningResults) -> list[dict[str, Any]]:
    """One row per layer per trial (a jointly tuned group repeats its trial for each of its layers).

    After an allocating run, every evaluated whole-model plan adds one row per layer it replaced
    (``phase`` ``"bisect"``/``"sensitivity"``, the plan's number in ``plan``, its whole-model
    accuracy and speed, the replaced layers' bytes together); ``best`` marks the chosen plan.
    """
    return _record_rows(results) + _plan_rows(results)


def _plan_rows(results: TuningResults) -> list[dict[str, Any]]:
    rows = []
    for plan in results.plans:
        for group, params in plan.choices.items():
            for layer in results.groups.get(group, []):
                row: dict[str, Any] = {"layer_name": layer, "group": group, "trial": None, "plan": plan.number}
                row.update(params)
                row.update(accuracy=plan.accuracy, speed=plan.speed, feasible=plan.feasible, bytes=plan.bytes,
                           dense_bytes=plan.dense_bytes, phase=plan.phase, best=plan.number == results.chosen_plan)
                rows.append(row)
    return rows


def _record_rows(results: TuningResults) -> list[dict[str, Any]]:
    best_trials = {g: r.trial for g in results.groups if (r := results.selected_record(g)) is not None}
    rows = []
    for record in results.records:
        for layer in record.layer_names:
            row: dict[str, Any] = {"layer_name": layer, "group": record.group, "trial": record.trial}
            row.update(record.params)
            row.update(
                accuracy=record.accuracy, accuracy_std=record.accuracy_std, speed=record.speed,
                speed_std=record.speed_std, score=record.score, feasible=record.feasible,
                status=record.status, bytes=record.bytes, dense_bytes=record.dense_bytes,
                phase=record.phase, best=best_trials.get(record.group) == record.trial,
                reverted=record.group in results.reverted, error=record.error,
            )
            rows.append(row)
    return rows


#: Columns every results frame has, rows or not: a trial record's (parameter columns between).
_LEAD_COLUMNS = ("layer_name", "group", "trial")
_TAIL_COLUMNS = ("accuracy", "accuracy_std", "speed", "speed_std", "score", "feasible", "status", "bytes",
                 "dense_bytes", "phase", "best", "reverted", "error")


def results_dataframe(results: TuningResults, param_names: Sequence[str] = ()) -> Any:
    """:func:`results_rows` as a DataFrame (columns in the rows' order), with every standard column
    and ``param_names`` present, so code selecting columns works on any run (one that evaluated
    nothing, or plans only); missing columns are added after the rows' own."""
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("get_results_dataframe() needs pandas: pip install pandas") from None
    frame = pd.DataFrame(results_rows(results))
    wanted = [*_LEAD_COLUMNS, *param_names, *_TAIL_COLUMNS]
    return frame.reindex(columns=[*frame.columns, *(c for c in dict.fromkeys(wanted) if c not in frame.columns)])


def _fmt(value: float | None, spec: str = ".4f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def _is_cheaper(record: TrialRecord, best: TrialRecord | None) -> bool:
    return best is None or (record.bytes or 0) < (best.bytes or 0)


def summary_table(results: TuningResults) -> str:
    """Per layer: chosen params, accuracy and speed of its selected trial, bytes kept, outcome."""
    header = ("layer", "params", "accuracy", "speed", "bytes", "outcome")
    lines: list[tuple[str, ...]] = [header]
    for group, layers in results.groups.items():
        best = results.best_record(group)
        record = results.selected_record(group) or best
        if record is None:
            tried = [r for r in results.records if r.group == group]
            outcome = ("dense (no trial met the threshold)" if not tried or any(r.status != "failed" for r in tried)
                       else f"dense (every trial failed; last: {tried[-1].error})")
            cells: Sequence[str] = ("-", "-", "-", "-")
        else:
            outcome = ("reverted to dense" if group in results.reverted
                       else f"replaced (whole-model plan {results.chosen_plan})" if record.phase == "allocation"
                       else "sketched" if group not in results.chosen
                       else "sketched (spends the composed model's spare margin)" if _is_cheaper(record, best)
                       else "sketched (stepped up for the composed model)")
            ratio = record.size_ratio
            size = f"{record.bytes}/{record.dense_bytes} ({_fmt(ratio, '.1%')})"
            params = ", ".join(f"{k}={v}" for k, v in record.params.items())
            cells = (params, _fmt(record.accuracy), _fmt(record.speed, ".4g"), size)
        for layer in layers:
            lines.append((layer, *cells, outcome))
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    footer = []
    if results.baseline_accuracy is not None:
        footer.append(f"dense model accuracy: {_fmt(results.baseline_accuracy)}")
    if results.composed_accuracy is not None:
        footer.append(f"tuned model accuracy (all kept layers sketched): {_fmt(results.composed_accuracy)}")
    if results.reverted:
        footer.append(f"reverted to dense to meet the threshold: {', '.join(results.reverted)}")
    if results.skipped:
        footer.append("skipped (kept dense):")
        footer += [f"  {layer}: {reason}" for layer, reason in results.skipped.items()]
    if results.plans:
        phases = Counter(plan.phase for plan in results.plans)
        footer.append(f"whole-model plans evaluated: {len(results.plans)} ("
                      + ", ".join(f"{n} {phase}" for phase, n in phases.items()) + ")"
                      + ("" if results.chosen_plan is None else f"; plan {results.chosen_plan} chosen"))
    reused = sum(results.reused_trials.values())
    if reused:
        footer.append(f"duplicate proposals answered from earlier results: {reused}")
    return "\n".join(text + footer)
