"""What users of the original Panther are told: an oversized sketch, and the batch-first convention."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from panther.kinds import kind_named
from panther.nn import RandMultiHeadAttention, SKConv2d, SKLinear


def caught(build) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as records:
        warnings.simplefilter("always")
        build()
    return [r for r in records if issubclass(r.category, UserWarning)]


@pytest.mark.parametrize("d_in,d_out,T,k", [(16, 16, 1, 4), (64, 10, 1, 5), (10, 6, 1, 2), (48, 40, 2, 6)])
def test_an_sklinear_at_least_as_large_as_the_dense_layer_warns_once(d_in, d_out, T, k):
    oversized = 2 * T * k * (d_in + d_out) >= d_in * d_out  # the independent count
    records = caught(lambda: SKLinear(d_in, d_out, num_terms=T, low_rank=k))
    assert len(records) == int(oversized)
    if oversized:
        assert SKLinear.WARNING_MSG_FC in str(records[0].message)
        with pytest.warns(UserWarning, match=SKLinear.WARNING_MSG_FC):  # usable as a match pattern
            SKLinear(d_in, d_out, num_terms=T, low_rank=k)


def test_sklinear_from_dense_warns_once_and_cheaper_sketches_never():
    dense = nn.Linear(16, 16)
    assert len(caught(lambda: SKLinear.from_dense(dense, num_terms=1, low_rank=4, init="svd"))) == 1
    assert caught(lambda: SKLinear.from_dense(dense, num_terms=1, low_rank=3, init="svd")) == []


def test_the_tuners_auto_candidates_never_warn():
    """"auto" offers only cheaper configurations, so building every candidate is silent."""
    kind, dense = kind_named("SKLinear"), nn.Linear(64, 48)
    space = kind.auto_space(dense, copy_weights=True, data_aware=False, methods=True)
    ranks = space["low_rank"].values()
    assert caught(lambda: [kind.build(dense, {"num_terms": 1, "low_rank": k, "init": "svd", "method": m})
                           for k in ranks for m in space["method"].values()]) == []


def test_an_oversized_skconv2d_warns_once_and_a_cheaper_one_does_not():
    records = caught(lambda: SKConv2d(4, 4, 3, num_terms=1, low_rank=4))  # 2·4·(4·9 + 4) = 320 > 4·9·4 = 144
    assert len(records) == 1 and SKConv2d.WARNING_MSG_CONV in str(records[0].message)
    assert caught(lambda: SKConv2d(32, 32, 3, num_terms=1, low_rank=4)) == []  # 2·4·(288 + 32) < 9216


def test_original_arguments_without_batch_first_get_the_batch_first_notice_once():
    records = caught(lambda: RandMultiHeadAttention(16, 4, num_random_features=8, kernel_fn="softmax"))
    assert len(records) == 1 and "batch_first=True" in str(records[0].message)
    assert caught(lambda: RandMultiHeadAttention(16, 4, num_random_features=8, batch_first=True)) == []
    assert caught(lambda: RandMultiHeadAttention(16, 4, num_random_features=8, batch_first=False)) == []
    assert caught(lambda: RandMultiHeadAttention(16, 4)) == []  # nn.MultiheadAttention's arguments only
    assert caught(lambda: RandMultiHeadAttention.from_dense(nn.MultiheadAttention(16, 4, batch_first=True))) == []


def test_the_notice_is_about_a_real_difference_batch_first_input_read_sequence_first_mixes_samples():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        layer = RandMultiHeadAttention(8, 2, num_random_features=16).eval()  # reads (L, N, E)
    x = torch.randn(3, 3, 8)  # meant as (N, L, E): equal lengths, so nothing fails
    changed = x.clone()
    changed[1] += 1.0  # change sample 1 only
    with torch.no_grad():
        before, after = layer(x, x, x)[0], layer(changed, changed, changed)[0]
    assert not torch.allclose(before[0], after[0])  # sample 0's output moved: attention crossed the batch
    layer.batch_first = True
    with torch.no_grad():
        torch.testing.assert_close(layer(x, x, x)[0][0], layer(changed, changed, changed)[0][0])
