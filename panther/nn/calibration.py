"""Input statistics for data-aware initialisation (``init="data_svd"``).

:func:`collect_input_covariances` runs calibration batches through a model once, with forward
hooks on the chosen layers, and accumulates each layer's input second moment ``E[x xᵀ]`` in float64
(streaming: memory is one ``d x d`` matrix per layer and up to :data:`ROWS_PER_PRODUCT` rows, whatever
the number of batches; the products are float32 above 512 input dimensions, and linear layers fed
one tensor share them). For a
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
from panther.nn.dense import is_linear_like, linear_dims, linear_weight
from panther.nn.moments import InputMoment, ProjectedMoment, content_digest

#: Above this input dimension the products ``xᵀx`` are computed in float32 (and summed over
#: chunks in float64): they are most of a calibration pass's own cost at BERT-base width (768:
#: 19 → 8 ms per 1024-row chunk on one core). A chunk's rounding, about ``√1024·2⁻²⁴ ≈ 2·10⁻⁶``
#: of its entries' scale, sits at the whitening floor (10⁻⁶ of the largest eigenvalue): it moves
#: only directions whose share of any output error is that small. Narrower inputs are cheap in float64.
FLOAT32_PRODUCTS_ABOVE = 512
#: Rows gathered per input before one product ``xᵀx``: a few large products instead of one per
#: batch, as adding each product into a ``d x d`` total moves as much memory as computing it.
ROWS_PER_PRODUCT = 1024


class SecondMoment:
    """Streaming ``E[x xᵀ]`` from products ``xᵀx`` of chunks of rows (in :func:`product_dtype`)."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.total: torch.Tensor | None = None  # float64; allocated by the first product (no zero fill)
        self.count = 0

    def add_product(self, product: torch.Tensor, rows: int) -> None:
        """Add the product ``xᵀx`` of ``rows`` rows (it may be shared: it is never modified)."""
        if product.shape != (self.dim, self.dim):
            raise ValueError(f"expected a {self.dim}x{self.dim} product, got {tuple(product.shape)}")
        self.count += rows
        if self.total is None:
            self.total = product.to(torch.float64, copy=True)
        else:
            self.total.add_(product)

    def value(self) -> torch.Tensor:
        if self.total is None or self.count == 0:
            raise ValueError("no calibration inputs reached this layer")
        return self.total / self.count


def product_dtype(dim: int) -> torch.dtype:
    """float64, or float32 above :data:`FLOAT32_PRODUCTS_ABOVE` columns."""
    return torch.float32 if dim > FLOAT32_PRODUCTS_ABOVE else torch.float64


class _PendingRows:
    """Each layer's input rows not yet multiplied, as CPU copies in the product's dtype.

    Linear layers fed the very tensor the previous one was (an attention block's query, key and
    value) hold the same copy, and one product serves them while their pending rows are the same
    copies. A layer's rows are multiplied once they reach :data:`ROWS_PER_PRODUCT`, as soon as the
    layers sharing them have all been called: memory stays within one batch's rows per input.
    """

    def __init__(self, moments: Mapping[str, SecondMoment]) -> None:
        self.moments = moments
        self.rows: dict[str, list[torch.Tensor]] = {name: [] for name in moments}
        self._last: tuple[Any, torch.Tensor] | None = None  # the last linear input's key (holding it) and copy
        self._sharing: list[str] = []  # the layers that read the last linear input

    def add(self, name: str, layer: nn.Module, inputs: torch.Tensor) -> None:
        if inputs.is_nested or not is_linear_like(layer):
            self.close()
            self.rows[name].append(_copy(layer_input_rows(layer, inputs)))
            self._flush([name])
            return
        # the key holds the tensor, so no other can take its address; its version catches in-place changes
        key = (inputs, inputs.data_ptr(), tuple(inputs.shape), inputs.stride(), inputs.dtype, inputs._version)
        if self._last is None or self._last[0][0] is not inputs or self._last[0][1:] != key[1:]:
            self.close()
            self._last = (key, _copy(layer_input_rows(layer, inputs)))
        self.rows[name].append(self._last[1])
        self._sharing.append(name)

    def add_own(self, name: str, rows: torch.Tensor) -> None:
        """Rows only ``name`` reads (e.g. a projected layer's outputs)."""
        self.rows[name].append(_copy(rows))
        self._flush([name])

    def close(self) -> None:
        """The layers reading the last linear input are done with it: multiply what is due."""
        self._flush(self._sharing)
        self._last, self._sharing = None, []

    def finish(self) -> None:
        """Multiply every pending row."""
        self.close()
        self._flush(list(self.rows), final=True)

    def _flush(self, names: Sequence[str], final: bool = False) -> None:
        shared: dict[tuple[int, ...], list[str]] = {}
        for name in names:
            chunk = self.rows[name]
            if chunk and (final or sum(r.shape[0] for r in chunk) >= ROWS_PER_PRODUCT):
                shared.setdefault(tuple(map(id, chunk)), []).append(name)
        for group in shared.values():
            rows = torch.cat(self.rows[group[0]])
            product = rows.T @ rows
            for name in group:
                self.moments[name].add_product(product, rows.shape[0])
                self.rows[name] = []


def _copy(rows: torch.Tensor) -> torch.Tensor:
    return rows.detach().to(device="cpu", dtype=product_dtype(rows.shape[1]), copy=True)


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
    project_tall: bool = False,
) -> dict[str, InputMoment]:
    """Second moments of the inputs of ``layer_names`` over ``batches``.

    ``forward(model, batch)`` runs one batch (default: ``model(batch)``, or ``model(batch[0])``
    for ``(inputs, targets)`` tuples). A layer no batch reached raises ``ValueError``, or is left out
    with ``skip_unreached``. With ``project_tall``, a linear layer with more inputs than outputs
    gets a :class:`~panther.nn.moments.ProjectedMoment` (what data-aware init reads of ``C``, from
    its outputs) instead of ``C``. Every submodule's train/eval mode is restored afterwards and the
    hooks are removed even if a batch fails.
    """
    layers = {name: model.get_submodule(name) for name in layer_names}
    projected = {name for name, layer in layers.items()
                 if project_tall and is_linear_like(layer) and linear_dims(layer)[0] > linear_dims(layer)[1]}
    moments = {name: SecondMoment(linear_dims(layer)[1] if name in projected else input_dimension(layer))
               for name, layer in layers.items()}
    power = {name: torch.zeros(linear_dims(layers[name])[0], dtype=torch.float64) for name in projected}
    pending = _PendingRows(moments)
    run = forward or default_forward

    def observe_output(name: str, layer: nn.Module, inputs: torch.Tensor, output: torch.Tensor) -> None:
        rows = layer_input_rows(layer, inputs)
        power[name] += rows.detach().float().square().sum(dim=0, dtype=torch.float64).cpu()
        if inputs.is_nested or output.is_nested:
            outputs = rows.float() @ linear_weight(layer).detach().float().T
        else:  # the layer's own product, without its bias
            outputs = output.reshape(-1, output.shape[-1]).float()
            if layer.bias is not None:
                outputs = outputs - layer.bias.detach().float()
        pending.add_own(name, outputs)

    handles = [
        layer.register_forward_hook(lambda mod, args, out, name=name: observe_output(name, mod, args[0], out))
        if name in projected else
        layer.register_forward_pre_hook(lambda mod, args, name=name: pending.add(name, mod, args[0]))
        for name, layer in layers.items()
    ]
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        for index, batch in enumerate(batches):
            if max_batches is not None and index >= max_batches:
                break
            run(model, batch)
            pending.close()
        pending.finish()
    finally:
        for handle in handles:
            handle.remove()
        for module, training in modes:  # each submodule's own mode (a frozen BatchNorm stays frozen)
            module.training = training

    def value(name: str) -> InputMoment:
        if name not in projected:
            return moments[name].value()
        return ProjectedMoment(output=moments[name].value(), diagonal=power[name] / moments[name].count,
                               weight_digest=content_digest(linear_weight(layers[name])))

    return {name: value(name) for name, moment in moments.items() if moment.count or not skip_unreached}


def default_forward(model: nn.Module, batch: Any) -> Any:
    if isinstance(batch, Mapping):  # keyword inputs, as Hugging Face models take them (``input_ids=...``)
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)
