"""Low-rank factorisations used to initialise sketched layers from a dense weight.

All sketched layers approximate a dense map ``M`` (``d_in x d_out`` for a linear layer) by a sum of
rank-``k`` pieces. :func:`low_rank_basis` returns ``M ≈ left @ diag(sigma) @ right`` truncated to a
given rank, either as the plain truncated SVD (optimal in Frobenius norm, Eckart–Young) or, when the
covariance of the layer's inputs is known, as the minimiser of the expected output error
``E‖x·M − x·M̂‖²`` (SVD after whitening by the input covariance).
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator

import torch

from panther.nn.moments import InputMoment, ProjectedMoment, content_digest

Decomposition = tuple[torch.Tensor, torch.Tensor, torch.Tensor]

#: Matrices of at most this many entries are factorised in float64 (through Gram matrices), larger
#: ones in float32 (whitening and an SVD), where float64 would cost more than the precision is worth.
FLOAT64_UP_TO = 1 << 22


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


def _largest_eigenvalue(sym: torch.Tensor, steps: int = 30) -> float:
    """Power iteration's estimate of a positive semi-definite matrix's largest eigenvalue."""
    v = torch.randn(sym.shape[0], 1, dtype=sym.dtype, generator=torch.Generator().manual_seed(0))
    value = 0.0
    for _ in range(steps):
        w = sym @ v
        value = float(w.norm())
        if value == 0.0:
            return 0.0
        v = w / value
    return float((v.T @ sym @ v).item())


#: Singular values below this fraction of the largest are null in a Gram matrix's float64
#: eigenvalues (their rounding is about ``√(n·eps) ≈ 4·10⁻⁷`` of it at n = 768).
_NULL_BELOW = 1e-6


def _lifted(cov: torch.Tensor, rel_eps: float = 1e-6) -> torch.Tensor:
    """``cov`` itself when every eigenvalue is above :func:`whitening`'s floor (``rel_eps`` of the
    largest; a Cholesky factorisation of ``C − floor·I`` succeeds), else ``C + floor·I``, which lifts
    the directions the inputs never visit as the floor does (tested in float32: whether an
    eigenvalue is within ~10⁻⁷ of a floor 10⁻⁶ of the largest changes the result by that millionth
    at most). No eigendecomposition: a power iteration and one Cholesky test."""
    single = cov.float()  # the floor's test needs no more precision than the floor itself
    floor = max(_largest_eigenvalue(single), torch.finfo(cov.dtype).tiny) * rel_eps
    single.diagonal().sub_(floor)
    if torch.linalg.cholesky_ex(single).info == 0:
        return cov
    return cov + floor * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)


def _whitened_by_gram(work: torch.Tensor, cov: torch.Tensor) -> Decomposition:
    """The decomposition :func:`whitening` + SVD gives, for a tall or square ``m x n`` matrix
    (``m ≥ n``), from the ``n x n`` Gram matrix ``Mᵀ·C·M``: one eigendecomposition of ``n²``
    numbers and none of ``C``.

    ``(C^{1/2}M)ᵀ(C^{1/2}M) = V·Σ²·Vᵀ`` gives ``s`` and ``vh = Vᵀ``, and the whitened SVD's left
    factor ``C^{-1/2}·U = M·V·Σ⁻¹`` needs no square root of ``C`` at all (for a 3072 → 768 layer an
    eigendecomposition of 768² numbers instead of 3072²). ``C`` is :func:`_lifted` first. Float64
    only (squaring the singular values would cost float32 too much precision).
    """
    gram = work.T @ (_lifted(cov) @ work)  # C is symmetric by construction; eigh reads one triangle anyway
    return _by_column_gram(work, gram)


def _whitened_by_cholesky(work: torch.Tensor, cov: torch.Tensor) -> Decomposition:
    """The whitened decomposition of a wide ``m x n`` matrix (``m < n``) through the Cholesky factor
    ``R`` of ``C = RᵀR`` (:func:`_lifted`) instead of :func:`whitening`'s eigendecomposition.

    The expected output error is ``E‖x(M − M̂)‖² = ‖R(M − M̂)‖²_F`` for any such factor, so the best
    rank-``r`` ``M̂`` is ``R⁻¹·[R·M]_r`` whichever factor is used: the same truncations, for a
    Cholesky factorisation and a triangular solve (768²: milliseconds) instead of an eigendecomposition.
    """
    r = torch.linalg.cholesky(_lifted(cov), upper=True)
    u, s, vh = _by_row_gram(r @ work)
    return torch.linalg.solve_triangular(r, u, upper=True), s, vh


def _by_column_gram(work: torch.Tensor, gram: torch.Tensor) -> Decomposition:
    """``(left, s, vh)`` of a tall ``work`` (``m x n``) from ``gram = workᵀ·C·work`` (``C``: the
    metric): ``vh`` its eigenvectors, ``s²`` its eigenvalues, ``left = work·V·Σ⁻¹`` (unit ``C``-norm
    columns). The rank-``r`` truncation is the projection ``work·V_r·V_rᵀ``, whose error is
    ``Σ_{i>r} s_i²``. Directions below the eigenvalues' rounding (``s < 10⁻⁶·s₀``) are null:
    ``s = 0`` and a zero column, not a division by noise."""
    evals, evecs = torch.linalg.eigh(0.5 * (gram + gram.T))
    s, v = evals.flip(0).clamp_min(0).sqrt(), evecs.flip(1)
    s = torch.where(s > s[0] * _NULL_BELOW, s, torch.zeros_like(s))
    left = (work @ v) / torch.where(s > 0, s, torch.full_like(s, math.inf))[None, :]
    return left, s, v.T


def _by_row_gram(work: torch.Tensor) -> Decomposition:
    """``(u, s, vh)`` of a wide or square ``work`` (``m ≤ n``) from the ``m x m`` Gram matrix
    ``work·workᵀ``: ``u`` its eigenvectors, ``s`` the norms of the rows of ``uᵀ·work`` and ``vh``
    those rows normalised, sorted by ``s``. Exact as a factorisation (``u·uᵀ = I``), and the
    rank-``r`` truncation is the projection ``u_r·u_rᵀ·work``, whose error is exactly
    ``Σ_{i>r} s_i²``. Several times cheaper than an SVD of a wide matrix (768 x 3072: 5x)."""
    gram = work @ work.T
    u = torch.linalg.eigh(0.5 * (gram + gram.T)).eigenvectors
    rows = u.T @ work
    s = rows.norm(dim=1)
    order = s.argsort(descending=True)
    s, u, rows = s[order], u[:, order], rows[order]
    return u, s, rows / s.clamp_min(torch.finfo(s.dtype).tiny)[:, None]


def _factorize(work: torch.Tensor, cov: torch.Tensor | None,
               whiten: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]) -> Decomposition:
    """``(u, s, vh)`` of ``work`` in the metric of ``cov`` (``None``: plain). Float64 goes through a
    Gram matrix (no SVD: several times faster, exact as a projection) and whitens without
    :func:`whitening`; float32, whose squares would lose too much, through ``whiten(cov)`` (its
    factors) and an SVD."""
    m, n = work.shape
    if work.dtype == torch.float64:
        if cov is not None:
            return _whitened_by_gram(work, cov) if m >= n else _whitened_by_cholesky(work, cov)
        if m > n:
            u, s, vh = _by_row_gram(work.T)  # workᵀ = u·Σ·vh, so work = vhᵀ·Σ·uᵀ
            return vh.T, s, u.T
        return _by_row_gram(work)
    if cov is None:
        return torch.linalg.svd(work, full_matrices=False)
    lt, lt_inv = whiten(cov)
    u, s, vh = torch.linalg.svd(lt @ work, full_matrices=False)
    return lt_inv @ u, s, vh


class _Digests:
    """Content digests of tensors, remembered while a tuning keeps its decompositions.

    Hashing a layer's weight (and a wide layer's input covariance, 3072² numbers) costs more than
    building a sketch from a cached decomposition, and every plan rebuilds every layer. Within
    :meth:`_DecompositionCache.kept`, a tensor's digest is remembered by its storage, position,
    shape, dtype and version counter (bumped by every in-place change through the tensor or its
    views), for as long as that storage lives (a weak reference: nothing is kept alive).
    """

    def __init__(self) -> None:
        self.active = False
        self._known: dict[tuple, tuple[weakref.ref, bytes]] = {}

    def of(self, tensor: torch.Tensor) -> bytes:
        if not self.active:
            return content_digest(tensor)
        storage = tensor.untyped_storage()
        key = (storage.data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride(), tensor.dtype,
               tensor.device, tensor._version)
        known = self._known.get(key)
        if known is None or known[0]() is not storage:  # new, or its memory now holds another storage
            known = self._known[key] = (weakref.ref(storage), content_digest(tensor))
        return known[1]

    def clear(self) -> None:
        self._known.clear()

    def of_matrix(self, matrix: torch.Tensor) -> bytes:
        """A digest of a matrix's values, hashed in whichever of its two layouts is contiguous: a
        transposed weight (what the sketched layers factorise) is hashed in place, not copied."""
        if not matrix.is_contiguous() and matrix.T.is_contiguous():
            return b"T" + self.of(matrix.T)
        return self.of(matrix)


def break_even_rank(m: int, n: int) -> int:
    """The largest rank ``r`` whose factors, ``r·(m + n)`` numbers, are no more than the ``m x n`` matrix."""
    return max(1, m * n // (m + n))


class _DecompositionCache:
    """Decompositions of recent matrices, keyed by the content of their inputs; only the leading factors.

    A tuner builds many candidates of one layer at different ranks; the (whitened) SVD behind them
    does not depend on the rank, and an eigendecomposition plus SVD of a wide layer costs far more
    than hashing its weight. Keyed by content, a hit is always the right answer. An entry keeps the
    singular values and the factors up to the break-even rank (:func:`break_even_rank`, or the
    largest rank asked for if more): no more numbers than the matrix itself, in float32 unless the
    caller computes in float64. Within :meth:`kept` (a tuning), nothing is evicted, so every layer
    is decomposed once however large the model; outside it the entries fit in ``max_bytes``.
    """

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, Decomposition] = OrderedDict()
        self._holds = 0
        self.digests = _Digests()
        self._last_whitening: tuple[Hashable, tuple[torch.Tensor, torch.Tensor]] | None = None

    def get(self, key: tuple, rank: int, dtype: torch.dtype, compute: Callable[[], Decomposition]) -> Decomposition:
        """The entry for ``key`` with at least ``rank`` factors in (at least) ``dtype``'s precision."""
        entry = self._entries.get(key)
        if entry is not None and entry[2].shape[0] >= min(rank, entry[1].numel()) and (
                dtype != torch.float64 or entry[0].dtype == torch.float64):
            self._entries.move_to_end(key)
            return entry
        u, s, vh = compute()
        keep = max(rank, break_even_rank(u.shape[0], vh.shape[1]))
        store = torch.float64 if dtype == torch.float64 else torch.float32
        # copies: the full decomposition's storage is freed, only the leading factors stay
        entry = (u[:, :keep].to(store, copy=True), s, vh[:keep].to(store, copy=True))
        self._entries[key] = entry
        self._entries.move_to_end(key)
        self._evict()
        return entry

    def whitening(self, key: Hashable, cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`whitening` of ``cov`` (content ``key``), the last one remembered: layers that read
        one input (an attention block's query, key and value) share its eigendecomposition (within
        :meth:`kept` only)."""
        if not self._holds:
            return whitening(cov)
        if self._last_whitening is None or self._last_whitening[0] != key:
            self._last_whitening = (key, whitening(cov))
        return self._last_whitening[1]

    @contextlib.contextmanager
    def kept(self) -> Iterator[None]:
        """Evict nothing until the block ends (nested blocks: the outermost)."""
        self._holds += 1
        self.digests.active = True
        try:
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self.digests.active = False
                self.digests.clear()
                self._last_whitening = None
            self._evict()

    def clear(self) -> None:
        self._entries.clear()
        self._last_whitening = None

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for value in self._entries.values() for t in value)

    def _evict(self) -> None:
        while not self._holds and len(self._entries) > 1 and self.nbytes() > self.max_bytes:
            self._entries.popitem(last=False)


_decompositions = _DecompositionCache()


def keep_decompositions() -> contextlib.AbstractContextManager[None]:
    """Within the block, every decomposition stays cached: each layer of a tuning is decomposed once.

    Holds each decomposed layer's leading factors up to its break-even rank: at most as many
    numbers as the layer's weight (float32 for a float32 model), released when the block ends.
    """
    return _decompositions.kept()


def _decomposition(matrix: torch.Tensor, input_cov: InputMoment | None, rank: int) -> Decomposition:
    """``(u, s, vh)`` with ``matrix ≈ u @ diag(s) @ vh`` in the metric of ``input_cov`` when given
    (cached): all singular values, at least ``rank`` factors, computed on the CPU in float64 for
    small matrices (and any projected moment: an ``n x n`` problem) and float32 above that."""
    m, n = matrix.shape
    if isinstance(input_cov, ProjectedMoment):
        input_cov.check_weight(matrix.T, digest=_decompositions.digests.of)
        work_dtype = torch.float64
        cov_key: tuple | None = ("projected", _decompositions.digests.of(input_cov.output))
    else:
        if input_cov is not None and input_cov.shape != (m, m):
            raise ValueError(f"input_cov must be {m}x{m}, got {tuple(input_cov.shape)}")
        work_dtype = torch.float64 if m * n <= FLOAT64_UP_TO else torch.float32
        cov_key = None if input_cov is None else (input_cov.dtype, _decompositions.digests.of(input_cov))
    key = (tuple(matrix.shape), matrix.dtype, work_dtype, _decompositions.digests.of_matrix(matrix), cov_key)

    def compute() -> Decomposition:
        work = matrix.detach().to(device="cpu", dtype=work_dtype)
        if isinstance(input_cov, ProjectedMoment):
            return _projected(work, input_cov)
        cov = None if input_cov is None else input_cov.detach().to(device="cpu", dtype=work_dtype)
        return _factorize(work, cov, lambda c: _decompositions.whitening((work_dtype, cov_key), c))

    return _decompositions.get(key, rank, matrix.dtype, compute)


def _projected(work: torch.Tensor, moment: ProjectedMoment, rel_eps: float = 1e-6) -> Decomposition:
    """:func:`_whitened_by_gram` from ``Mᵀ·C·M`` as measured (``moment.output``), never forming ``C``.

    Without ``C`` no Cholesky test tells whether an eigenvalue is below :func:`whitening`'s floor,
    so the ridge is always added, at ``rel_eps`` of the largest channel power (≤ ``C``'s largest
    eigenvalue, so at most the floor): on inputs that visit every direction it moves the factors
    by about that millionth.
    """
    floor = max(float(moment.diagonal.max()), torch.finfo(work.dtype).tiny) * rel_eps
    gram = moment.output.to(work.dtype) + floor * (work.T @ work)
    return _by_column_gram(work, gram)


def singular_values(matrix: torch.Tensor, input_cov: InputMoment | None = None) -> torch.Tensor:
    """Every singular value of ``matrix`` (whitened by ``input_cov`` when given), descending, in the
    working precision of :func:`low_rank_basis` (the same cached decomposition)."""
    return _decomposition(matrix, input_cov, 0)[1].clone()


def low_rank_basis(
    matrix: torch.Tensor,
    rank: int,
    input_cov: InputMoment | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best rank-``rank`` approximation ``matrix ≈ left @ diag(sigma) @ right``.

    ``matrix`` is ``m x n``; returns ``left (m, rank)``, ``sigma (rank,)``, ``right (rank, n)`` with
    the rows of ``right`` orthonormal (and the columns of ``left`` too when ``input_cov`` is None),
    sorted by decreasing ``sigma``. If ``rank`` exceeds ``min(m, n)`` the extra components have
    ``sigma = 0`` and unit-norm bases, so the approximation is exact. Computed in float64 on the CPU
    for small layers and float32 above that; returned in ``matrix.dtype`` on ``matrix.device``.
    The decomposition is cached by content (see :func:`keep_decompositions`), so other ranks of the
    same layer come cheap.
    """
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    m, n = matrix.shape
    u, s, vh = _decomposition(matrix, input_cov, rank)
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
