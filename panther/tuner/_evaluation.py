"""Calling the user's evaluation functions: averaged runs, restored modes, optional resource.

The user's function owns the evaluation semantics (``model.eval()``, ``torch.no_grad()``); the
tuner only guarantees that every module's train/eval flag is what it was before the call.
"""

from __future__ import annotations

import inspect
import math
import statistics
from collections.abc import Callable
from typing import Any

from torch import nn

#: A user's evaluation function: ``f(model[, resource=...]) -> number`` (accuracy or speed).
EvalFunc = Callable[..., float]


def accepts_resource(func: EvalFunc) -> bool:
    """Whether ``func`` takes a ``resource`` keyword (named, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # some builtins have no signature
        return False
    return any(p.kind is p.VAR_KEYWORD or (p.name == "resource" and p.kind is not p.POSITIONAL_ONLY)
               for p in parameters)


def _training_flags(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(module, module.training) for module in model.modules()]


def call_eval(func: EvalFunc, model: nn.Module, resource: Any = None, pass_resource: bool = False) -> float:
    """One call of ``func(model)`` as a float; the modules' train/eval flags are restored afterwards.

    Exceptions raised by ``func`` propagate: a bug in the user's function must not be mistaken
    for a bad candidate. A result that is not a number is a ``TypeError`` for the same reason.
    """
    flags = _training_flags(model)
    try:
        value = func(model, resource=resource) if pass_resource else func(model)
    finally:
        for module, training in flags:
            module.training = training
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{getattr(func, '__name__', func)!r} must return a number, got {value!r}") from None


def measure(func: EvalFunc, model: nn.Module, runs: int, resource_source: Callable[[], Any] | None = None
            ) -> tuple[float, float]:
    """Mean and (population) standard deviation of ``runs`` calls; NaN if any call gave NaN."""
    pass_resource = resource_source is not None and accepts_resource(func)
    values = [call_eval(func, model, resource_source() if pass_resource else None, pass_resource)  # type: ignore[misc]
              for _ in range(runs)]
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())
