"""Low-rank factorisations used to initialise sketched layers from a dense weight.

All sketched layers approximate a dense map ``M`` (``d_in x d_out`` for a linear layer) by a sum of
rank-``k`` pieces. :func:`low_rank_basis` returns ``M ≈ left @ diag(sigma) @ right`` truncated to a
given rank, either as the plain truncated SVD (optimal in Frobenius norm, Eckart–Young) or, when the
covariance of the layer's inputs is known, as the minimiser of the expected output error
``E‖x·M − x·M̂‖²`` (SVD after whitening by the input covariance).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable

import torch

Decomposition = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def random_signs(shape: tuple[int, ...], scale: float, *, dtype: torch.dtype, device: torch.device,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Entries ``±scale`` with equal probability (the original design's sketching matrices)."""
    bits = torch.randint(0, 2, shape, generator=generator, device=generator.device if generator else device)
    return (bits.to(device=device, dtype=dtype) * 2 - 1) * scale


def _orthonormal_fill(basis: torch.Tensor, count: int, dim: int, generator: torch.Generator | None) -> torch.Tensor:
    """``count`` unit vectors of length ``dim``, orthogonal to ``basis`` columns while room remains."""
    noise = torch.randn(dim, count, dtype=basis.dtype, generator=generator)
    room = dim - basis.shape[1]
    if room > 0:
        head = noise[:, : min(room, count)]
        head = head - basis @ (basis.T @ head)
        head = torch.linalg.qr(head).Q
        noise = torch.cat([head, noise[:, head.shape[1]:]], dim=1)
    return noise / noise.norm(dim=0, keepdim=True).clamp_min(1e-12)


def whitening(input_cov: torch.Tensor, rel_eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(Lt, Lt_inv)`` with ``input_cov ≈ Lt.T @ Lt``, safe for rank-deficient covariances.

    Eigenvalues are floored at ``rel_eps * max_eigenvalue`` (a ridge), so directions the inputs
    never visit are kept but weighted as nearly irrelevant.
    """
    cov = 0.5 * (input_cov + input_cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    floor = evals.max().clamp_min(torch.finfo(cov.dtype).tiny) * rel_eps
    root = evals.clamp_min(floor).sqrt()
    return root[:, None] * evecs.T, evecs / root[None, :]


def _digest(tensor: torch.Tensor) -> bytes:
    return hashlib.blake2b(tensor.contiguous().numpy().tobytes(), digest_size=16).digest()


class _DecompositionCache:
    """The last few full decompositions, keyed by the content of their inputs.

    A tuner builds many candidates of one layer at different ranks; the (whitened) SVD behind
    them does not depend on the rank, and an eigendecomposition plus SVD of a wide layer costs far
    more than hashing its weight. Keyed by content, a hit is always the right answer.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, Decomposition] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], Decomposition]) -> Decomposition:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = compute()
        self._entries[key] = value
        while len(self._entries) > 1 and self._bytes() > self.max_bytes:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()

    def _bytes(self) -> int:
        return sum(t.numel() * t.element_size() for value in self._entries.values() for t in value)


_decompositions = _DecompositionCache()


def _full_decomposition(work: torch.Tensor, cov: torch.Tensor | None) -> Decomposition:
    """``(u, s, vh)`` with ``work ≈ u @ diag(s) @ vh``, in the metric of ``cov`` when given (cached)."""
    key = (tuple(work.shape), work.dtype, _digest(work), None if cov is None else _digest(cov))

    def compute() -> Decomposition:
        if cov is None:
            return torch.linalg.svd(work, full_matrices=False)
        lt, lt_inv = whitening(cov)
        u, s, vh = torch.linalg.svd(lt @ work, full_matrices=False)
        return lt_inv @ u, s, vh

    return _decompositions.get(key, compute)


def low_rank_basis(
    matrix: torch.Tensor,
    rank: int,
    input_cov: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` approximation ``matrix ≈ left @ diag(sigma) @ right``.

    ``matrix`` is ``m x n``; returns ``left (m, rank)``, ``sigma (rank,)``, ``right (rank, n)`` with
    the rows of ``right`` orthonormal (and the columns of ``left`` too when ``input_cov`` is None),
    sorted by decreasing ``sigma``. If ``rank`` exceeds ``min(m, n)`` the extra components have
    ``sigma = 0`` and unit-norm bases, so the approximation is exact. Computed in float64 on the CPU
    for small layers and float32 above that; returned in ``matrix.dtype`` on ``matrix.device``.
    The full decomposition is cached by content, so other ranks of the same layer come cheap.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    m, n = matrix.shape
    work_dtype = torch.float64 if m * n <= 1 << 22 else torch.float32
    work = matrix.detach().to(device="cpu", dtype=work_dtype)
    cov = None
    if input_cov is not None:
        if input_cov.shape != (m, m):
            raise ValueError(f"input_cov must be {m}x{m}, got {tuple(input_cov.shape)}")
        cov = input_cov.detach().to(device="cpu", dtype=work_dtype)
    u, s, vh = _full_decomposition(work, cov)
    keep = min(rank, s.numel())
    left, sigma, right = u[:, :keep], s[:keep], vh[:keep]
    if keep < rank:
        extra = rank - keep
        left = torch.cat([left, _orthonormal_fill(left, extra, m, generator)], dim=1)
        right = torch.cat([right, _orthonormal_fill(right.T, extra, n, generator).T], dim=0)
        sigma = torch.cat([sigma, sigma.new_zeros(extra)])
    out = dict(device=matrix.device, dtype=matrix.dtype)
    # copies: the cached decomposition must never alias what callers may modify
    return left.to(**out, copy=True), sigma.to(**out, copy=True), right.to(**out, copy=True)
