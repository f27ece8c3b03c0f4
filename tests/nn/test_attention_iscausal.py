"""The original Panther's ``RandMultiHeadAttention(..., iscausal=True)``: a constructor-wide causal mask."""

import torch

from panther.nn.attention import RandMultiHeadAttention


def _layer(**kwargs) -> RandMultiHeadAttention:
    return RandMultiHeadAttention(8, 2, batch_first=True, dtype=torch.float64, num_random_features=16,
                                  generator=torch.Generator().manual_seed(0), **kwargs)


def test_iscausal_masks_the_future_like_is_causal():
    x = torch.randn(2, 5, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    causal, plain = _layer(iscausal=True), _layer()
    out, _ = causal(x, x, x)
    expected, _ = plain(x, x, x, is_causal=True)  # the same weights and features, causal per call
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, plain(x, x, x)[0])  # the flag really changed the output

    changed = x.clone()
    changed[:, -1] += 1.0  # only the last position differs: earlier outputs must not see it
    torch.testing.assert_close(causal(changed, changed, changed)[0][:, :-1], out[:, :-1])


def test_iscausal_survives_hyperparameters_and_from_dense():
    layer = _layer(iscausal=True)
    assert layer.hyperparameters()["iscausal"] is True
    assert "iscausal=True" in repr(layer)
    dense = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    assert RandMultiHeadAttention.from_dense(dense, num_random_features=4, iscausal=True).iscausal is True
    assert _layer().iscausal is False
