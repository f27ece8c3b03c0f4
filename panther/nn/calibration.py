"""Input statistics for data-aware initialisation (``init="data_svd"``).

:func:`collect_input_covariances` runs calibration batches through a model once, with forward
hooks on the chosen layers, and accumulates each layer's input second moment ``E[x xᵀ]`` in float64
(streaming: memory is one ``d x d`` matrix per layer, whatever the number of batches; each batch's
product is float32 above 1024 input dimensions, and linear layers fed one tensor share it). For a
``Conv2d`` the "input" is the unfolded patch vector (all channels, ``F.unfold`` order) the kernel
multiplies, so the same low-rank machinery applies; grouped convolutions use its diagonal blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from panther.nn.conv import explicit_padding
from panther.nn.dense import is_linear_like, linear_dims

#: Above this input dimension each batch's ``xᵀx`` is computed in float32 (and summed over batches
#: in float64): a 3072-wide input's product is most of a calibration pass, and float32 halves it.
FLOAT32_PRODUCTS_ABOVE = 1024


class SecondMoment:
    """Streaming ``E[x xᵀ]`` over the rows of the matrices passed to :meth:`update`."""

    #: float32 products are summed in float32 this many at a time, then into the float64 total
    #: (adding a float32 matrix to a float64 one costs as much as the product itself).
    FOLD = 16

    def __init__(self, dim: int) -> None:
        self.total = torch.zeros(dim, dim, dtype=torch.float64)
        self.count = 0
        self._recent: torch.Tensor | None = None  # float32 products not yet in ``total``
        self._pending = 0

    def update(self, rows: torch.Tensor) -> None:
        self.add_product(batch_product(rows), rows.shape[0])

    def add_product(self, product: torch.Tensor, rows: int) -> None:
        """Add one batch's ``xᵀx`` (from :func:`batch_product`) over ``rows`` rows."""
        self.count += rows
        if product.dtype == torch.float64:
            self.total.add_(product)
            return
        if self._recent is None:
            self._recent = product.clone()
        else:
            self._recent.add_(product)
        self._pending += 1
        if self._pending >= self.FOLD:
            self._fold()

    def _fold(self) -> None:
        if self._recent is not None:
            self.total.add_(self._recent)
            self._recent, self._pending = None, 0

    def value(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("no calibration inputs reached this layer")
        self._fold()
        return self.total / self.count


def batch_product(rows: torch.Tensor) -> torch.Tensor:
    """``rowsᵀ·rows`` on the CPU: float64, or float32 above :data:`FLOAT32_PRODUCTS_ABOVE` columns."""
    dtype = torch.float32 if rows.shape[1] > FLOAT32_PRODUCTS_ABOVE else torch.float64
    rows = rows.detach().to(device="cpu", dtype=dtype)
    return rows.T @ rows


def layer_input_rows(layer: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The vectors ``layer`` multiplies by its weight, one per row."""
    if is_linear_like(layer):
        if inputs.is_nested:  # e.g. nn.TransformerEncoder's padding-free fast path
            return torch.cat([sequence.reshape(-1, linear_dims(layer)[0]) for sequence in inputs.unbind()])
        return inputs.reshape(-1, linear_dims(layer)[0])
    if isinstance(layer, nn.Conv2d):
        x = inputs if inputs.dim() == 4 else inputs.unsqueeze(0)
        padding = layer.padding
        if isinstance(padding, str) or layer.padding_mode != "zeros":
            mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
            x = F.pad(x, explicit_padding(padding, layer.kernel_size, layer.dilation), mode=mode)
            padding = 0
        patches = F.unfold(x, layer.kernel_size, dilation=layer.dilation, padding=padding, stride=layer.stride)
        return patches.transpose(1, 2).reshape(-1, patches.shape[1])
    raise TypeError(f"no input statistics for {type(layer).__name__}")


def input_dimension(layer: nn.Module) -> int:
    if is_linear_like(layer):
        return linear_dims(layer)[0]
    if isinstance(layer, nn.Conv2d):
        # All groups' patches: SKConv2d takes the per-group diagonal blocks of this matrix.
        return layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
    raise TypeError(f"no input statistics for {type(layer).__name__}")


@torch.no_grad()
def collect_input_covariances(
    model: nn.Module,
    layer_names: Sequence[str],
    batches: Iterable[Any],
    forward: Callable[[nn.Module, Any], Any] | None = None,
    max_batches: int | None = None,
    skip_unreached: bool = False,
) -> dict[str, torch.Tensor]:
    """Second moments of the inputs of ``layer_names`` over ``batches``.

    ``forward(model, batch)`` runs one batch (default: ``model(batch)``, or ``model(batch[0])``
    for ``(inputs, targets)`` tuples). A layer no batch reached raises ``ValueError``, or is left out
    with ``skip_unreached``. Every submodule's train/eval mode is restored afterwards and the
    hooks are removed even if a batch fails.
    """
    layers = {name: model.get_submodule(name) for name in layer_names}
    moments = {name: SecondMoment(input_dimension(layer)) for name, layer in layers.items()}
    run = forward or default_forward
    last: list[Any] = [None, None]  # the last linear input's key (holding the tensor) and its product

    def update(name: str, layer: nn.Module, inputs: torch.Tensor) -> None:
        if inputs.is_nested or not is_linear_like(layer):
            rows = layer_input_rows(layer, inputs)
            moments[name].add_product(batch_product(rows), rows.shape[0])
            return
        # Linear layers fed the very tensor the previous one was (an attention block's query, key
        # and value) share its product; the key holds the tensor, so no other can take its address.
        key = (inputs, inputs.data_ptr(), tuple(inputs.shape), inputs.stride(), inputs.dtype, inputs._version)
        if last[0] is None or last[0][0] is not inputs or last[0][1:] != key[1:]:
            rows = layer_input_rows(layer, inputs)
            last[0], last[1] = key, (batch_product(rows), rows.shape[0])
        moments[name].add_product(*last[1])

    handles = [
        layer.register_forward_pre_hook(lambda mod, args, name=name: update(name, mod, args[0]))
        for name, layer in layers.items()
    ]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            run(model, batch)
            last[0] = last[1] = None
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:  # each submodule's own mode (a frozen BatchNorm stays frozen)
            module.training = training
    if skip_unreached:  # e.g. a layer whose parent computes with its weight instead of calling it
        return {name: moment.value() for name, moment in moments.items() if moment.count}
    return {name: moment.value() for name, moment in moments.items()}


def default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):  # keyword inputs, as Hugging Face models take them (``input_ids=...``)
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)
