"""low_rank_basis: the optimal rank-r factors, cached by content without ever serving stale ones."""

import pytest
import torch

from panther.nn import factorize
from panther.nn.factorize import low_rank_basis


def _reconstruction(matrix, rank, cov=None):
    left, sigma, right = low_rank_basis(matrix, rank, input_cov=cov)
    return left @ torch.diag(sigma) @ right


def test_plain_basis_is_the_truncated_svd():
    matrix = torch.randn(40, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    expected = u[:, :5] @ torch.diag(s[:5]) @ vh[:5]
    torch.testing.assert_close(_reconstruction(matrix, 5), expected)


def test_whitened_basis_minimises_the_expected_output_error():
    gen = torch.Generator().manual_seed(1)
    matrix = torch.randn(20, 16, dtype=torch.float64, generator=gen)
    inputs = torch.randn(500, 20, dtype=torch.float64, generator=gen) * torch.linspace(0.1, 3, 20, dtype=torch.float64)
    cov = inputs.T @ inputs / len(inputs)
    error = lambda approx: ((inputs @ matrix - inputs @ approx) ** 2).sum().item()  # noqa: E731
    aware = error(_reconstruction(matrix, 4, cov))
    # Reference optimum: best rank-4 fit of the outputs X·M in X's column space (Eckart–Young on X·M).
    q, r = torch.linalg.qr(inputs)
    u, s, vh = torch.linalg.svd(r @ matrix, full_matrices=False)
    optimum = torch.linalg.solve(r, u[:, :4] @ torch.diag(s[:4]) @ vh[:4])
    assert aware <= error(optimum) * (1 + 1e-6)
    assert aware < error(_reconstruction(matrix, 4))  # plain SVD ignores where the inputs live


def test_cache_serves_other_ranks_and_never_stale_or_aliased_results(monkeypatch):
    factorize._decompositions.clear()
    calls = []
    real_svd, real_eigh = torch.linalg.svd, torch.linalg.eigh
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real_svd(*a, **k))
    monkeypatch.setattr(torch.linalg, "eigh", lambda *a, **k: calls.append(1) or real_eigh(*a, **k))
    matrix = torch.randn(30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cov = torch.eye(30, dtype=torch.float64) * 2

    first = low_rank_basis(matrix, 4, input_cov=cov)
    first[0].zero_()  # a caller modifying its factors must not reach the cache
    once = len(calls)  # the decompositions one whitened factorisation takes
    again = low_rank_basis(matrix.clone(), 8, input_cov=cov)  # same content, other rank
    assert once >= 1 and len(calls) == once
    torch.testing.assert_close(again[0][:, :4] @ torch.diag(again[1][:4]) @ again[2][:4],
                               _reconstruction(matrix, 4, cov))
    matrix[0, 0] += 1.0  # new content: recomputed
    torch.testing.assert_close(_reconstruction(matrix, 20, cov), matrix)
    assert len(calls) == 2 * once  # one more factorisation, for the changed matrix only


def test_cache_keeps_only_the_leading_factors_and_recomputes_beyond_them(monkeypatch):
    factorize._decompositions.clear()
    matrix = torch.randn(60, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = _reconstruction_by_svd(matrix, 30)
    calls = _count_factorisations(monkeypatch)
    assert factorize.break_even_rank(60, 40) == 24
    low_rank_basis(matrix, 3)
    assert factorize._decompositions.nbytes() <= (matrix.numel() + 40) * 8  # factors up to rank 24 + sigma
    low_rank_basis(matrix, 24)
    assert len(calls) == 1
    torch.testing.assert_close(_reconstruction(matrix, 30), expected)
    assert len(calls) == 2  # rank 30 needs factors the entry did not keep
    torch.testing.assert_close(factorize.singular_values(matrix), torch.linalg.svdvals(matrix))


def _count_factorisations(monkeypatch):
    calls = []
    real = factorize._factorize
    monkeypatch.setattr(factorize, "_factorize", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _reconstruction_by_svd(matrix, rank):
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return u[:, :rank] @ torch.diag(s[:rank]) @ vh[:rank]


def test_every_layer_is_decomposed_once_while_kept_whatever_the_cache_size(monkeypatch):
    factorize._decompositions.clear()
    monkeypatch.setattr(factorize._decompositions, "max_bytes", 1)  # holds one entry outside a tuning
    calls = _count_factorisations(monkeypatch)
    gen = torch.Generator().manual_seed(4)
    layers = [torch.randn(32, 24, generator=gen) for _ in range(5)]
    with factorize.keep_decompositions():
        for _ in range(3):  # three "plans", each building every layer
            for weight in layers:
                low_rank_basis(weight, 4)
    assert len(calls) == len(layers)
    assert len(factorize._decompositions._entries) == 1  # trimmed back once the tuning ends
    low_rank_basis(layers[0], 4)
    assert len(calls) == len(layers) + 1  # evicted outside the block, as before


def test_remembered_digests_follow_in_place_changes_while_kept(monkeypatch):
    factorize._decompositions.clear()
    matrix = torch.randn(20, 12, generator=torch.Generator().manual_seed(5))
    with factorize.keep_decompositions():
        before = _reconstruction(matrix, 12)
        torch.testing.assert_close(before, matrix)
        with torch.no_grad():
            matrix.T[0, 0] += 1.0  # through a view: the shared version counter moves
        torch.testing.assert_close(_reconstruction(matrix, 12), matrix)  # not the stale decomposition


def test_float64_whitened_factors_equal_the_whitening_route_and_keep_its_floor():
    """Float64 factors never decompose the covariance: a tall or square matrix goes through its
    n x n Gram matrix, a wide one through C's Cholesky factor; the result is the whitening's."""
    gen = torch.Generator().manual_seed(6)
    for m, n in ((50, 12), (30, 30), (12, 50)):
        matrix = torch.randn(m, n, dtype=torch.float64, generator=gen)
        # A full-rank covariance: the same factorisation. A rank-deficient one: the floor (a
        # millionth of the largest eigenvalue) is added to every direction rather than raising
        # only those below it, which moves the result by about that millionth relative.
        for rows, rtol in ((400, 1e-9), (m // 2, 1e-4)):
            inputs = torch.randn(rows, m, dtype=torch.float64, generator=gen) * torch.linspace(0.2, 4, m,
                                                                                               dtype=torch.float64)
            cov = inputs.T @ inputs / rows
            lt, lt_inv = factorize.whitening(cov)
            u, s, vh = torch.linalg.svd(lt @ matrix, full_matrices=False)
            left, sigma, right = factorize._factorize(matrix, cov, _never)
            torch.testing.assert_close(sigma, s, rtol=rtol, atol=rtol * float(s[0]))
            for rank in (3, 8):  # the approximations (factors are unique up to sign)
                expected = (lt_inv @ u[:, :rank]) @ torch.diag(s[:rank]) @ vh[:rank]
                got = left[:, :rank] @ torch.diag(sigma[:rank]) @ right[:rank]
                torch.testing.assert_close(got, expected, rtol=rtol, atol=rtol * float(expected.abs().max()))


def _never(cov):
    raise AssertionError("float64 factorisations must not decompose the covariance")


def test_layers_reading_one_input_share_its_whitening_while_kept(monkeypatch):
    monkeypatch.setattr(factorize, "FLOAT64_UP_TO", 0)  # large layers' route: whitening + float32 SVD
    factorize._decompositions.clear()
    gen = torch.Generator().manual_seed(7)
    inputs = torch.randn(200, 16, generator=gen)
    cov = inputs.T @ inputs / 200
    query, key = torch.randn(16, 16, generator=gen), torch.randn(16, 16, generator=gen)
    expected = [_reconstruction(w, 3, cov) for w in (query, key)]
    factorize._decompositions.clear()
    calls = []
    real = factorize.whitening
    monkeypatch.setattr(factorize, "whitening", lambda *a, **k: calls.append(1) or real(*a, **k))
    with factorize.keep_decompositions():
        got = [_reconstruction(w, 3, cov) for w in (query, key)]
    assert len(calls) == 1
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e)


def test_gram_factorisations_equal_the_svd_for_every_shape_and_rank_deficiency():
    """Float64 factors come from Gram matrices (no SVD): the truncations equal the SVD's, and a
    rank-deficient matrix (rank 5) is rebuilt exactly at full rank with bounded factors."""
    gen = torch.Generator().manual_seed(8)
    for m, n in ((30, 30), (20, 50), (50, 20)):
        full = torch.randn(m, n, dtype=torch.float64, generator=gen)
        deficient = torch.randn(m, 5, dtype=torch.float64, generator=gen) @ torch.randn(5, n, dtype=torch.float64,
                                                                                      generator=gen)
        for matrix in (full, deficient):
            factorize._decompositions.clear()
            for rank in (3, 5, min(m, n)):
                torch.testing.assert_close(_reconstruction(matrix, rank), _reconstruction_by_svd(matrix, rank))
            left, sigma, right = low_rank_basis(matrix, min(m, n))
            assert left.abs().max() < 10 and right.abs().max() < 10
            torch.testing.assert_close(factorize.singular_values(matrix), torch.linalg.svdvals(matrix),
                                       rtol=1e-7, atol=1e-6)


def test_a_projected_layer_hashes_its_weight_in_place_and_once_while_kept(monkeypatch):
    from panther.nn.moments import ProjectedMoment, content_digest

    factorize._decompositions.clear()
    hashed = []
    monkeypatch.setattr(factorize, "content_digest", lambda t: hashed.append(t.is_contiguous()) or content_digest(t))
    gen = torch.Generator().manual_seed(8)
    weight = torch.randn(6, 20, dtype=torch.float64, generator=gen)  # 20 -> 6: tall as the layer factorises it
    inputs = torch.randn(200, 20, dtype=torch.float64, generator=gen)
    cov = inputs.T @ inputs / len(inputs)
    moment = ProjectedMoment(weight @ cov @ weight.T, cov.diagonal().clone(), content_digest(weight))
    with factorize.keep_decompositions():
        for rank in (2, 4, 6):  # three candidates of one layer
            approx = _reconstruction(weight.T, rank, moment)
    assert hashed == [True, True]  # the weight (not a transposed copy) and the moment, once each
    torch.testing.assert_close(inputs @ approx, inputs @ weight.T)  # rank 6 of a 6-column map: exact
    with torch.no_grad():
        weight[0, 0] += 1.0  # a changed weight is still refused while kept
    with factorize.keep_decompositions(), pytest.raises(ValueError, match="another weight"):
        low_rank_basis(weight.T, 2, input_cov=moment)
