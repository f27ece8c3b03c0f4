"""One registry of layer kinds: what replaces each dense layer, at what cost, searched over what.

A *kind* (:class:`LayerKind`) knows its dense type(s), its replacement classes, how to build a
replacement from a dense layer (and whether that reads the layer's calibration input covariance),
its cost model (``is_cheaper``), its ``params="auto"`` space, which of its parameters a budget may
bisect (``size_params``), which spaces it cannot build (``check_space``), how jointly tuned layers
share one space (``joint_space``), and how a plan entry or a state dict names it. The tuner,
``"auto"``, :mod:`panther.plans` and the plan JSON all read this registry and hold no parameter name
of their own, so adding a kind is one file that subclasses :class:`LayerKind` and calls
:func:`register`; kinds need not be sketches (an int8 kind fits the same contract).

Built-in kinds (:mod:`.linear`, :mod:`.conv2d`, :mod:`.attention`) are imported on first lookup,
so ``import panther`` stays cheap.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from torch import nn

from panther.space import Categorical, Space

__all__ = ["LayerKind", "Space", "all_kinds", "intersect_spaces", "kind_named", "kind_of", "kind_of_class_name",
           "kind_of_replacement", "rank_grid", "rank_space", "register", "unregister"]

#: Built-in kinds, most specific dense type first (an attention block holds Linear layers).
_BUILTIN_MODULES = ("panther.kinds.attention", "panther.kinds.conv2d", "panther.kinds.linear")
_REGISTRY: dict[str, LayerKind] = {}
_loaded = False


class LayerKind:
    """Base class of a layer kind; subclasses set :attr:`name` and implement the hooks below.

    The defaults cover a replacement class with the ``SketchedModule`` contract (``from_dense``,
    ``reset_parameters``, ``get_extra_state``).
    """

    #: The plan's ``"type"`` and the replacement class's name (e.g. ``"SKLinear"``).
    name: str = ""
    #: Whether some params read the layer's calibration input covariance (see :meth:`uses_input_cov`).
    data_aware: bool = False
    #: Parameters whose larger values cost more and (for a trained layer) approximate it better:
    #: the axes a budgeted search may bisect along (see :meth:`ordered_axis`).
    size_params: tuple[str, ...] = ()
    #: Whether a replacement computes ``f(x)`` from the dense layer's one input alone, so whole-model
    #: allocation can measure it on the inputs the dense layer sees (attention takes several).
    profiles_alone: bool = True

    # -- what it replaces ---------------------------------------------------------------------
    def dense_types(self) -> tuple[type, ...]:
        """The dense classes this kind replaces."""
        raise NotImplementedError

    def replacement(self) -> type:
        """The class of the replacement module."""
        raise NotImplementedError

    def replacements(self) -> tuple[type, ...]:
        """Every class :meth:`build` may return: :meth:`replacement` first, then any a parameter picks
        (``SKLinear``'s ``quantize=True`` builds int8 modules), so plans and checkpoints know them all."""
        return (self.replacement(),)

    def dense_type_of(self, layer: nn.Module) -> type | None:
        return next((t for t in self.dense_types() if isinstance(layer, t)), None)

    def accepts(self, layer: nn.Module) -> bool:
        """``layer`` is one of :meth:`dense_types` and keeps its ``forward`` (a subclass overriding it
        does something a replacement built from its weights would silently drop)."""
        dense_type = self.dense_type_of(layer)
        return dense_type is not None and type(layer).forward is dense_type.forward

    # -- building -------------------------------------------------------------------------------
    def build(self, dense: nn.Module, params: Mapping[str, Any], copy_weights: bool = True, *,
              input_cov: Any | None = None) -> nn.Module:
        """The replacement of ``dense``; without ``copy_weights`` it is freshly initialised instead.

        ``input_cov`` is the layer's calibration input second moment, passed on where
        :meth:`uses_input_cov` says the params read it.
        """
        kwargs = dict(params)
        if self.uses_input_cov(params):
            kwargs["input_cov"] = input_cov
        module = self.replacement().from_dense(dense, **kwargs)
        if not copy_weights:
            module.reset_parameters()
        return module

    def uses_input_cov(self, params: Mapping[str, Any]) -> bool:
        """Whether :meth:`build` with ``params`` reads the input covariance (default: a data-aware
        sketch's ``init="data_svd"``)."""
        return self.data_aware and params.get("init") == "data_svd"

    def without_input_cov(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The params to build when no covariance is at hand (a plan re-applied without calibration
        data, whose trained weights are loaded next): ``data_svd`` becomes ``svd``."""
        return {**params, "init": "svd"} if self.uses_input_cov(params) else dict(params)

    def parameter_names(self) -> set[str] | None:
        """Keyword arguments :meth:`build` accepts in ``params`` (``None``: any)."""
        parameters = list(inspect.signature(self.replacement().from_dense).parameters.values())[1:]
        if any(p.kind is p.VAR_KEYWORD for p in parameters):
            return None
        return {p.name for p in parameters}

    def canonical_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` without entries that do not change what :meth:`build` returns (one key per module)."""
        return dict(params)

    def plan_type(self, params: Mapping[str, Any]) -> str:
        """The plan entry's ``"type"`` for a module built with ``params``: the class it builds, so
        the plan names the method (default: the kind's name, which is its replacement's)."""
        return self.name

    def plan_params(self, module: nn.Module) -> dict[str, Any]:
        """The plan's ``"params"`` for an installed replacement (what :meth:`build` needs again)."""
        return module.sketch_params()  # type: ignore[operator]

    def plan_params_from_state(self, hyperparameters: Mapping[str, Any],
                               class_name: str | None = None) -> dict[str, Any]:
        """The plan's ``"params"`` recovered from the ``_extra_state`` a state dict carries.

        ``class_name`` is that state's ``"class"``: which of :meth:`replacements` wrote it.
        """
        cls = next((c for c in self.replacements() if c.__name__ == class_name), self.replacement())
        return cls.sketch_params_of(dict(hyperparameters))

    # -- cost and search ----------------------------------------------------------------------
    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        """Whether the replacement built with ``params`` costs less than ``dense`` (weights and FLOPs)."""
        raise NotImplementedError

    def shape_key(self, dense: nn.Module) -> Hashable:
        """Layers with equal keys share one ``"auto"`` space."""
        raise NotImplementedError

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool,
                   methods: bool = False) -> Space | None:
        """The ``params="auto"`` space: only cheaper configurations; ``None`` when "auto" cannot help.

        ``methods``: the tuner allocates over the whole model, so the space may offer several
        methods per layer (e.g. int8 beside the sketch); a per-group search gets one ordered axis.
        """
        return None

    def check_space(self, space: Space, calibrated: bool) -> None:
        """``ValueError`` (saying which values) when some configuration of ``space`` cannot be built,
        checked before the model is touched; ``calibrated``: calibration data will give covariances."""
        if not calibrated and self.data_aware:
            needing = [f"{name}={value!r}" for name, spec in space.items() for value in (spec.values() or [])
                       if self.uses_input_cov({name: value})]
            if needing:
                raise ValueError(f"{', '.join(needing)} needs the layer's input covariance: pass calibration_data "
                                 "(batches of real inputs) to SKAutoTuner")

    def inference_only_in(self, space: Space) -> bool:
        """Whether some configuration of ``space`` builds a layer with nothing left to train (e.g. int8),
        which a caller that must keep the model trainable refuses before tuning."""
        return False

    def joint_space(self, spaces: Sequence[Space]) -> Space | None:
        """One space for layers tuned jointly (each with its own "auto" space); ``None`` if none fits all."""
        return intersect_spaces(spaces)

    def ordered_axis(self, space: Space) -> tuple[str, list[Any]] | None:
        """``(name, ascending values)`` when the only open choice of ``space`` is one of
        :attr:`size_params`: a budget may then bisect it for the smallest value that is accurate enough."""
        open_specs = [(name, spec.values()) for name, spec in space.items()
                      if spec.values() is None or len(spec.values()) > 1]  # type: ignore[arg-type]
        if len(open_specs) != 1:
            return None
        name, values = open_specs[0]
        if name not in self.size_params or values is None:
            return None
        try:
            ascending = values == sorted(values)
        except TypeError:  # values that do not compare (mixed types)
            return None
        return (name, values) if ascending else None

    def predicted_error(self, dense: nn.Module, params: Mapping[str, Any],
                        input_cov: Any | None) -> float | None:
        """Relative output error of the replacement built with ``params``, known without building it.

        ``input_cov`` is the layer's calibration input second moment (``None`` without calibration
        data). ``None`` (the default) means the error must be measured; the allocation then runs the
        built replacement on the layer's inputs.
        """
        return None


def register(kind: LayerKind) -> LayerKind:
    """Add ``kind`` to the registry (later registrations of a name replace earlier ones)."""
    if not kind.name:
        raise ValueError(f"{type(kind).__name__} needs a name")
    _load_builtins()  # built-ins first: they define the matching order
    _REGISTRY[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def all_kinds() -> list[LayerKind]:
    """Registered kinds, the built-in ones in their matching order first."""
    _load_builtins()
    return list(_REGISTRY.values())


def kind_of(layer: nn.Module) -> LayerKind | None:
    """The kind replacing ``layer``, or ``None`` (see :meth:`LayerKind.accepts`)."""
    for kind in all_kinds():
        if kind.dense_type_of(layer) is not None:
            return kind if kind.accepts(layer) else None
    return None


def kind_named(name: str) -> LayerKind:
    """The kind of a plan's ``"type"`` (a kind's name, or the name of a class it builds, e.g.
    ``"Int8Linear"``); ``ValueError`` listing the known ones otherwise."""
    _load_builtins()
    kind = _REGISTRY.get(name) or kind_of_class_name(name)
    if kind is None:
        raise ValueError(f"unknown layer type {name!r}; known: {sorted(_REGISTRY)}")
    return kind


def kind_of_replacement(module: nn.Module) -> LayerKind | None:
    """The kind whose replacement ``module`` is (to describe an installed layer in a plan)."""
    return next((k for k in all_kinds() if type(module) in k.replacements()), None)


def kind_of_class_name(class_name: Any) -> LayerKind | None:
    """The kind one of whose :meth:`~LayerKind.replacements` is called ``class_name`` (a state dict's
    ``_extra_state`` names the class, not the kind)."""
    return next((k for k in all_kinds() if any(c.__name__ == class_name for c in k.replacements())), None)


def intersect_spaces(spaces: Sequence[Space]) -> Space | None:
    """The values every space offers, per parameter, in the first space's order (``None``: some
    parameter has no value in common, or a continuous one differs)."""
    if not spaces:
        return None
    joint: Space = {}
    for name, spec in spaces[0].items():
        values = spec.values()
        if values is None:
            if any(other.get(name) != spec for other in spaces[1:]):
                return None
            joint[name] = spec
            continue
        shared = [v for v in values if all(name in other and other[name].contains(v) for other in spaces[1:])]
        if not shared:
            return None
        joint[name] = Categorical(shared)
    return joint


def rank_grid(is_cheaper: Any, upper: int) -> list[int]:
    """Ascending ``1, 2, 3, 4, 6, 8, 12, 16, ...`` up to ``upper``, keeping ranks that pass the check."""
    grid, power = [], 1
    while power <= upper:
        for rank in (power, power + power // 2):
            if rank <= upper and rank not in grid and is_cheaper(rank):
                grid.append(rank)
        power *= 2
    return grid


def rank_space(ranks: list[int], copy_weights: bool, data_aware: bool) -> Space | None:
    """The "auto" space of a low-rank kind: one term, the cheaper ranks, the init that fits."""
    if not ranks:
        return None
    init = ("data_svd" if data_aware else "svd") if copy_weights else "sketch"
    return {"num_terms": Categorical([1]), "low_rank": Categorical(ranks), "init": Categorical([init])}


def _load_builtins() -> None:
    """Import the built-in kinds once (each module registers its kind)."""
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _BUILTIN_MODULES:
            importlib.import_module(module)
