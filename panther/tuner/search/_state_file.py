"""The JSON file of :meth:`OptunaSearch.save_state` / ``load_state``: every group's finished trials and space.

Plain JSON (no pickle), so a state file never runs code when read. Trials are written with their
parameters, distributions, user attributes and intermediate values, and re-created with
``optuna.trial.create_trial``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from panther.space import ParamSpec
from panther.tuner.search.faults import superseded_numbers

_STATE_FORMAT = "panther.tuner.OptunaSearch"
_STATE_VERSION = 1
_SAVED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def write_state(filepath: str, header: dict[str, Any], groups: dict[str, dict[str, Any]]) -> None:
    """Write ``header`` (study name, direction, ...) and ``groups`` atomically (a crash leaves the old file)."""
    state = {"format": _STATE_FORMAT, "version": _STATE_VERSION, **header, "groups": groups}
    tmp = f"{filepath}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(state, handle, indent=1)
    os.replace(tmp, filepath)


def read_state(filepath: str, direction: str) -> dict[str, Any]:
    """The state :func:`write_state` wrote, checked to be one for a search to ``direction``."""
    with open(filepath, encoding="utf-8") as handle:
        state = json.load(handle)
    if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
        raise ValueError(f"{filepath} is not an OptunaSearch state file")
    if state.get("version") != _STATE_VERSION:
        raise ValueError(f"{filepath}: unsupported state version {state.get('version')!r}")
    if state["direction"] != direction:
        raise ValueError(f"{filepath} was saved by a search to {state['direction']}, this one is to {direction}")
    return state


def group_state(study: optuna.Study, space: dict[str, ParamSpec]) -> dict[str, Any]:
    """One group's entry: its space (when JSON holds it exactly) and its finished trials."""
    specs: dict[str, Any] | None = {k: spec.to_dict() for k, spec in space.items()}
    if not _survives_json(specs):  # type: ignore[arg-type]
        specs = None  # choices JSON cannot hold exactly (tuples, classes, ...)
    all_trials = study.get_trials(deepcopy=False)
    replaced = superseded_numbers(all_trials)  # a retry stands for them (their links are not saved)
    trials = [_trial_to_json(t) for t in all_trials if t.state in _SAVED_STATES and t.number not in replaced]
    return {"space": specs, "trials": trials}


def group_trials(group: dict[str, Any]) -> list[FrozenTrial]:
    """The trials of a group entry, re-created."""
    return [_trial_from_json(t) for t in group["trials"]]


def group_space(group: dict[str, Any]) -> dict[str, ParamSpec] | None:
    """The space of a group entry (``None`` when it was not saved)."""
    if group.get("space") is None:
        return None
    return {k: ParamSpec.from_dict(v) for k, v in group["space"].items()}


def _survives_json(specs: dict[str, Any]) -> bool:
    try:
        loaded = json.loads(json.dumps(specs))
    except (TypeError, ValueError):
        return False
    return all(ParamSpec.from_dict(loaded[k]) == ParamSpec.from_dict(v) for k, v in specs.items())


def _trial_to_json(trial: FrozenTrial) -> dict[str, Any]:
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "distributions": {k: distribution_to_json(d) for k, d in trial.distributions.items()},
        "user_attrs": trial.user_attrs,
        "intermediate_values": {str(step): v for step, v in trial.intermediate_values.items()},
    }


def _trial_from_json(data: dict[str, Any]) -> FrozenTrial:
    state = TrialState[data["state"]]
    return create_trial(
        state=state,
        value=data["value"] if state in (TrialState.COMPLETE, TrialState.PRUNED) else None,
        params=data["params"],
        distributions={k: json_to_distribution(d) for k, d in data["distributions"].items()},
        user_attrs=data["user_attrs"],
        intermediate_values={int(step): v for step, v in data["intermediate_values"].items()},
    )
