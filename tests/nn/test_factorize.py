"""low_rank_basis: the optimal rank-r factors, cached by content without ever serving stale ones."""

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
    real_svd = torch.linalg.svd
    monkeypatch.setattr(torch.linalg, "svd", lambda *a, **k: calls.append(1) or real_svd(*a, **k))
    matrix = torch.randn(30, 20, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    cov = torch.eye(30, dtype=torch.float64) * 2

    first = low_rank_basis(matrix, 4, input_cov=cov)
    first[0].zero_()  # a caller modifying its factors must not reach the cache
    again = low_rank_basis(matrix.clone(), 8, input_cov=cov)  # same content, other rank
    assert len(calls) == 1
    torch.testing.assert_close(again[0][:, :4] @ torch.diag(again[1][:4]) @ again[2][:4],
                               _reconstruction(matrix, 4, cov))
    matrix[0, 0] += 1.0  # new content: recomputed
    torch.testing.assert_close(_reconstruction(matrix, 20, cov), matrix)
    assert len(calls) == 2  # one more decomposition, for the changed matrix only
