"""The options shared by :class:`SketchTuneCallback` and :meth:`SketchTuner.sketch_tune`, validated once.

Everything is checked when the options are built (the callback's ``__init__``), so a typo on the
command line fails before any training starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Literal, Optional, Union

from panther.tuner.configs import LayerConfig, TuningConfigs

#: What ``configs`` may be: a ``TuningConfigs``, ``LayerConfig``s, or their plain-dict (YAML) forms.
#: Plain-data forms come first so that a command line / YAML list of dicts stays a list of dicts.
ConfigsLike = Union[List[Dict[str, Any]], Dict[str, Any], TuningConfigs, LayerConfig, List[LayerConfig]]

#: Default: every ``nn.Linear`` (and Hugging Face ``Conv1D``, GPT-2's projections), each tuned on its
#: own, parameter ranges from the layer's size. ``Conv1D`` is matched by class name: no import needed.
DEFAULT_CONFIGS = [{"layer_names": {"type": ["Linear", "Conv1D"]}, "params": "auto", "separate": True}]

DEFAULT_N_TRIALS = 20


@dataclass
class SketchTuneOptions:
    """Validated tuning options (see :class:`~panther_lightning.SketchTuneCallback` for their meaning)."""

    configs: TuningConfigs
    monitor: str = "val_acc"
    mode: str = "max"
    accuracy_threshold: Optional[float] = None
    max_drop: Optional[float] = None
    objective: str = "speed"
    speed_mode: str = "inference"
    n_trials: Optional[int] = None
    search_algorithm: Any = None
    seed: int = 0
    screen_batches: Optional[int] = None
    speed_batches: int = 4
    timing_repeats: int = 15
    tie_tolerance: float = 0.05
    max_total_trials: Optional[int] = None
    time_budget_s: Optional[float] = None
    finetune_epochs: int = 0
    calibration_batches: int = 0
    share_accuracy_drop: bool = True
    plan_path: Optional[str] = None
    verbose: bool = True

    @classmethod
    def build(cls, configs: Optional[ConfigsLike] = None, **options: Any) -> "SketchTuneOptions":
        """Coerce ``configs`` and check every option; raises ``ValueError``/``TypeError`` naming the option."""
        tuning = TuningConfigs.coerce(DEFAULT_CONFIGS if configs is None else configs)
        built = cls(configs=tuning, **options)
        built._check()
        return built

    def _check(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must be the name of a logged validation metric, got {self.monitor!r}")
        _choice("mode", self.mode, ("max", "min"))
        _choice("objective", self.objective, ("speed", "size"))
        _choice("speed_mode", self.speed_mode, ("inference", "train"))
        _number("accuracy_threshold", self.accuracy_threshold, minimum=None)
        _number("max_drop", self.max_drop, minimum=0.0)
        _number("tie_tolerance", self.tie_tolerance, minimum=0.0, optional=False)
        _number("time_budget_s", self.time_budget_s, minimum=0.0, strict=True)
        for name in ("n_trials", "screen_batches", "max_total_trials"):
            _integer(name, getattr(self, name), minimum=1)
        for name in ("speed_batches", "timing_repeats"):
            _integer(name, getattr(self, name), minimum=1, optional=False)
        _integer("finetune_epochs", self.finetune_epochs, minimum=0, optional=False)
        _integer("calibration_batches", self.calibration_batches, minimum=0, optional=False)
        _integer("seed", self.seed, minimum=None, optional=False)
        if self.search_algorithm is not None and self.n_trials is not None:
            raise ValueError("give n_trials or search_algorithm, not both (set n_trials on the search algorithm)")
        if self.plan_path is not None and (not isinstance(self.plan_path, str) or not self.plan_path):
            raise ValueError(f"plan_path must be a file path or None, got {self.plan_path!r}")
        for name in ("verbose", "share_accuracy_drop"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")

    # -- thresholds in "score" space (higher is better, whatever the mode) ---------------------
    def score(self, metric: float) -> float:
        """The monitored metric as a higher-is-better score (``mode="min"`` metrics are negated)."""
        return metric if self.mode == "max" else -metric

    def metric(self, score: float) -> float:
        """Inverse of :meth:`score`."""
        return score if self.mode == "max" else -score

    def score_threshold(self, dense_metric: float) -> float:
        """Lowest acceptable score: the stricter of ``accuracy_threshold`` and ``max_drop`` (0 if neither)."""
        bounds = []
        if self.accuracy_threshold is not None:
            bounds.append(self.score(self.accuracy_threshold))
        if self.max_drop is not None or self.accuracy_threshold is None:
            bounds.append(self.score(dense_metric) - (self.max_drop or 0.0))
        return max(bounds)


def _choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _number(name: str, value: Any, minimum: Optional[float], optional: bool = True, strict: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")


def _integer(name: str, value: Any, minimum: Optional[int], optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}{' or None' if optional else ''}, got {value!r}")


Mode = Literal["max", "min"]
Objective = Literal["speed", "size"]
SpeedMode = Literal["inference", "train"]
