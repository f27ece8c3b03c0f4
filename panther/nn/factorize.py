"""Low-rank factorisations used to initialise sketched layers from a dense weight.

All sketched layers approximate a dense map ``M`` (``d_in x d_out`` for a linear layer) by a sum of
rank-``k`` pieces. :func:`low_rank_basis` returns ``M ≈ left @ diag(sigma) @ right`` truncated to a
given rank, either as the plain truncated SVD (optimal in Frobenius norm, Eckart–Young) or, when the
covariance of the layer's inputs is known, as the minimiser of the expected output error
``E‖x·M − x·M̂‖²`` (SVD after whitening by the input covariance).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


def random_signs(shape: Tuple[int, ...], scale: float, *, dtype: torch.dtype, device: torch.device,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Entries ``±scale`` with equal probability (the original design's sketching matrices)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device if generator else device)
    return (bits.to(device=device, dtype=dtype) * 2 - 1) * scale


def _orthonormal_fill(basis: torch.Tensor, count: int, dim: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    """``count`` unit vectors of length ``dim``, orthogonal to ``basis`` columns while room remains."""
    noise = torch.randn(dim, count, dtype=basis.dtype, generator=generator)
    room = dim - basis.shape[1]
    if room > 0:
        head = noise[:, : min(room, count)]
        head = head - basis @ (basis.T @ head)
        head = torch.linalg.qr(head).Q
        noise = torch.cat([head, noise[:, head.shape[1]:]], dim=1)
    return noise / noise.norm(dim=0, keepdim=True).clamp_min(1e-12)


def whitening(input_cov: torch.Tensor, rel_eps: float = 1e-6) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return ``(Lt, Lt_inv)`` with ``input_cov ≈ Lt.T @ Lt``, safe for rank-deficient covariances.

    Eigenvalues are floored at ``rel_eps * max_eigenvalue`` (a ridge), so directions the inputs
    never visit are kept but weighted as nearly irrelevant.
    """
    cov = 0.5 * (input_cov + input_cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    floor = evals.max().clamp_min(torch.finfo(cov.dtype).tiny) * rel_eps
    root = evals.clamp_min(floor).sqrt()
    return root[:, None] * evecs.T, evecs / root[None, :]


def low_rank_basis(
    matrix: torch.Tensor,
    rank: int,
    input_cov: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` approximation ``matrix ≈ left @ diag(sigma) @ right``.

    ``matrix`` is ``m x n``; returns ``left (m, rank)``, ``sigma (rank,)``, ``right (rank, n)`` with
    the rows of ``right`` orthonormal (and the columns of ``left`` too when ``input_cov`` is None),
    sorted by decreasing ``sigma``. If ``rank`` exceeds ``min(m, n)`` the extra components have
    ``sigma = 0`` and unit-norm bases, so the approximation is exact. Computed in float64 on the CPU
    for small layers and float32 above that; returned in ``matrix.dtype`` on ``matrix.device``.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    m, n = matrix.shape
    work_dtype = torch.float64 if m * n <= 1 << 22 else torch.float32
    work = matrix.detach().to(device="cpu", dtype=work_dtype)
    if input_cov is None:
        u, s, vh = torch.linalg.svd(work, full_matrices=False)
    else:
        if input_cov.shape != (m, m):
            raise ValueError(f"input_cov must be {m}x{m}, got {tuple(input_cov.shape)}")
        lt, lt_inv = whitening(input_cov.detach().to(device="cpu", dtype=work_dtype))
        u, s, vh = torch.linalg.svd(lt @ work, full_matrices=False)
        u = lt_inv @ u
    keep = min(rank, s.numel())
    left, sigma, right = u[:, :keep], s[:keep], vh[:keep]
    if keep < rank:
        extra = rank - keep
        left = torch.cat([left, _orthonormal_fill(left, extra, m, generator)], dim=1)
        right = torch.cat([right, _orthonormal_fill(right.T, extra, n, generator).T], dim=0)
        sigma = torch.cat([sigma, sigma.new_zeros(extra)])
    out = dict(device=matrix.device, dtype=matrix.dtype)
    return left.to(**out), sigma.to(**out), right.to(**out)
