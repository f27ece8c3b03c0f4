"""The contract every sketched layer follows, and the registry used to rebuild them.

A sketched layer stores its constructor hyperparameters in ``get_extra_state`` so that a model
holding it can be rebuilt from a plain ``state_dict`` (see :mod:`panther.nn.rebuild`).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Dict, Type

import torch
from torch import nn

#: Sketched layer classes by name, filled by ``SketchedModule.__init_subclass__``.
SKETCHED_LAYERS: Dict[str, Type["SketchedModule"]] = {}

#: ``init`` values accepted by the layers built from a dense weight.
INIT_METHODS = ("sketch", "svd", "data_svd")


class SketchedModule(nn.Module):
    """Base class of the sketched layers.

    Subclasses set ``dense_type`` (the layer they replace) and implement ``hyperparameters``,
    ``from_dense`` and ``to_dense``.
    """

    dense_type: ClassVar[Type[nn.Module]]
    #: Hyperparameters that do not change the layer's tensors, so a checkpoint may differ in them.
    runtime_hyperparameters: ClassVar[frozenset] = frozenset({"init"})

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SKETCHED_LAYERS[cls.__name__] = cls

    # -- self-description ------------------------------------------------------------------
    def hyperparameters(self) -> Dict[str, Any]:
        """Constructor keyword arguments that rebuild a layer of identical structure."""
        raise NotImplementedError

    def sketch_params(self) -> Dict[str, Any]:
        """The hyperparameters ``from_dense`` takes (see :meth:`sketch_params_of`)."""
        return self.sketch_params_of(self.hyperparameters())

    @classmethod
    def sketch_params_of(cls, hyperparameters: Dict[str, Any]) -> Dict[str, Any]:
        """Drop what the dense layer's constructor already fixes, keeping the sketch's own knobs."""
        dense_args = inspect.signature(cls.dense_type.__init__).parameters
        return {k: v for k, v in hyperparameters.items() if k not in dense_args}

    def get_extra_state(self) -> Dict[str, Any]:
        return {"class": type(self).__name__, "hyperparameters": self.hyperparameters()}

    def set_extra_state(self, state: Any) -> None:
        if not isinstance(state, dict) or "hyperparameters" not in state:
            raise ValueError(f"{type(self).__name__}: malformed extra state {state!r}")
        mine, theirs = self.hyperparameters(), state["hyperparameters"]
        structural = {k: v for k, v in theirs.items() if k in mine and k not in self.runtime_hyperparameters}
        mismatched = {k: (mine[k], v) for k, v in structural.items() if mine[k] != v}
        if state.get("class") != type(self).__name__ or mismatched:
            raise ValueError(
                f"checkpoint holds {state.get('class')}({theirs}) but this layer is "
                f"{type(self).__name__}({mine}); mismatched: {mismatched}. Rebuild the model with "
                "panther.nn.rebuild_sketched_layers before loading."
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # State dicts written by the original Panther carry no extra state; accept them.
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, **params: Any) -> "SketchedModule":
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The dense layer this sketch computes (same outputs up to rounding)."""
        raise NotImplementedError

    def num_parameters(self) -> int:
        """Learnable parameter count (the fixed sketch buffers are not counted)."""
        return sum(p.numel() for p in self.parameters())


def check_positive_int(name: str, value: Any) -> int:
    """Validate a size-like constructor argument with a message naming it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_init(init: str) -> str:
    if init not in INIT_METHODS:
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r}")
    return init


def factory_kwargs(layer: nn.Module) -> Dict[str, Any]:
    """``device``/``dtype`` of a dense layer's weight, for building its sketched twin alongside it."""
    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    return {"device": weight.device, "dtype": weight.dtype}
