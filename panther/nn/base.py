"""The contract every sketched layer follows, and the registry used to rebuild them.

A sketched layer stores its constructor hyperparameters in ``get_extra_state`` so that a model
holding it can be rebuilt from a plain ``state_dict`` (see :mod:`panther.plans`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, NoReturn, TypeVar

import torch
from torch import nn

#: ``init`` values accepted by the layers built from a dense weight.
INIT_METHODS = ("sketch", "svd", "data_svd")


class SketchedWeight:
    """What a sketched layer answers for ``.weight``: the dense weight's metadata, never its values.

    Parents of a dense layer often read ``child.weight`` directly. Some only read metadata
    (Hugging Face T5 casts its input to ``self.wo.weight.dtype``); those keep working. Others pass
    the weight to a fused dense kernel (torch's ``TransformerEncoderLayer`` inference fast path reads
    ``linear1.weight``): that would bypass the sketch, so this object defines
    ``__torch_function__``, which torch's fast paths treat as "not a plain tensor" and answer by
    taking their slow, module-by-module path, where the sketch runs. Any attempt to compute with it
    raises a ``TypeError`` that names the layer, so a parent that multiplies by its child's weight
    fails loudly instead of being silently wrong.
    """

    __slots__ = ("shape", "dtype", "device", "requires_grad", "_owner")

    def __init__(self, owner: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
                 requires_grad: bool) -> None:
        self._owner = owner
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = device
        self.requires_grad = requires_grad

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def dim(self) -> int:
        return len(self.shape)

    def size(self, dim: int | None = None) -> Any:
        return self.shape if dim is None else self.shape[dim]

    def __getattr__(self, name: str) -> NoReturn:
        raise AttributeError(f"{self._owner}.weight is sketched: only shape, dtype, device and requires_grad are "
                             f"available (not {name!r}); use effective_weight() for the dense matrix")

    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> NoReturn:
        owners = sorted({a._owner for a in (*args, *(kwargs or {}).values()) if isinstance(a, SketchedWeight)})
        raise TypeError(f"{getattr(func, '__name__', func)} was called with the weight of the sketched layer "
                        f"{', '.join(owners)}: its parent computes with the child's dense weight directly, which "
                        "a sketch does not have. Keep this layer dense (exclude it from the tuning configs).")

    def __repr__(self) -> str:
        return f"SketchedWeight(owner={self._owner}, shape={tuple(self.shape)}, dtype={self.dtype})"


V = TypeVar("V")


class DerivedCache:
    """A value computed from some tensors (packed factors), reused while they are unchanged.

    "Unchanged" means the same storages (``data_ptr``) at the same version counters: in-place
    updates (optimizer steps, ``load_state_dict``) bump the version, moves and reassignments change
    the storage. The entry holds detached aliases of the sources, so a freed storage's address
    cannot be reused to fool the check. Tensors made under ``torch.inference_mode`` have no version
    counter: then nothing is cached. A cache is never pickled or copied with its module.
    """

    def __init__(self) -> None:
        self._entry: tuple[tuple[torch.Tensor, ...], tuple[int, ...], Any] | None = None

    def get(self, sources: Sequence[torch.Tensor], build: Callable[[], V]) -> V:
        try:
            versions = tuple(t._version for t in sources)
        except RuntimeError:  # inference-mode tensors: no version counter, so no safe cache
            return build()
        entry = self._entry
        if entry is not None and entry[1] == versions and all(
                t.data_ptr() == c.data_ptr() for t, c in zip(sources, entry[0], strict=True)):
            return entry[2]
        value = build()
        self._entry = (tuple(t.detach() for t in sources), versions, value)
        return value

    def clear(self) -> None:
        self._entry = None

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._entry = None


def per_sequence(module: nn.Module, input: torch.Tensor) -> torch.Tensor:
    """``module`` applied to each sequence of a nested-tensor ``input`` (a layer's matmul needs a
    regular tensor; torch's ``TransformerEncoder`` hands nested ones to its children on padded batches)."""
    return torch.nested.as_nested_tensor([module(component) for component in input.unbind()], layout=input.layout)


class SketchedModule(nn.Module):
    """Base class of the sketched layers.

    Subclasses set ``dense_type`` (the layer they replace) and implement ``hyperparameters``,
    ``from_dense`` and ``to_dense``. Layers standing in for a dense layer with a ``weight``
    expose a :class:`SketchedWeight` under that name (see :meth:`_sketched_weight`).
    """

    dense_type: ClassVar[type[nn.Module]]
    #: Hyperparameters that do not change the layer's tensors, so a checkpoint may differ in them.
    runtime_hyperparameters: ClassVar[frozenset] = frozenset({"init"})

    # -- self-description ------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        """Constructor keyword arguments that rebuild a layer of identical structure."""
        raise NotImplementedError

    def sketch_params(self) -> dict[str, Any]:
        """The hyperparameters ``from_dense`` takes (see :meth:`sketch_params_of`)."""
        return self.sketch_params_of(self.hyperparameters())

    @classmethod
    def sketch_params_of(cls, hyperparameters: dict[str, Any]) -> dict[str, Any]:
        """Drop what the dense layer's constructor already fixes, keeping the sketch's own knobs."""
        dense_args = inspect.signature(cls.dense_type.__init__).parameters
        return {k: v for k, v in hyperparameters.items() if k not in dense_args}

    def get_extra_state(self) -> dict[str, Any]:
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
                "panther.plans.rebuild_sketched_layers before loading."
            )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # State dicts written by the original Panther carry no extra state; accept them.
        state_dict.setdefault(prefix + "_extra_state", self.get_extra_state())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, **params: Any) -> SketchedModule:
        raise NotImplementedError

    def to_dense(self) -> nn.Module:
        """The dense layer this sketch computes (same outputs up to rounding)."""
        raise NotImplementedError

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        for value in vars(self).values():  # moves make new storages: free the derived copies of the old ones
            if isinstance(value, DerivedCache):
                value.clear()
        return super()._apply(fn, recurse)

    def _sketched_weight(self, shape: tuple[int, ...], like: torch.Tensor) -> SketchedWeight:
        """The :class:`SketchedWeight` of a dense weight of ``shape`` held in ``like``'s dtype and device."""
        learned = any(p.requires_grad for p in self.parameters(recurse=False))
        return SketchedWeight(type(self).__name__, shape, like.dtype, like.device, learned)

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
        raise ValueError(f"init must be one of {INIT_METHODS}, got {init!r} (not valid)")
    return init


def factory_kwargs(layer: nn.Module) -> dict[str, Any]:
    """``device``/``dtype`` of a dense layer's weight, for building its sketched twin alongside it."""
    weight: torch.Tensor = layer.weight  # type: ignore[assignment]
    return {"device": weight.device, "dtype": weight.dtype}
