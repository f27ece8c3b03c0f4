"""Validation of ``SKAutoTuner``'s arguments: every error names the argument and the fix, before
the model is touched."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

from panther.tuner.search.base import SearchAlgorithm

#: The spec's required methods (a duck-typed search is checked for them, then wrapped).
REQUIRED_SEARCH_METHODS = ("get_next_params", "update", "is_finished", "initialize")


def check_callable(name: str, func: Any, required: bool) -> None:
    if func is None and not required:
        return
    if not callable(func):
        raise TypeError(f"{name} must be a callable taking the model, got {type(func).__name__}: {func!r}")


def check_positive(name: str, value: Any, integer: bool, optional: bool = True) -> None:
    kinds = (int,) if integer else (int, float)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, kinds) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive {'integer' if integer else 'number'}, got {value!r}")


def check_flag(name: str, flag: Any) -> None:
    if not isinstance(flag, bool):
        raise TypeError(f"{name} must be True or False, got {flag!r}")


def speed_function(optmization_eval_func: Callable[..., float] | None,
                   optimization_eval_func: Callable[..., float] | None) -> Callable[..., float] | None:
    """The one speed function of the two spellings (the spec's and the corrected one)."""
    if optmization_eval_func is not None and optimization_eval_func is not None \
            and optmization_eval_func is not optimization_eval_func:
        raise ValueError("give optmization_eval_func or optimization_eval_func, not two different functions")
    return optimization_eval_func if optimization_eval_func is not None else optmization_eval_func


def check_speed_needs_threshold(speed_func: Callable[..., float] | None, threshold: float | None) -> None:
    if speed_func is not None and threshold is None:
        raise ValueError("optmization_eval_func needs accuracy_threshold: maximising speed alone would pick "
                         "the smallest, least accurate sketch")


def check_threshold(accuracy_threshold: Any) -> float | None:
    if accuracy_threshold is None:
        return None
    if isinstance(accuracy_threshold, bool) or not isinstance(accuracy_threshold, (int, float)) \
            or not math.isfinite(accuracy_threshold):
        raise ValueError(f"accuracy_threshold must be a finite number or None, got {accuracy_threshold!r}")
    return float(accuracy_threshold)


def check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")


def check_calibration(calibration_data: Any, calibration_forward: Any) -> None:
    check_callable("calibration_forward", calibration_forward, required=False)
    if calibration_data is not None and not isinstance(calibration_data, Iterable):
        raise TypeError(f"calibration_data must be an iterable of batches, got {type(calibration_data).__name__}")


def search_or_default(search_algorithm: Any) -> Any:
    """``search_algorithm``, checked to have the spec's methods, or ``OptunaSearch()``."""
    if search_algorithm is None:
        from panther.tuner.search import OptunaSearch

        return OptunaSearch()
    missing = [m for m in REQUIRED_SEARCH_METHODS if not callable(getattr(search_algorithm, m, None))]
    if missing:
        raise TypeError(f"search_algorithm lacks {missing}; implement panther.tuner.SearchAlgorithm")
    return search_algorithm


def check_maximises(search: SearchAlgorithm) -> None:
    if search.direction != "maximize":
        raise ValueError("the tuner maximises its scores; create the search with direction='maximize'")


#: ``SKAutoTuner(strategy=...)``: how the accuracy budget is spent over the tuned groups.
STRATEGIES = ("auto", "allocate", "search")


def check_strategy(strategy: Any, threshold: float | None) -> None:
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "allocate" and threshold is None:
        raise ValueError("strategy='allocate' spends the drop down to accuracy_threshold; pass accuracy_threshold")
