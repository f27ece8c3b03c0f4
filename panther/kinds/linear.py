"""``nn.Linear`` (and ``transformers``' transposed-weight ``Conv1D``) -> a sketch, int8, or both.

One kind, several methods per layer, named by the ``method`` parameter (:data:`METHODS`):

===================  ======================  ================================================
``method``           replacement             what it stores
===================  ======================  ================================================
``"sketch"``         ``SKLinear``            the sketch (``num_terms``, ``low_rank``, ``init``)
``"sketch_int8"``    ``Int8SKLinear``        the sketch's two factors, int8
``"int8"``           ``Int8Linear``          the dense weight, int8 (ignores the sketch's parameters)
``"int8_smooth"``    ``SmoothInt8Linear``    the dense weight int8, its input channels smoothed
                                             (SmoothQuant-style scales from the calibration
                                             covariance: survives activation outliers)
===================  ======================  ================================================

``method`` may be left out: it is then ``"sketch"``, or read from the older form
``low_rank=None`` / ``quantize=True|False`` (``low_rank=k, quantize=True`` is ``"sketch_int8"``,
``low_rank=None, quantize=True`` is ``"int8"``), which :meth:`LinearKind.canonical_params` turns into
the method form, so plans and configs written with it still load. A combination that builds
nothing (``low_rank=None`` without int8, a sketch method with ``low_rank=None``, ``method`` beside
``quantize``) is a ``ValueError`` naming the values, raised when the space is checked (before the
model is touched). A plan entry's ``"type"`` is the class a method builds.

Adding a method is one :data:`METHODS` entry (its class, whether it is built from a rank, whether it
reads the calibration input covariance, and its builder). Cost model:
:func:`panther.nn.linear.linear_is_cheaper` for ranks (int8 factors keep the rank's break-even
against the int8 dense layer); an int8 dense layer stores a quarter of the bytes. ``params="auto"``
proposes every method on a device with an int8 kernel (CPU) when the tuner allocates over the whole
model; a per-group search keeps the sketch space, whose one ordered axis its budgeted rank
bisection needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from panther.kinds import LayerKind, rank_grid, rank_space, register
from panther.nn.dense import linear_dims, linear_types, linear_weight
from panther.nn.linear import SKLinear, linear_is_cheaper
from panther.nn.moments import InputMoment
from panther.nn.rank_curves import rank_error_curve, sketch_rank
from panther.space import Categorical, ParamSpec, Space


def _sketch(dense: nn.Module, params: dict[str, Any], input_cov: InputMoment | None,
            copy_weights: bool) -> nn.Module:
    module = SKLinear.from_dense(dense, **params, **({} if input_cov is None else {"input_cov": input_cov}))
    if not copy_weights:
        module.reset_parameters()
    return module


def _sketch_int8(dense: nn.Module, params: dict[str, Any], input_cov: InputMoment | None,
                 copy_weights: bool) -> nn.Module:
    from panther.nn.quantized import Int8SKLinear

    return Int8SKLinear.from_sketch(_sketch(dense, params, input_cov, copy_weights))


def _int8(dense: nn.Module, params: dict[str, Any], input_cov: InputMoment | None,
          copy_weights: bool) -> nn.Module:
    from panther.nn.quantized import Int8Linear

    module = Int8Linear.from_dense(dense)
    if not copy_weights:
        module.reset_parameters()
    return module


def _int8_smooth(dense: nn.Module, params: dict[str, Any], input_cov: InputMoment | None,
                 copy_weights: bool) -> nn.Module:
    from panther.nn.quantized import SmoothInt8Linear

    module = SmoothInt8Linear.from_dense(dense, input_cov)  # no covariance: the placeholder a state dict fills
    if not copy_weights:
        module.reset_parameters()
    return module


@dataclass(frozen=True)
class LinearMethod:
    """One way to replace a linear layer.

    ``sketched``: built from a rank (reads ``num_terms``, ``low_rank``, ``init``; its covariance use
    follows ``init="data_svd"``); otherwise from the full weight, ignoring those. ``reads_input_cov``:
    always built from the calibration input covariance (e.g. a smoothing derived from it): an
    :data:`~panther.nn.moments.InputMoment`, which for a layer with more inputs than outputs is a
    :class:`~panther.nn.moments.ProjectedMoment` (read ``diag(C)`` with ``channel_power``).
    ``class_name`` names a class exported by :mod:`panther.nn`; give each method a class of its own
    (its plan ``"type"``), so a plan or checkpoint of an installed layer names the method again.
    ``trainable``: the built layer has weights to train (int8 layers are inference-only).
    """

    class_name: str
    sketched: bool
    build: Callable[[nn.Module, dict[str, Any], InputMoment | None, bool], nn.Module]
    reads_input_cov: bool = False
    trainable: bool = False


#: Every method of the linear kind, by the name ``params["method"]`` gives (the first is the default).
METHODS: dict[str, LinearMethod] = {
    "sketch": LinearMethod("SKLinear", sketched=True, build=_sketch, trainable=True),
    "sketch_int8": LinearMethod("Int8SKLinear", sketched=True, build=_sketch_int8),
    "int8": LinearMethod("Int8Linear", sketched=False, build=_int8),
    "int8_smooth": LinearMethod("SmoothInt8Linear", sketched=False, build=_int8_smooth, reads_input_cov=True),
}
#: Parameters naming the method rather than configuring it.
_METHOD_PARAMS = ("method", "quantize")


def method_of(params: Mapping[str, Any]) -> str:
    """The :data:`METHODS` name ``params`` select (``method``, or the older ``low_rank``/``quantize``);
    ``ValueError`` naming the values when they build nothing."""
    method, quantize = params.get("method"), params.get("quantize")
    if method is not None:
        if not isinstance(method, str) or method not in METHODS:
            raise ValueError(f"method={method!r} is not valid (not supported by the linear kind); "
                             f"choose one of {list(METHODS)}")
        if quantize is not None:
            raise ValueError(f"method={method!r} and quantize={quantize!r}: cannot use both (the method names "
                             "the quantization; drop quantize)")
    elif quantize not in (None, False, True):
        raise ValueError(f"quantize must be True or False, got {quantize!r}")
    elif params.get("low_rank", 1) is None:
        if not quantize:
            raise ValueError(f"low_rank=None, quantize={bool(quantize)}: low_rank=None keeps the full weight, which "
                             "only quantize=True changes; without it the layer stays dense (use method='int8', "
                             "or leave the layer out of the tuning configs)")
        method = "int8"
    else:
        method = "sketch_int8" if quantize else "sketch"
    if METHODS[method].sketched and "low_rank" in params and params["low_rank"] is None:
        full_weight = [name for name, m in METHODS.items() if not m.sketched]
        raise ValueError(f"method={method!r}, low_rank=None: the {METHODS[method].class_name} sketch needs a rank "
                         f"(low_rank=None is only valid with the full-weight methods {full_weight})")
    return method


class LinearKind(LayerKind):
    name = "SKLinear"
    data_aware = True
    size_params = ("low_rank", "num_terms")

    def dense_types(self) -> tuple[type, ...]:
        return linear_types()

    def replacement(self) -> type:
        return SKLinear

    def replacements(self) -> tuple[type, ...]:
        import panther.nn  # the classes are exported there, loaded on first use

        return tuple(getattr(panther.nn, name) for name in dict.fromkeys(m.class_name for m in METHODS.values()))

    def build(self, dense: nn.Module, params: Mapping[str, Any], copy_weights: bool = True, *,
              input_cov: InputMoment | None = None) -> nn.Module:
        method = METHODS[method_of(params)]
        own = {k: v for k, v in params.items() if k not in _METHOD_PARAMS} if method.sketched else {}
        return method.build(dense, own, input_cov if self.uses_input_cov(params) else None, copy_weights)

    def uses_input_cov(self, params: Mapping[str, Any]) -> bool:
        method = METHODS[method_of(params)]
        return method.reads_input_cov or (method.sketched and params.get("init") == "data_svd")

    def canonical_params(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The method form: ``"sketch"`` keeps its parameters alone (today's plans), other sketches add
        ``method``, and a full-weight method is ``{"method": name}`` (it ignores the sketch's)."""
        method = method_of(params)
        if not METHODS[method].sketched:
            return {"method": method}
        own = {k: v for k, v in params.items() if k not in _METHOD_PARAMS}
        return own if method == "sketch" else {"method": method, **own}

    def plan_type(self, params: Mapping[str, Any]) -> str:
        return METHODS[method_of(params)].class_name

    def plan_params(self, module: nn.Module) -> dict[str, Any]:
        return self.canonical_params(super().plan_params(module))

    def plan_params_from_state(self, hyperparameters: Mapping[str, Any],
                               class_name: str | None = None) -> dict[str, Any]:
        return self.canonical_params(super().plan_params_from_state(hyperparameters, class_name))

    def parameter_names(self) -> set[str] | None:
        names = super().parameter_names()
        return None if names is None else names | set(_METHOD_PARAMS)

    def check_space(self, space: Space, calibrated: bool) -> None:
        """Every combination of the values that pick the method must build something."""
        for params in _method_combinations(space):
            method_of(params)
            if not calibrated and self.uses_input_cov(params):
                raise ValueError(f"{', '.join(f'{k}={v!r}' for k, v in params.items())} needs the layer's input "
                                 "covariance: pass calibration_data (batches of real inputs) to SKAutoTuner")

    def inference_only_in(self, space: Space) -> bool:
        return any(not METHODS[method_of(params)].trainable for params in _method_combinations(space))

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        try:
            method = METHODS[method_of(params)]
        except ValueError:  # e.g. low_rank=None without int8: the dense layer itself
            return False
        if not method.sketched:
            return True
        return linear_is_cheaper(*linear_dims(dense), params.get("num_terms", 1), params["low_rank"])

    def shape_key(self, dense: nn.Module) -> Hashable:
        # nn.Linear and Conv1D of one shape compute the same kind of product: one space
        return ("Linear", *linear_dims(dense))

    def predicted_error(self, dense: nn.Module, params: Mapping[str, Any],
                        input_cov: InputMoment | None) -> float | None:
        """A rank's error from the layer's (whitened) spectrum: exact for ``svd``/``data_svd`` sketches."""
        init, low_rank = params.get("init", "sketch"), params.get("low_rank")
        if method_of(params) != "sketch" or low_rank is None or init not in ("svd", "data_svd"):
            return None
        cov = input_cov if init == "data_svd" else None
        if init == "data_svd" and cov is None:
            return None
        curve = rank_error_curve(linear_weight(dense), cov)
        return float(curve[min(sketch_rank(params.get("num_terms", 1), low_rank), curve.numel() - 1)])

    def auto_space(self, dense: nn.Module, copy_weights: bool, data_aware: bool,
                   methods: bool = False) -> Space | None:
        """The cheaper ranks; with ``methods`` on a device with an int8 kernel, every method as well.

        Int8 needs the trained weights (``copy_weights``); the allocation then weighs the sketch,
        the sketch with int8 factors and the int8 dense weight per layer, and with calibration data
        (``data_aware``) the smoothed int8 weight too.
        """
        from panther.nn.int8 import int8_available

        ranks = rank_grid(lambda k: self.is_cheaper(dense, {"low_rank": k}), min(linear_dims(dense)))
        space = rank_space(ranks, copy_weights, data_aware)
        if not (methods and copy_weights and int8_available(linear_weight(dense).device)):
            return space
        # smoothing scales come from the calibration statistics: offered only with calibration data
        offered = [m for m, method in METHODS.items() if data_aware or not method.reads_input_cov]
        if space is None:
            return {"method": Categorical([m for m in offered if not METHODS[m].sketched])}
        return {"method": Categorical(offered), **space}


def _method_combinations(space: Space) -> list[dict[str, Any]]:
    """Every combination of the values in ``space`` that can differ in the method they pick."""
    axes = {name: _representatives(space[name], keep_none_and_one=name == "low_rank")
            for name in ("method", "quantize", "low_rank", "init") if name in space}
    return [dict(zip(axes, combo, strict=True)) for combo in itertools.product(*axes.values())]


def _representatives(spec: ParamSpec, keep_none_and_one: bool) -> list[Any]:
    """The values of ``spec`` that can differ in which method they pick (a range's first value stands
    for the others; for a rank, ``None`` and one rank do)."""
    values = spec.values()
    if values is None:
        return [spec.default()]
    if keep_none_and_one:
        ranks = [v for v in values if v is not None]
        return ([None] if None in values else []) + ranks[:1]
    return values


register(LinearKind())
