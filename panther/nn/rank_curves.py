"""Per-layer error curves: the output error of every rank of a linear layer, from one SVD.

The sketched layers the tuner builds with ``init="svd"`` / ``"data_svd"`` are the best rank-``r``
approximations of the dense weight (``r = 2·num_terms·low_rank``, see ``SKLinear``), so their damage
is known before they are built (Eckart–Young):

- without input statistics, the relative error of ``x ↦ x·Wᵀ`` for isotropic inputs is
  ``err(r)² = Σ_{i>r} σ_i² / Σ_i σ_i²`` over the singular values of ``W``;
- with the input second moment ``C = E[x xᵀ]``, ``E‖x·(W − Ŵ)ᵀ‖² / E‖x·Wᵀ‖²`` follows the same
  formula over the singular values of the whitened weight ``W·C^{1/2}``, which is what ``"data_svd"``
  truncates.

The spectrum comes from :func:`panther.nn.factorize.singular_values`, the very decomposition (same
whitening ridge, same working precision) :func:`~panther.nn.factorize.low_rank_basis` builds the
layer from, and its content-keyed cache makes the later ``from_dense`` calls of the same layer free.
"""

from __future__ import annotations

import torch

from panther.nn.factorize import singular_values
from panther.nn.moments import InputMoment


def sketch_rank(num_terms: int, low_rank: int) -> int:
    """Rank of an ``SKLinear`` with these parameters: each of its ``T`` terms has two rank-``k`` halves."""
    return 2 * num_terms * low_rank


def rank_error_curve(weight: torch.Tensor, input_cov: InputMoment | None = None) -> torch.Tensor:
    """``err[r]``, ``r = 0..min(out, in)``: relative output error of the best rank-``r`` approximation.

    ``weight`` is ``(out_features, in_features)``; ``input_cov`` the ``(in_features, in_features)``
    input second moment, or ``None`` for the plain (isotropic-input) error. The error is relative to
    the bias-free output ``x·Wᵀ`` (a bias is copied unchanged, so it adds nothing to the numerator).
    ``err[0] = 1``, ``err[min(out, in)] = 0``, non-increasing; float64 on the CPU.
    """
    # (d_in, d_out), as SKLinear.from_dense factors it: the same cache entry
    sigma = singular_values(weight.detach().T, input_cov=input_cov)
    energy = sigma.to(torch.float64).square()
    tail = torch.cat([energy.flip(0).cumsum(0).flip(0), energy.new_zeros(1)])  # tail[r] = Σ_{i≥r} σ_i²
    total = tail[0]
    if total <= 0:  # a zero weight: every rank is exact
        return torch.zeros_like(tail)
    return (tail / total).clamp(0.0, 1.0).sqrt()
