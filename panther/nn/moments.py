"""What data-aware initialisation reads of a layer's input second moment ``C = E[x xᵀ]``.

Usually ``C`` itself (a ``d_in x d_in`` tensor). For a linear layer wider in than out (a
transformer's FFN output, 3072 → 768) :class:`ProjectedMoment` keeps only what is read of it:
the whitened factorisation needs ``W·C·Wᵀ`` (:func:`panther.nn.factorize.low_rank_basis` of a
tall matrix goes through that Gram matrix anyway) and smoothing needs ``diag(C)``. ``W·C·Wᵀ`` is the
second moment of the layer's own output without its bias, so calibration forms ``d_out²``
products of outputs instead of ``d_in²`` products of inputs: 16x fewer multiply-adds at 3072 → 768,
and no ``d_in x d_in`` matrix to store or multiply by.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch


def content_digest(tensor: torch.Tensor) -> bytes:
    """A digest of a tensor's values (its buffer hashed in place once made contiguous)."""
    data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy()
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclass(frozen=True, eq=False)
class ProjectedMoment:
    """``C = E[x xᵀ]`` of a linear layer's inputs seen through its weight ``W`` (``d_out x d_in``).

    Attributes:
        output: ``W·C·Wᵀ`` (``d_out x d_out``, float64), the second moment of ``x·Wᵀ``.
        diagonal: ``diag(C)`` (``d_in``, float64), each input channel's mean square.
        weight_digest: :func:`content_digest` of ``W``: the projection is valid for this weight only.
    """

    output: torch.Tensor
    diagonal: torch.Tensor
    weight_digest: bytes

    def check_weight(self, weight: torch.Tensor, digest: Callable[[torch.Tensor], bytes] = content_digest) -> None:
        """Raise ``ValueError`` unless ``weight`` (``d_out x d_in``) is the one it was projected through
        (``digest``: :func:`content_digest` or a cache of it, e.g. one a tuning keeps)."""
        if (tuple(weight.shape) != (self.output.shape[0], self.diagonal.numel())
                or digest(weight) != self.weight_digest):
            raise ValueError("this input moment was projected through another weight (the layer changed since "
                             "calibration): collect its input covariance again")


InputMoment = torch.Tensor | ProjectedMoment


def channel_power(moment: InputMoment) -> torch.Tensor:
    """``diag(C)``: each input channel's mean square."""
    return moment.diagonal if isinstance(moment, ProjectedMoment) else moment.detach().diagonal()


def moment_shape(moment: InputMoment) -> tuple[int, ...]:
    """The shape of ``C`` (``(d_in, d_in)`` for a projected moment), for argument checks."""
    return (moment.diagonal.numel(),) * 2 if isinstance(moment, ProjectedMoment) else tuple(moment.shape)
