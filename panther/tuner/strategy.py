"""What a tuning run tunes and how: the one decision every entry point asks for.

:func:`decide_strategy` resolves the configs against the model (selectors → layers, ``"auto"`` →
spaces, skipped layers and why) and settles ``strategy="auto"`` into ``"allocate"`` or
``"search"``, without evaluating anything. ``SKAutoTuner`` builds its groups from it, and the
Lightning callback asks it at ``setup`` whether anything can be tuned, so the two never disagree.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from panther.tuner._allocate import allocatable_reason
from panther.tuner._groups import GroupBuilder, TuningGroup
from panther.tuner.configs import TuningConfigs
from panther.tuner.search.optuna_search import OptunaSearch
from panther.tuner.selectors import LayerNameResolver

__all__ = ["AllocationUnavailableError", "TuningDecision", "decide_strategy", "names_search_algorithm"]


class AllocationUnavailableError(ValueError):
    """``strategy="allocate"`` was asked for groups it cannot allocate (the message says which and why)."""


@dataclass
class TuningDecision:
    """The resolved strategy and what it tunes (see :func:`decide_strategy`)."""

    strategy: Literal["allocate", "search"]
    groups: list[TuningGroup]
    #: The configs as resolved: concrete layer names and parameter specs (``"auto"`` expanded).
    configs: TuningConfigs
    #: Selected layers left dense, with the reason.
    skipped: dict[str, str]
    #: With ``strategy="auto"``: why it searches although it could have allocated (a group it cannot allocate).
    why_search: str | None = None

    @property
    def allocates(self) -> bool:
        return self.strategy == "allocate"

    @property
    def nothing_to_tune(self) -> str | None:
        """Why no layer will be tuned, or ``None`` when some will."""
        if self.groups:
            return None
        skipped = "; ".join(f"{name}: {why}" for name, why in list(self.skipped.items())[:5])
        return "the configs select no layer worth sketching" + (f" ({skipped})" if skipped else "")


def names_search_algorithm(search: Any) -> bool:
    """Whether a given ``search_algorithm`` names how to search, so ``strategy="auto"`` keeps the per-group
    search: any search but a plain :class:`OptunaSearch` (a user's subclass or own algorithm), or an
    ``OptunaSearch`` with an explicit ``sampler`` (Random, Grid, CMA-ES, ...). A plain ``OptunaSearch``
    only says where and how long (study, storage, ``n_trials``), which the allocation serves as well."""
    return type(search) is not OptunaSearch or search.sampler_given


def decide_strategy(
    model: nn.Module,
    configs: Any,
    *,
    strategy: Literal["auto", "allocate", "search"] = "auto",
    thresholded: bool,
    search_named: bool,
    calibrated: bool = False,
    methods: bool = True,
    tune_tied: bool = False,
    accepts_param_specs: bool = True,
    resolver: LayerNameResolver | None = None,
    dense_of: Callable[[str], nn.Module] | None = None,
    stacklevel: int = 2,
) -> TuningDecision:
    """Resolve ``configs`` on ``model`` and decide between whole-model allocation and per-group search.

    ``"auto"`` allocates when there is an accuracy threshold (``thresholded``), the caller named no
    way to search (``search_named``, see :func:`names_search_algorithm`) and every group can be
    allocated; it searches otherwise.
    ``"allocate"`` raises :class:`AllocationUnavailableError` naming a group it cannot allocate.
    When allocating, ``"auto"`` spaces may offer a kind's other methods (int8 on CPU) beside the
    sketch; ``methods=False`` keeps them to sketches. ``calibrated``: calibration data will be
    given (data-aware init, layers measured on it). ``resolver``/``dense_of`` let a tuner that has
    sketches installed resolve against its remembered dense layers. The resolution's warnings
    (layers skipped, and why) are shown ``stacklevel`` frames up, as ``warnings.warn`` counts.
    Raises ``ValueError`` for configs that select nothing of the model.
    """
    configs = TuningConfigs.coerce(configs)
    resolver = resolver if resolver is not None else LayerNameResolver(model)
    dense_of = dense_of if dense_of is not None else resolver.module
    may_allocate = strategy == "allocate" or (strategy == "auto" and thresholded and not search_named)

    def build(several_methods: bool) -> tuple[list[TuningGroup], TuningConfigs, GroupBuilder]:
        builder = GroupBuilder(model, resolver, dense_of, accepts_param_specs, tune_tied,
                               data_aware=calibrated, methods=several_methods)
        groups, resolved = builder.build(configs)
        return groups, resolved, builder

    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:  # shown below, unless built again
            warnings.simplefilter("always")
            groups, resolved, builder = build(may_allocate and methods)
    except Exception:
        _reemit(caught, stacklevel)
        raise
    reasons = [reason for group in groups if (reason := allocatable_reason(
        group, group.kinds, {n: dense_of(n) for n in group.layers}, calibrated)) is not None]
    if strategy == "allocate" and reasons:
        raise AllocationUnavailableError(f"strategy='allocate' cannot allocate {reasons[0]}; use strategy='search'")
    if may_allocate and reasons:  # "auto": search instead, over the spaces a search gets
        groups, resolved, builder = build(False)
    else:
        _reemit(caught, stacklevel)
    allocates = may_allocate and not reasons
    return TuningDecision("allocate" if allocates else "search", groups, resolved, dict(builder.skipped),
                          reasons[0] if may_allocate and reasons else None)


def _reemit(caught: list[warnings.WarningMessage], stacklevel: int) -> None:
    """Show warnings recorded while resolving configs, ``stacklevel`` frames above :func:`decide_strategy`."""
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=stacklevel + 1)
