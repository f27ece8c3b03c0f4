"""Describe a model's replaced layers as a plan, and rebuild them from a plan or a state dict.

A *plan* is ``{layer_name: {"type": "SKLinear", "params": {...}}}``: ``type`` names the class a
layer kind of :mod:`panther.kinds` builds (e.g. ``"Int8Linear"``; a kind's own name, as older plans
wrote it, also loads) and ``params`` are what the kind builds with (e.g. ``num_terms``, ``low_rank``,
``init``, ``method``). It is JSON-serialisable,
so a tuning result can be re-applied to a fresh dense model. A sketched model's ``state_dict``
also describes its layers (their ``_extra_state``), so :func:`rebuild_sketched_layers` can turn a
fresh dense model into one that loads that state dict strictly.

Plans need the layer-kind registry, so they live above it (:mod:`panther.nn` only swaps modules:
:mod:`panther.nn.surgery`).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from typing import Any

from torch import nn

from panther.kinds import kind_named, kind_of_class_name, kind_of_replacement
from panther.nn.moments import InputMoment
from panther.nn.surgery import replace_module

__all__ = ["Plan", "apply_plan", "load_plan", "plan_from_state_dict", "rebuild_sketched_layers", "save_plan",
           "sketch_plan", "validate_plan"]

Plan = dict[str, dict[str, Any]]
_EXTRA_STATE_SUFFIX = "._extra_state"


def sketch_plan(model: nn.Module) -> Plan:
    """The plan describing every replaced layer of ``model`` (each shared module once, first name)."""
    plan: Plan = {}
    for name, module in model.named_modules():
        kind = kind_of_replacement(module) if name else None
        if kind is not None:
            params = kind.plan_params(module)
            plan[name] = {"type": kind.plan_type(params), "params": params}
    return plan


def validate_plan(plan: Any) -> Plan:
    """Check a plan's shape (before any model is touched) and return it."""
    if not isinstance(plan, Mapping):
        raise ValueError(f"a plan must be a mapping of layer name -> {{'type', 'params'}}, got {type(plan).__name__}")
    for name, entry in plan.items():
        if not isinstance(name, str) or not isinstance(entry, Mapping) or set(entry) != {"type", "params"}:
            raise ValueError(f"plan entry {name!r} must be {{'type': str, 'params': dict}}, got {entry!r}")
        if not isinstance(entry["params"], Mapping):
            raise ValueError(f"plan entry {name!r}: 'params' must be a dict, got {entry['params']!r}")
        kind = kind_named(entry["type"])
        try:
            builds = kind.plan_type(entry["params"])
        except ValueError as exc:
            raise ValueError(f"plan entry {name!r}: {exc}") from None
        if entry["type"] not in (kind.name, builds):
            raise ValueError(f"plan entry {name!r} has type {entry['type']!r}, but its params build a {builds}")
    return dict(plan)


def apply_plan(model: nn.Module, plan: Plan, input_covs: Mapping[str, InputMoment] | None = None) -> nn.Module:
    """Replace the dense layers named in ``plan`` by their sketched versions (in place).

    Weights are copied from each dense layer with ``from_dense``. Layers already sketched as
    planned are left alone. Every entry is checked before the first layer is replaced.
    """
    plan = validate_plan(plan)
    todo = []
    for name, entry in plan.items():
        try:
            layer = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"plan names layer {name!r}, which the model does not have") from None
        kind = kind_named(entry["type"])
        if isinstance(layer, kind.replacements()):
            continue
        if kind.dense_type_of(layer) is None:
            raise ValueError(f"plan maps {name!r} to {kind.name}, but it is a {type(layer).__name__}")
        todo.append((name, layer, kind, dict(entry["params"])))
    for name, layer, kind, params in todo:
        cov = (input_covs or {}).get(name)
        if kind.uses_input_cov(params) and cov is None:
            fallback = kind.without_input_cov(params)
            warnings.warn(f"{name}: plan params {params} need the layer's input covariance, but none was given; "
                          f"building {fallback} instead (load the trained weights afterwards for exact values)",
                          stacklevel=2)
            params = fallback
        replace_module(model, name, kind.build(layer, params, input_cov=cov))
    return model


def plan_from_state_dict(state_dict: Mapping[str, Any]) -> Plan:
    """Recover the plan from the ``_extra_state`` entries a sketched model's state dict carries."""
    plan: Plan = {}
    for key, value in state_dict.items():
        if not (key.endswith(_EXTRA_STATE_SUFFIX) and isinstance(value, Mapping)):
            continue
        kind = kind_of_class_name(value.get("class"))
        if kind is not None and isinstance(value.get("hyperparameters"), Mapping):  # else: some other module's
            name = key[: -len(_EXTRA_STATE_SUFFIX)]
            plan[name] = {"type": kind.name,
                          "params": kind.plan_params_from_state(value["hyperparameters"], value["class"])}
    return plan


def rebuild_sketched_layers(model: nn.Module, source: Mapping[str, Any] | str | os.PathLike) -> nn.Module:
    """Give a dense ``model`` the sketched layers described by ``source``, so it can load their weights.

    ``source`` is a sketched model's state dict, a plan, or a path to a plan JSON file. Afterwards
    ``model.load_state_dict(state_dict, strict=True)`` restores the sketched model exactly.
    """
    if isinstance(source, (str, os.PathLike)):
        plan = load_plan(source)
    elif source and all(isinstance(v, Mapping) and set(v) == {"type", "params"} for v in source.values()):
        plan = dict(source)  # type: ignore[arg-type]
    else:
        plan = plan_from_state_dict(source)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # data_svd falls back to svd: exact weights are loaded next
        return apply_plan(model, plan)


def save_plan(plan: Plan, path: str | os.PathLike) -> None:
    """Write a plan as JSON (human-readable, safe to load)."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(validate_plan(plan), handle, indent=2, sort_keys=False)


def load_plan(path: str | os.PathLike) -> Plan:
    """Read and validate a plan JSON file."""
    with open(path, encoding="utf-8") as handle:
        return validate_plan(json.load(handle))
