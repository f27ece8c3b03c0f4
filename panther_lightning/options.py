"""The options of :class:`SketchTuneCallback` and :meth:`SketchTuner.sketch_tune`: defaults, docs, checks.

Both public signatures spell every option out, so that IDEs, LightningCLI and jsonargparse see
real parameters; their defaults and docs are written once, on the fields of
:class:`SketchTuneOptions`. :func:`document_options` writes the docs into both docstrings (which
LightningCLI's ``--help`` reads), and ``tests/lightning/test_options.py`` checks that both
signatures match the fields: names, order, defaults and types.

Everything is checked when the options are built (the callback's ``__init__``), so a typo on the
command line fails before any training starts.
"""

from __future__ import annotations

import inspect
import math
import re
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, TypeVar, get_args

from panther.tuner.configs import LayerConfig, TuningConfigs
from panther.tuner.search import SearchAlgorithm

#: What ``configs`` may be: a ``TuningConfigs``, ``LayerConfig``s, or their plain-dict (YAML) forms.
#: Plain-data forms come first so that a command line / YAML list of dicts stays a list of dicts.
ConfigsLike = list[dict[str, Any]] | dict[str, Any] | TuningConfigs | LayerConfig | list[LayerConfig]
Mode = Literal["max", "min"]
Objective = Literal["speed", "size"]
SpeedMode = Literal["inference", "train"]
Strategy = Literal["auto", "allocate", "search"]

#: Default: every ``nn.Linear`` (and Hugging Face ``Conv1D``, GPT-2's projections), each tuned on its
#: own, parameter ranges from the layer's size. ``Conv1D`` is matched by class name: no import needed.
DEFAULT_CONFIGS = [{"layer_names": {"type": ["Linear", "Conv1D"]}, "params": "auto", "separate": True}]

DEFAULT_N_TRIALS = 20

T = TypeVar("T")


def _option(default: Any, doc: str) -> Any:
    """A field with its default and the one text that documents it in both public signatures."""
    return field(default=default, metadata={"doc": doc})


@dataclass
class SketchTuneOptions:
    """Validated tuning options; each field's ``metadata["doc"]`` says what it means.

    Built from the public signatures' arguments by :meth:`from_arguments`; ``configs`` is then
    always a ``TuningConfigs`` (``None`` becomes :data:`DEFAULT_CONFIGS`).
    """

    configs: ConfigsLike | None = _option(
        None, "which layers to tune and their search spaces: a ``TuningConfigs``, a list of ``LayerConfig`` or "
        'of dicts such as ``{"layer_names": {"type": "Linear"}, "params": "auto"}`` (YAML-friendly). '
        'Default: every ``nn.Linear`` (and Hugging Face ``Conv1D``), separately, with ``params="auto"``.')
    monitor: str = _option(
        "val_acc", "validation metric deciding whether a candidate is acceptable (logged by ``validation_step``).")
    mode: Mode = _option(
        "max", '``"max"`` if higher ``monitor`` is better (accuracy), ``"min"`` if lower is (loss).')
    accuracy_threshold: float | None = _option(
        None, 'absolute bound on ``monitor``: at least this (``mode="max"``) or at most this (``mode="min"``).')
    max_drop: float | None = _option(
        None, "largest allowed worsening of ``monitor`` relative to the dense model's value, measured at the start "
        "of tuning, in the metric's units (e.g. 0.01 = one point of accuracy). With both bounds the stricter one "
        "applies; with neither, candidates must match the dense value.")
    objective: Objective = _option(
        "speed", 'what to gain among acceptable candidates: ``"speed"`` (measured step time, plans not measured '
        'faster than the dense model are rejected) or ``"size"`` (fewest stored bytes).')
    speed_mode: SpeedMode = _option(
        "inference", '``"inference"`` (forward under no_grad) or ``"train"`` (forward + backward) timing.')
    n_trials: int | None = _option(
        None, f"search trials per tuned layer group (default {DEFAULT_N_TRIALS}); not with ``search_algorithm``.")
    search_algorithm: SearchAlgorithm | None = _option(
        None, "a ``panther.tuner`` search algorithm (default ``OptunaSearch(n_trials, seed)``).")
    seed: int = _option(0, "seed of the default search (all DDP ranks must propose the same candidates).")
    screen_batches: int | None = _option(
        None, "score candidates on the first N validation batches and re-score those that pass on the full set "
        "(cheaper search); ``None`` scores every candidate on the full set.")
    speed_batches: int = _option(4, "validation batches whose forward inputs are replayed for timing.")
    timing_repeats: int = _option(15, "timed repetitions per measurement (median reported).")
    tie_tolerance: float = _option(
        0.05, "speed-ups within this fraction of 1 are re-measured, longer and interleaved.")
    max_total_trials: int | None = _option(None, "whole-model trial budget shared by all layer groups.")
    time_budget_s: float | None = _option(None, "stop starting new trials after this many seconds.")
    finetune_epochs: int = _option(0, "epochs of recovery training after the sketches are applied (0: none).")
    calibration_batches: int = _option(
        0, "data-aware initialisation: run the first N batches of the training dataloader through "
        "``training_step`` (no gradients, eval mode, logs discarded) to measure each tuned layer's input "
        'covariance, and build candidates with ``init="data_svd"`` (``params="auto"`` then proposes it), which '
        "keeps the directions the real inputs use. Under DDP all ranks use rank 0's batches. 0 (default): "
        'weight-only ``"svd"`` init.')
    share_accuracy_drop: bool = _option(
        True, "hold each layer group to its share (by stored bytes) of the allowed drop, so the tuned layers meet the "
        "bound together; ``False``: each group may use the whole margin.")
    strategy: Strategy = _option(
        "auto", 'how the allowed drop is spent (``SKAutoTuner(strategy=...)``): ``"allocate"`` weighs every '
        "layer's options (sketch ranks, int8 on CPU) by predicted error and cost and bisects one whole-model plan "
        'with a few validations; ``"search"`` searches each layer group (``n_trials`` each); ``"auto"``: allocate '
        "unless ``search_algorithm`` or ``n_trials`` is given or a selected layer cannot be allocated.")
    trainable: bool = _option(
        False, "keep the tuned model trainable: tune sketches only. ``False`` (default): on CPU the tuned layers may "
        "also be int8 (dynamic quantization), which are inference-only: they hold no trainable parameter, so a model "
        "tuned to int8 everywhere cannot be fine-tuned or resumed. ``True``: no int8 is proposed (configs that ask "
        "for ``quantize=True`` are rejected at ``setup``).")
    plan_path: str | None = _option(
        None, "where to write the applied plan as JSON (default ``<log_dir>/sketch_plan.json``).")
    verbose: bool = _option(
        True, "show tuning progress on rank 0: a progress bar (trials done of the budget, current layer group, best "
        "gain so far) when the trainer's progress bar is enabled and stdout is a terminal, otherwise one line per "
        "trial.")

    def __post_init__(self) -> None:
        self.configs = TuningConfigs.coerce(DEFAULT_CONFIGS if self.configs is None else self.configs)
        self._check()

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> SketchTuneOptions:
        """The options among a public signature's ``locals()``; raises ``ValueError``/``TypeError`` naming a bad one.

        The signatures list every field (checked by the tests), so each is found under its name.
        """
        return cls(**{option.name: arguments[option.name] for option in fields(cls)})

    def _check(self) -> None:
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ValueError(f"monitor must be the name of a logged validation metric, got {self.monitor!r}")
        _choice("mode", self.mode, get_args(Mode))
        _choice("objective", self.objective, get_args(Objective))
        _choice("speed_mode", self.speed_mode, get_args(SpeedMode))
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
        for name in ("verbose", "share_accuracy_drop", "trainable"):
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


def _number(name: str, value: Any, minimum: float | None, optional: bool = True, strict: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number{' or None' if optional else ''}, got {value!r}")
    if minimum is not None and (value <= minimum if strict else value < minimum):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")


def _integer(name: str, value: Any, minimum: int | None, optional: bool = True) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        bound = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{bound}{' or None' if optional else ''}, got {value!r}")



def document_options(target: T) -> T:
    """Append every option's doc to the docstring of ``target`` (a class or function) and return it.

    The entries go at the end of the docstring's ``Args:`` section, which must therefore be its
    last section (it is added if missing); Google style, as jsonargparse and Sphinx read it.
    """
    doc = inspect.cleandoc(target.__doc__ or "")
    if not re.search(r"^Args:$", doc, flags=re.MULTILINE):
        doc += "\n\nArgs:"
    entries = [textwrap.fill(f"{option.name}: {option.metadata['doc']}", width=110, initial_indent="    ",
                             subsequent_indent="        ", break_long_words=False, break_on_hyphens=False)
               for option in fields(SketchTuneOptions)]
    target.__doc__ = doc + "\n" + "\n".join(entries) + "\n"
    return target
