"""Load checkpoints of tuned (sketched) models, and any checkpoint into a tuned model.

Lightning loads a checkpoint's weights before any callback hook runs, and ``load_from_checkpoint``
never involves callbacks, so a module's layers must be made to match the checkpoint from the
checkpoint itself: each replaced layer describes itself in the state dict (``get_extra_state``).
:func:`follow_checkpoint_layers` gives the module the layers the checkpoint was saved from: the
described replacements are rebuilt (``panther.plans.rebuild_sketched_layers``), and a replaced layer
the checkpoint holds dense weights for goes back to a dense layer, so that
``trainer.test(model, ckpt_path="best")`` after tuning evaluates exactly the weights in that file.
Three ways in:

* :func:`install_sketch_loading` on a module: its ``load_state_dict`` follows the checkpoint first
  (the callback does this in ``setup``, which is what makes ``trainer.fit(..., ckpt_path=...)``
  resume and ``trainer.test/validate/predict(..., ckpt_path=...)`` work).
* :func:`load_sketched_checkpoint` for the dense class, no change to user code.
* :class:`SketchCheckpointMixin`, opt-in, so that plain ``MyModule.load_from_checkpoint`` works.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar

import lightning.pytorch as pl
from torch import nn

from panther.nn import replace_module
from panther.plans import plan_from_state_dict, rebuild_sketched_layers, sketch_plan
from panther_lightning._compat import load_checkpoint_file

M = TypeVar("M", bound="pl.LightningModule")
_MARK = "_panther_sketch_loading"


def follow_checkpoint_layers(module: nn.Module, state_dict: Mapping[str, Any]) -> nn.Module:
    """Give ``module`` the layers ``state_dict`` was saved from, so that it loads strictly; returns ``module``.

    A layer the state dict describes as a replacement (its ``_extra_state``) is rebuilt as that
    replacement; a replaced layer of ``module`` for which the state dict holds other weights (a
    dense layer's) goes back to a dense layer (its ``to_dense()``, whose weights are then
    overwritten by the load). Layers the state dict says nothing about, or holds their own
    tensors for, are left alone (partial, non-strict loads). Raises
    ``ValueError`` naming the layer when a dense layer of the checkpoint's shapes cannot be rebuilt.
    """
    wanted = plan_from_state_dict(state_dict)
    for name, entry in sketch_plan(module).items():
        if wanted.get(name) == entry:
            continue
        if name in wanted or _holds_other_weights(module.get_submodule(name), name, state_dict):
            replace_module(module, name, _dense_version(module, name, state_dict))
    return rebuild_sketched_layers(module, wanted)


def _holds_other_weights(layer: nn.Module, name: str, state_dict: Mapping[str, Any]) -> bool:
    """Whether ``state_dict`` has weights under ``name`` that are not ``layer``'s own (a dense layer's).

    A state dict holding the replacement's own tensors without their ``_extra_state`` (weights
    synchronised between processes) is the same layer, not a dense one.
    """
    under = {key for key in state_dict if key.startswith(name + ".")}
    own = {f"{name}.{key}" for key in layer.state_dict() if not key.endswith("_extra_state")}
    return bool(under) and not own <= under


def _dense_version(module: nn.Module, name: str, state_dict: Mapping[str, Any]) -> nn.Module:
    """The dense layer replacing the layer at ``name`` (a replacement), shaped as ``state_dict``'s weights."""
    layer = module.get_submodule(name)
    fix = ("load the checkpoint into a fresh model instead: load_sketched_checkpoint(MyModule, path), or "
           "MyModule.load_from_checkpoint(path) for a dense checkpoint")
    try:
        dense = layer.to_dense()
    except (AttributeError, NotImplementedError):
        raise ValueError(f"the checkpoint holds a dense {name!r} but the model's {name!r} is a "
                         f"{type(layer).__name__}, which cannot be turned back into a dense layer; {fix}") from None
    for key, value in dense.state_dict().items():
        saved = state_dict.get(f"{name}.{key}")
        if saved is not None and getattr(saved, "shape", None) != value.shape:
            raise ValueError(f"the checkpoint holds a dense {name!r} with {key} of shape {tuple(saved.shape)}, but "
                             f"the dense layer rebuilt from the model's {type(layer).__name__} has "
                             f"{tuple(value.shape)}; {fix}")
    return dense


def _follow_before_loading(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: give ``module`` the layers ``state_dict`` was saved from."""
    own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    follow_checkpoint_layers(module, own)


def install_sketch_loading(module: nn.Module) -> nn.Module:
    """Make ``module.load_state_dict`` follow the layers of the state dict it loads (idempotent); returns ``module``."""
    if not getattr(module, _MARK, False):
        module.register_load_state_dict_pre_hook(_follow_before_loading)
        setattr(module, _MARK, True)
    return module


class SketchCheckpointMixin:
    """Opt-in: ``MyModule.load_from_checkpoint(path)`` restores a tuned model's sketched layers.

    Use as ``class MyModule(SketchCheckpointMixin, pl.LightningModule)``. Lightning calls
    ``on_load_checkpoint`` before ``load_state_dict``, both in ``load_from_checkpoint`` and when a
    trainer resumes; if you override ``on_load_checkpoint``, call ``super().on_load_checkpoint``.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        follow_checkpoint_layers(self, checkpoint.get("state_dict", {}))  # type: ignore[arg-type]
        install_sketch_loading(self)  # type: ignore[arg-type]
        super().on_load_checkpoint(checkpoint)  # type: ignore[misc]


def load_sketched_checkpoint(
    cls: type[M],
    checkpoint_path: str | os.PathLike,
    map_location: Any = None,
    strict: bool = True,
    weights_only: bool | None = None,
    **kwargs: Any,
) -> M:
    """Like ``cls.load_from_checkpoint``, for a checkpoint whose model has sketched layers.

    ``cls`` is the plain (dense) LightningModule class; the returned model has the checkpoint's
    sketched layers and weights (strictly loaded by default) and loads sketched state dicts later on.
    ``kwargs`` override saved hyperparameters, as in ``load_from_checkpoint``.
    """
    if not (isinstance(cls, type) and issubclass(cls, pl.LightningModule)):
        raise TypeError(f"cls must be a LightningModule class, got {cls!r}")
    if not os.path.exists(checkpoint_path):
        raise FileNotFoundError(f"checkpoint {os.fspath(checkpoint_path)!r} does not exist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dense instance misses the sketched keys: loaded next
        model = cls.load_from_checkpoint(checkpoint_path, map_location=map_location, strict=False,
                                         weights_only=weights_only, **kwargs)
    checkpoint = load_checkpoint_file(checkpoint_path, map_location=map_location or "cpu", weights_only=weights_only)
    state_dict = checkpoint["state_dict"]
    follow_checkpoint_layers(model, state_dict)
    model.load_state_dict(state_dict, strict=strict)
    return install_sketch_loading(model)
