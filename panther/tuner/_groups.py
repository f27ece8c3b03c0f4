"""Turn ``TuningConfigs`` into concrete tuning groups, validating everything before tuning starts.

A *group* is what one search runs over: a single layer (``separate=True``) or several layers
sharing their parameters (``separate=False``). Its name is deterministic (the layer name, or the
layer names joined by ``+``) so a study in persistent storage is found again on resume.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from panther.kinds import LayerKind, kind_of
from panther.space import Space, enumerate_space
from panther.tuner._auto import ParamsResolver
from panther.tuner._layers import attention_internals, tied_layers, unsupported_reason
from panther.tuner.configs import LayerConfig, TuningConfigs
from panther.tuner.selectors import LayerNameResolver

logger = logging.getLogger(__name__)


@dataclass
class TuningGroup:
    """Layers searched together over one space, each with the layer kind that builds its candidates."""

    name: str
    layers: list[str]
    space: Space
    copy_weights: bool
    config_index: int
    kinds: dict[str, LayerKind]

    def ordered_axis(self) -> tuple[str, list[Any]] | None:
        """The size every layer's kind lets a budget bisect in this space (``None``: none they agree on)."""
        axes = [kind.ordered_axis(self.space) for kind in self.kinds.values()]
        return axes[0] if axes and all(axis == axes[0] for axis in axes) else None


def _explicitly_named(selector: Any, name: str) -> bool:
    if isinstance(selector, str):
        return selector == name
    if isinstance(selector, (list, tuple)):
        return name in selector
    return False


def _group_name(names: list[str]) -> str:
    return "+".join(names)


class GroupBuilder:
    """Resolves configs against a model; ``dense_of`` gives the dense layer the tuner remembers.

    After :meth:`build`, ``skipped`` maps each selected layer that will not be tuned to the reason
    (layers that merely matched a broad selector without being sketchable are left out of it).
    """

    def __init__(self, model: nn.Module, resolver: LayerNameResolver, dense_of: Callable[[str], nn.Module],
                 accepts_param_specs: bool, tune_tied: bool, data_aware: bool = False,
                 methods: bool = False) -> None:
        self.model = model
        self.resolver = resolver
        self.dense_of = dense_of
        self.accepts_param_specs = accepts_param_specs
        self.tune_tied = tune_tied
        self.data_aware = data_aware
        self.methods = methods  # "auto" may offer several methods per layer (whole-model allocation)
        self.skipped: dict[str, str] = {}
        self._kinds: dict[str, LayerKind] = {}  # each tunable layer's kind, looked up once

    def build(self, configs: TuningConfigs) -> tuple[list[TuningGroup], TuningConfigs]:
        """Groups to tune and the resolved configs (concrete names, concrete parameter specs)."""
        groups: list[TuningGroup] = []
        resolved: list[LayerConfig] = []
        owner: dict[str, int] = {}
        inside_attention = attention_internals(self.model)
        tied = tied_layers(self.model)
        for index, config in enumerate(configs):
            names = self._tunable(index, config, inside_attention, tied)
            for name in names:
                if name in owner:
                    raise ValueError(f"layer {name!r} is selected by configs[{owner[name]}] and configs[{index}]; "
                                     "each layer may be tuned by one config only")
                owner[name] = index
            if config.is_auto:
                new_groups, new_configs = self._auto_groups(index, config, names)
            else:
                self._check_space(index, config, names)
                space = dict(config.params)  # type: ignore[arg-type]
                new_groups = ([self._group(n, [n], space, config.copy_weights, index) for n in names] if config.separate
                              else [self._group(_group_name(names), names, space, config.copy_weights, index)])
                new_configs = [LayerConfig(names, space, config.separate, config.copy_weights)]
            groups += new_groups
            resolved += new_configs
        return groups, TuningConfigs(resolved)

    def _group(self, name: str, layers: list[str], space: Space, copy_weights: bool, index: int) -> TuningGroup:
        return TuningGroup(name, layers, space, copy_weights, index, {n: self._kinds[n] for n in layers})

    def _tunable(self, index: int, config: LayerConfig, inside_attention: dict[int, int],
                 tied: dict[int, list[str]]) -> list[str]:
        selector = config.layer_names
        names = self.resolver.resolve(selector)
        if not names:
            raise ValueError(f"configs[{index}]: layer selector {selector!r} matches no layer of the model "
                             "(no layer names match it)")
        selected = {id(self.dense_of(name)) for name in names}
        kept, reasons = [], {}
        for name in names:
            module = self.dense_of(name)
            if id(module) in inside_attention:
                reasons[name] = "it is part of an nn.MultiheadAttention, which reads its weight directly"
                if inside_attention[id(module)] not in selected:  # else the block itself is tuned: no news
                    warnings.warn(f"skipping {name!r}: {reasons[name]}; tune the attention block instead",
                                  stacklevel=4)
            elif (kind := kind_of(module)) is None:
                reasons[name] = unsupported_reason(module)
                if _explicitly_named(selector, name) or "overrides" in reasons[name]:
                    warnings.warn(f"skipping {name!r}: {reasons[name]}", stacklevel=4)
                else:
                    logger.debug("skipping %s: %s", name, reasons[name])
                    continue  # a broad selector matching a container or norm layer is no news
            elif id(module) in tied and not self.tune_tied:
                reasons[name] = f"its parameters are shared with {sorted(set(tied[id(module)]))}"
                warnings.warn(f"skipping {name!r}: {reasons[name]}; pass tune_tied=True to sketch it anyway "
                              "(this unties the weights)", stacklevel=4)
            else:
                kept.append(name)
                self._kinds[name] = kind
                continue
            self.skipped[name] = reasons[name]
        if not kept:
            detail = "; ".join(f"{n}: {r}" for n, r in list(reasons.items())[:5])
            raise ValueError(f"configs[{index}]: layer selector {selector!r} matches no layer that can be sketched "
                             f"({detail})")
        return kept

    def _check_space(self, index: int, config: LayerConfig, names: list[str]) -> None:
        space: Space = config.params  # type: ignore[assignment]
        for name in names:
            kind = self._kinds[name]
            accepted = kind.parameter_names()
            unknown = set(space) - accepted if accepted is not None else set()
            if unknown:
                raise ValueError(f"configs[{index}]: {kind.name} (for {name!r}) has no parameter "
                                 f"{sorted(unknown)}; it accepts {sorted(accepted)}")
            try:
                kind.check_space(space, calibrated=self.data_aware)
            except ValueError as exc:
                raise ValueError(f"configs[{index}]: {name!r} ({kind.name}): {exc}") from None
        if not self.accepts_param_specs:
            try:
                enumerate_space(space)  # the form such a search gets (see param_space_for)
            except ValueError as exc:
                raise ValueError(f"configs[{index}]: {exc}") from None

    def _auto_groups(self, index: int, config: LayerConfig,
                     names: list[str]) -> tuple[list[TuningGroup], list[LayerConfig]]:
        params_resolver = ParamsResolver(self.resolver)
        spaces = params_resolver.resolve_modules({n: self.dense_of(n) for n in names}, config.copy_weights,
                                                 self.data_aware, self.methods,
                                                 kinds={n: self._kinds[n] for n in names})
        self.skipped.update(params_resolver.skipped)
        if not spaces:
            warnings.warn(f"configs[{index}]: params='auto' found nothing worth sketching in {names}", stacklevel=4)
            return [], []
        if config.separate:
            groups = [self._group(n, [n], dict(space), config.copy_weights, index) for n, space in spaces.items()]
            configs = [LayerConfig(group_names, dict(space), True, config.copy_weights)
                       for group_names, space in params_resolver.groups(spaces)]
            return groups, configs
        joint = self._kinds[next(iter(spaces))].joint_space(list(spaces.values()))
        if joint is None:
            warnings.warn(f"configs[{index}]: params='auto' found no rank cheaper for all of {list(spaces)} "
                          "together; tune them separately", stacklevel=4)
            return [], []
        members = list(spaces)
        return ([self._group(_group_name(members), members, joint, config.copy_weights, index)],
                [LayerConfig(members, joint, False, config.copy_weights)])
