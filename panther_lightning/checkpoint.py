"""Load checkpoints of tuned (sketched) models into the plain, dense LightningModule class.

Lightning loads a checkpoint's weights before any callback hook runs, and ``load_from_checkpoint``
never involves callbacks, so the sketched layers must be rebuilt from the checkpoint itself: each
sketched layer describes itself in the state dict (``get_extra_state``), and
:func:`panther.plans.rebuild_sketched_layers` turns those descriptions back into layers. Three ways in:

* :func:`install_sketch_loading` on a module: its ``load_state_dict`` rebuilds first (the callback
  does this in ``setup``, which is what makes ``trainer.fit(..., ckpt_path=...)`` resume work).
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

from panther.plans import rebuild_sketched_layers
from panther_lightning._compat import load_checkpoint_file

M = TypeVar("M", bound="pl.LightningModule")
_MARK = "_panther_sketch_loading"


def _rebuild_before_loading(module: nn.Module, state_dict: Mapping[str, Any], prefix: str, *args: Any) -> None:
    """``load_state_dict`` pre-hook: give ``module`` the sketched layers ``state_dict`` describes."""
    own = {key[len(prefix):]: value for key, value in state_dict.items() if key.startswith(prefix)}
    rebuild_sketched_layers(module, own)


def install_sketch_loading(module: nn.Module) -> nn.Module:
    """Make ``module.load_state_dict`` accept sketched state dicts (idempotent); returns ``module``."""
    if not getattr(module, _MARK, False):
        module.register_load_state_dict_pre_hook(_rebuild_before_loading)
        setattr(module, _MARK, True)
    return module


class SketchCheckpointMixin:
    """Opt-in: ``MyModule.load_from_checkpoint(path)`` restores a tuned model's sketched layers.

    Use as ``class MyModule(SketchCheckpointMixin, pl.LightningModule)``. Lightning calls
    ``on_load_checkpoint`` before ``load_state_dict``, both in ``load_from_checkpoint`` and when a
    trainer resumes; if you override ``on_load_checkpoint``, call ``super().on_load_checkpoint``.
    """

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        rebuild_sketched_layers(self, checkpoint.get("state_dict", {}))  # type: ignore[arg-type]
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
    rebuild_sketched_layers(model, state_dict)
    model.load_state_dict(state_dict, strict=strict)
    return install_sketch_loading(model)
