"""RandMultiHeadAttention against independent references: exact attention, the random-feature
kernel's closed form, and a direct O(L²) evaluation of the normalised feature attention."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from panther.nn.attention import RandMultiHeadAttention, attention_is_cheaper

DOUBLE = torch.float64


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_layer(embed_dim: int = 12, num_heads: int = 3, seed: int = 0, **kwargs) -> RandMultiHeadAttention:
    kwargs.setdefault("num_random_features", 16)
    kwargs.setdefault("batch_first", True)
    return RandMultiHeadAttention(embed_dim, num_heads, dtype=DOUBLE, generator=seeded(seed), **kwargs)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).norm() / expected.norm()).item()


def direct_attention(layer: RandMultiHeadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     key_bias: torch.Tensor | None = None, causal: bool = False,
                     project_out: bool = True) -> torch.Tensor:
    """O(L·S) evaluation of the layer's definition: weights φ(q_i)·φ(k_j)·e^{bias_j}, row-normalised.

    Batch-first inputs. Features are computed without any stabilising shift, straight from the formula.
    """
    E, H = layer.embed_dim, layer.num_heads
    d, m = E // H, layer.num_random_features
    if layer.in_proj_weight is not None:
        w_q, w_k, w_v = layer.in_proj_weight.split(E)
    else:
        w_q, w_k, w_v = layer.q_proj_weight, layer.k_proj_weight, layer.v_proj_weight
    b_q, b_k, b_v = layer.in_proj_bias.split(E) if layer.in_proj_bias is not None else (0, 0, 0)
    q, k, v = query @ w_q.T + b_q, key @ w_k.T + b_k, value @ w_v.T + b_v
    B, L, S = q.shape[0], q.shape[1], k.shape[1]
    if layer.bias_k is not None:
        k = torch.cat([k, layer.bias_k.expand(B, 1, E)], dim=1)
        v = torch.cat([v, layer.bias_v.expand(B, 1, E)], dim=1)
    if layer.add_zero_attn:
        k = torch.cat([k, torch.zeros(B, 1, E, dtype=k.dtype)], dim=1)
        v = torch.cat([v, torch.zeros(B, 1, E, dtype=v.dtype)], dim=1)
    total = k.shape[1]

    def heads(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(B, x.shape[1], H, d).transpose(1, 2)

    def features(x: torch.Tensor) -> torch.Tensor:
        x = x * d ** -0.25
        wx = x @ layer.projection_matrix.T
        if layer.kernel_fn == "relu":
            return torch.relu(wx) / math.sqrt(m)
        return torch.exp(wx - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(m)

    weights = features(heads(q)) @ features(heads(k)).transpose(-2, -1)  # (B, H, L, total)
    if key_bias is not None:
        weights = weights * torch.exp(F.pad(key_bias, (0, total - S)))[:, None, None, :]
    if causal:
        i, j = torch.arange(L)[:, None], torch.arange(total)[None, :]
        weights = weights * ((j <= i) | (j >= S))  # appended bias/zero keys are seen by every query
    out = (weights / weights.sum(-1, keepdim=True)) @ heads(v)
    out = out.transpose(1, 2).reshape(B, L, E)
    return layer.out_proj(out) if project_out else out


def exact_softmax_attention(layer: RandMultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """Exact self-attention with the layer's projections, via F.scaled_dot_product_attention."""
    E, H = layer.embed_dim, layer.num_heads
    q, k, v = F.linear(x, layer.in_proj_weight, layer.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(x.shape[0], -1, H, E // H).transpose(1, 2) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(x.shape)
    return layer.out_proj(out)


# -- accuracy ------------------------------------------------------------------------------------
def test_softmax_kernel_converges_to_exact_attention():
    mha = nn.MultiheadAttention(16, 2, batch_first=True, dtype=DOUBLE)
    x = 0.5 * torch.randn(2, 6, 16, dtype=DOUBLE)
    exact, _ = mha(x, x, x)
    errors = []
    for m in (8, 128, 2048):
        per_seed = [relative_error(RandMultiHeadAttention.from_dense(mha, m, generator=seeded(s))(x, x, x)[0], exact)
                    for s in range(3)]
        errors.append(sum(per_seed) / len(per_seed))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.04
    layer = RandMultiHeadAttention.from_dense(mha, 2048, generator=seeded(0))
    assert relative_error(exact_softmax_attention(layer, x), exact) < 1e-12  # the reference itself is exact


def arccos_kernel_attention(layer: RandMultiHeadAttention, x: torch.Tensor) -> torch.Tensor:
    """The m → ∞ limit of the relu features: E_w[relu(w·q)relu(w·k)] = |q||k|(sin θ + (π−θ)cos θ)/(2π)."""
    E, H = layer.embed_dim, layer.num_heads
    d = E // H
    q, k, v = F.linear(x, layer.in_proj_weight, layer.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.reshape(x.shape[0], -1, H, d).transpose(1, 2) for t in (q, k, v))
    q, k = q * d ** -0.25, k * d ** -0.25
    norms = q.norm(dim=-1)[..., :, None] * k.norm(dim=-1)[..., None, :]
    theta = torch.arccos(((q @ k.transpose(-2, -1)) / norms).clamp(-1, 1))
    kernel = norms * (torch.sin(theta) + (math.pi - theta) * torch.cos(theta)) / (2 * math.pi)
    out = (kernel / kernel.sum(-1, keepdim=True)) @ v
    return layer.out_proj(out.transpose(1, 2).reshape(x.shape))


def test_relu_kernel_converges_to_its_arccos_kernel_attention():
    x = torch.randn(2, 6, 12, dtype=DOUBLE)
    errors = []
    for m in (8, 128, 2048):
        per_seed = []
        for s in range(3):
            layer = make_layer(seed=s, num_random_features=m, kernel_fn="relu")
            per_seed.append(relative_error(layer(x, x, x)[0], arccos_kernel_attention(layer, x)))
        errors.append(sum(per_seed) / len(per_seed))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 0.04


CONFIGS = {
    "packed": {},
    "kdim_vdim": {"kdim": 5, "vdim": 7},
    "no_bias": {"bias": False},
    "bias_kv_zero_attn": {"add_bias_kv": True, "add_zero_attn": True},
}


@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
def test_matches_direct_quadratic_formula(kernel_fn, config):
    layer = make_layer(kernel_fn=kernel_fn, num_random_features=20, **config)
    query = torch.randn(2, 5, 12, dtype=DOUBLE)
    key = torch.randn(2, 9, layer.kdim, dtype=DOUBLE)
    value = torch.randn(2, 9, layer.vdim, dtype=DOUBLE)
    out, weights = layer(query, key, value)
    assert weights is None
    torch.testing.assert_close(out, direct_attention(layer, query, key, value), rtol=1e-10, atol=1e-12)


def test_softmax_stabilisation_survives_large_scores():
    """Scores far beyond exp's float32 range: the shifted features give the direct (float64) result."""
    layer = make_layer(num_random_features=32)
    x = 6.0 * torch.randn(2, 7, 12, dtype=DOUBLE)
    expected = direct_attention(layer, x, x, x)
    out32 = layer.to(torch.float32)(x.float(), x.float(), x.float())[0]
    assert torch.isfinite(out32).all()
    torch.testing.assert_close(out32.double(), expected, rtol=1e-3, atol=1e-3)


# -- masks ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
def test_key_padding_mask_equals_removing_the_keys(kernel_fn):
    layer = make_layer(kernel_fn=kernel_fn)
    query, key, value = (torch.randn(2, n, 12, dtype=DOUBLE) for n in (4, 8, 8))
    keep = torch.tensor([[1, 1, 0, 1, 1, 1, 0, 1], [1, 0, 0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    bool_out, _ = layer(query, key, value, key_padding_mask=~keep)
    float_mask = torch.zeros(2, 8, dtype=DOUBLE).masked_fill(~keep, float("-inf"))
    float_out, _ = layer(query, key, value, key_padding_mask=float_mask)
    for b in range(2):
        expected, _ = layer(query[b:b + 1], key[b:b + 1, keep[b]], value[b:b + 1, keep[b]])
        torch.testing.assert_close(bool_out[b:b + 1], expected)
    torch.testing.assert_close(float_out, bool_out)


def test_float_key_padding_mask_is_an_additive_score_bias():
    layer = make_layer()
    x = torch.randn(2, 6, 12, dtype=DOUBLE)
    bias = 3.0 * torch.randn(2, 6, dtype=DOUBLE)
    out, _ = layer(x, x, x, key_padding_mask=bias)
    torch.testing.assert_close(out, direct_attention(layer, x, x, x, key_bias=bias))


@pytest.mark.parametrize("kernel_fn", ["softmax", "relu"])
@pytest.mark.parametrize("config", [{}, {"add_bias_kv": True, "add_zero_attn": True}], ids=["plain", "global_kv"])
def test_causal_matches_direct_masked_computation(kernel_fn, config):
    layer = make_layer(kernel_fn=kernel_fn, **config)
    L = 150  # several scan blocks, the last one partial
    x = torch.randn(2, L, 12, dtype=DOUBLE)
    padding = torch.zeros(2, L, dtype=torch.bool)
    padding[1, 100:] = True
    padding[0, ::7] = True  # the first query of sequence 0 sees no key at all, unless global keys exist
    expected = direct_attention(layer, x, x, x, causal=True,
                                key_bias=torch.zeros(2, L, dtype=DOUBLE).masked_fill(padding, float("-inf")))
    out, _ = layer(x, x, x, key_padding_mask=padding, is_causal=True)
    if not config:  # exact attention gives NaN (0/0) there; this layer returns a zero attention output
        assert torch.isnan(expected[0, 0]).all()
        expected[0, 0] = layer.out_proj.bias
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    float_mask = nn.Transformer.generate_square_subsequent_mask(L, dtype=DOUBLE)
    bool_mask = torch.ones(L, L, dtype=torch.bool).triu(1)
    per_head_mask = bool_mask.expand(2 * layer.num_heads, L, L)
    for mask in (float_mask, bool_mask, per_head_mask):
        torch.testing.assert_close(layer(x, x, x, key_padding_mask=padding, attn_mask=mask)[0], out)
    torch.testing.assert_close(layer(x, x, x, key_padding_mask=padding, attn_mask=float_mask, is_causal=True)[0], out)


def test_mask_that_blocks_nothing_is_accepted():
    layer = make_layer()
    x = torch.randn(2, 5, 12, dtype=DOUBLE)
    expected, _ = layer(x, x, x)
    torch.testing.assert_close(layer(x, x, x, attn_mask=torch.zeros(5, 5, dtype=torch.bool))[0], expected)
    torch.testing.assert_close(layer(x, x, x, attn_mask=torch.zeros(5, 5, dtype=DOUBLE))[0], expected)


# -- layouts -------------------------------------------------------------------------------------
def test_batch_first_and_sequence_first_agree():
    first = make_layer(batch_first=True)
    second = make_layer(batch_first=False)
    query, key = torch.randn(3, 5, 12, dtype=DOUBLE), torch.randn(3, 7, 12, dtype=DOUBLE)
    padding = torch.rand(3, 7) < 0.3
    out_bf, _ = first(query, key, key, key_padding_mask=padding)
    out_sf, _ = second(query.transpose(0, 1), key.transpose(0, 1), key.transpose(0, 1), key_padding_mask=padding)
    torch.testing.assert_close(out_sf.transpose(0, 1), out_bf)
    causal_bf, _ = first(query, query, query, is_causal=True)
    causal_sf, _ = second(query.transpose(0, 1), query.transpose(0, 1), query.transpose(0, 1), is_causal=True)
    torch.testing.assert_close(causal_sf.transpose(0, 1), causal_bf)


@pytest.mark.parametrize("batch_first", [True, False])
def test_unbatched_input_matches_a_batch_of_one(batch_first):
    layer = make_layer(batch_first=batch_first)
    query, key = torch.randn(5, 12, dtype=DOUBLE), torch.randn(6, 12, dtype=DOUBLE)
    padding = torch.tensor([False, True, False, False, True, False])
    out, weights = layer(query, key, key, key_padding_mask=padding)
    batch_dim = 0 if batch_first else 1
    expected, _ = layer(query.unsqueeze(batch_dim), key.unsqueeze(batch_dim), key.unsqueeze(batch_dim),
                        key_padding_mask=padding.unsqueeze(0))
    assert out.shape == (5, 12) and weights is None
    torch.testing.assert_close(out, expected.squeeze(batch_dim))
    direct = direct_attention(layer, query[None], query[None], query[None], causal=True)[0]
    torch.testing.assert_close(layer(query, query, query, is_causal=True)[0], direct)


# -- randomness ----------------------------------------------------------------------------------
def test_global_rng_untouched_by_construction_with_generator_and_forward():
    dense = nn.MultiheadAttention(12, 3)
    x = torch.randn(5, 2, 12)
    state = torch.get_rng_state()
    layer = RandMultiHeadAttention(12, 3, num_random_features=8, generator=seeded(1), feature_redraw_interval=1)
    converted = RandMultiHeadAttention.from_dense(dense, 8, generator=seeded(2))
    before = layer.projection_matrix.clone()
    layer.train()
    layer(x, x, x)
    layer(x, x, x, is_causal=True)  # the second training call redraws
    layer.eval()
    converted(x, x, x)
    layer.redraw_features()
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(layer.projection_matrix, before)


def test_same_generator_seed_gives_the_same_layer_and_redraws_follow_it():
    first, second = make_layer(seed=5), make_layer(seed=5)
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name
    first.redraw_features()
    second.redraw_features()
    assert torch.equal(first.projection_matrix, second.projection_matrix)
    assert not torch.equal(first.projection_matrix, make_layer(seed=6).projection_matrix)


def test_feature_redraw_interval_applies_in_training_only():
    layer = make_layer(feature_redraw_interval=2)
    x = torch.randn(1, 3, 12, dtype=DOUBLE)
    draws = []
    layer.train()
    for _ in range(5):
        layer(x, x, x)
        draws.append(layer.projection_matrix)
    changed = [not torch.equal(a, b) for a, b in itertools.pairwise(draws)]
    assert changed == [False, True, False, True]  # redraw before the 3rd and 5th call
    layer.eval()
    layer(x, x, x)
    layer(x, x, x)
    layer(x, x, x)
    assert layer.projection_matrix is draws[-1]


def test_features_are_orthogonal_gaussian_rows():
    layer = make_layer(embed_dim=8, num_heads=1, num_random_features=4000)
    P = layer.projection_matrix
    gram = P[:8] @ P[:8].T  # one orthogonal block
    torch.testing.assert_close(gram, torch.diag(torch.diagonal(gram)))
    assert abs(P.mean().item()) < 0.05 and abs(P.var().item() - 1) < 0.05  # each row ~ N(0, I)


# -- transformer integration ---------------------------------------------------------------------
def encoder_layer(**kwargs) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, dtype=DOUBLE, **kwargs)


def compose_encoder_layer(layer: nn.TransformerEncoderLayer, x: torch.Tensor) -> torch.Tensor:
    """Post-norm encoder layer spelled out, calling self_attn like a user would."""
    x = layer.norm1(x + layer.self_attn(x, x, x, need_weights=False)[0])
    return layer.norm2(x + layer.linear2(layer.activation(layer.linear1(x))))


def test_inside_transformer_encoder_layer_trains_and_is_not_fast_pathed():
    layer = encoder_layer()
    x = torch.randn(2, 7, 16, dtype=DOUBLE)
    layer.eval()
    with torch.no_grad():
        exact = layer(x)  # the fused fast path runs for the exact layer
    dense_attn = layer.self_attn

    layer.self_attn = RandMultiHeadAttention.from_dense(dense_attn, num_random_features=4, generator=seeded(0))
    layer.train()
    loss = layer(x).pow(2).sum()
    loss.backward()
    assert layer.self_attn.in_proj_weight.grad is not None and layer.self_attn.in_proj_weight.grad.abs().sum() > 0

    layer.eval()
    with torch.no_grad():  # every fast-path condition holds except the one this layer switches off
        few = layer(x)
        torch.testing.assert_close(few, compose_encoder_layer(layer, x))
    assert relative_error(few, exact) > 0.05

    layer.self_attn = RandMultiHeadAttention.from_dense(dense_attn, num_random_features=4096, generator=seeded(0))
    with torch.no_grad():
        many = layer(x)
    assert relative_error(many, exact) < 0.02


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_swapped_into_a_built_encoder_handles_its_nested_inference_path():
    encoder = nn.TransformerEncoder(encoder_layer(), 2).eval()
    assert encoder.use_nested_tensor  # decided at construction, with exact attention
    for layer in encoder.layers:
        layer.self_attn = RandMultiHeadAttention.from_dense(layer.self_attn, 8, generator=seeded(0))
    x = torch.randn(2, 7, 16, dtype=DOUBLE)
    padding = torch.tensor([[False] * 7, [False] * 5 + [True] * 2])
    with torch.no_grad():
        nested = encoder(x, src_key_padding_mask=padding)
        encoder.use_nested_tensor = False
        padded = encoder(x, src_key_padding_mask=padding)
    torch.testing.assert_close(nested[~padding], padded[~padding])
    assert torch.equal(nested[padding], torch.zeros_like(nested[padding]))


# -- conversion and bookkeeping ------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS.values(), ids=list(CONFIGS))
def test_from_dense_copies_parameters_and_to_dense_restores_them(config):
    dense = nn.MultiheadAttention(12, 3, dropout=0.1, dtype=DOUBLE, **config)
    sketched = RandMultiHeadAttention.from_dense(dense, 24, kernel_fn="relu", generator=seeded(0))
    assert sketched.projection_matrix.shape == (24, 4) and sketched.projection_matrix.dtype == DOUBLE
    assert (sketched.dropout, sketched.batch_first, sketched.kernel_fn) == (0.1, False, "relu")
    dense_params = dict(dense.named_parameters())
    assert dense_params.keys() == dict(sketched.named_parameters()).keys()
    for name, param in sketched.named_parameters():
        assert torch.equal(param, dense_params[name]) and param.data_ptr() != dense_params[name].data_ptr(), name

    fresh = RandMultiHeadAttention(12, 3, dropout=0.1, dtype=DOUBLE, num_random_features=24, kernel_fn="relu",
                                   generator=seeded(9), **config)
    features = fresh.projection_matrix.clone()
    fresh.load_state_dict(dense.state_dict())  # strict: a dense state dict keeps the layer's own features
    assert torch.equal(fresh.projection_matrix, features)
    assert torch.equal(fresh.out_proj.weight, dense.out_proj.weight)

    restored = sketched.to_dense().eval()
    query = torch.randn(5, 2, 12, dtype=DOUBLE)
    key = torch.randn(6, 2, sketched.kdim, dtype=DOUBLE)
    value = torch.randn(6, 2, sketched.vdim, dtype=DOUBLE)
    torch.testing.assert_close(restored(query, key, value)[0], dense.eval()(query, key, value)[0])


def test_state_dict_round_trip_and_rebuild_from_hyperparameters():
    layer = make_layer(num_random_features=10, kernel_fn="relu", add_bias_kv=True, kdim=5)
    hyperparameters = json.loads(json.dumps(layer.hyperparameters()))
    rebuilt = RandMultiHeadAttention(**hyperparameters, dtype=DOUBLE, generator=seeded(3))
    rebuilt.load_state_dict(layer.state_dict())
    query, key = torch.randn(2, 4, 12, dtype=DOUBLE), torch.randn(2, 6, 5, dtype=DOUBLE)
    value = torch.randn(2, 6, 12, dtype=DOUBLE)
    torch.testing.assert_close(rebuilt(query, key, value)[0], layer(query, key, value)[0])
    other = make_layer(num_random_features=11)
    with pytest.raises((ValueError, RuntimeError)):
        other.load_state_dict(make_layer(num_random_features=10).state_dict())
    assert "num_random_features=10" in repr(layer) and "kernel_fn='relu'" in repr(layer)


def test_sketched_model_state_dict_rebuilds_a_fresh_dense_model():
    from panther.plans import rebuild_sketched_layers

    def model() -> nn.Module:
        return nn.Sequential(encoder_layer())

    sketched = model()
    sketched[0].self_attn = RandMultiHeadAttention.from_dense(sketched[0].self_attn, 12, kernel_fn="relu",
                                                              generator=seeded(0), feature_redraw_interval=3)
    state = sketched.state_dict()
    fresh = rebuild_sketched_layers(model(), state)
    fresh.load_state_dict(state)
    rebuilt = fresh[0].self_attn
    assert isinstance(rebuilt, RandMultiHeadAttention)
    assert rebuilt.hyperparameters() == sketched[0].self_attn.hyperparameters()
    x = torch.randn(2, 5, 16, dtype=DOUBLE)
    torch.testing.assert_close(fresh.eval()(x), sketched.eval()(x))


def test_dropout_applies_to_the_attention_output():
    layer = make_layer(dropout=0.5)
    x = torch.randn(2, 5, 12, dtype=DOUBLE)
    attention = direct_attention(layer, x, x, x, project_out=False)
    layer.train()
    torch.manual_seed(7)
    out, _ = layer(x, x, x)
    torch.manual_seed(7)
    keep = F.dropout(torch.ones_like(attention), 0.5, training=True)
    torch.testing.assert_close(out, layer.out_proj(attention * keep))
    layer.eval()
    torch.testing.assert_close(layer(x, x, x)[0], layer.out_proj(attention))


def test_gradients_match_finite_differences():
    layer = make_layer(embed_dim=4, num_heads=2, num_random_features=6, add_bias_kv=True)
    x = torch.randn(1, 5, 4, dtype=DOUBLE, requires_grad=True)
    padding = torch.tensor([[False, False, True, False, False]])
    assert torch.autograd.gradcheck(lambda t: layer(t, t, t, key_padding_mask=padding)[0], (x,))
    assert torch.autograd.gradcheck(lambda t: layer(t, t, t, is_causal=True)[0], (x,))


def test_half_precision_and_autocast_stay_finite_and_close():
    layer = make_layer().float()
    x = torch.randn(2, 6, 12)
    reference, _ = layer(x, x, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast_out, _ = layer(x, x, x)
    bf16_out, _ = layer.to(torch.bfloat16)(x.bfloat16(), x.bfloat16(), x.bfloat16())
    for out in (autocast_out, bf16_out):
        assert torch.isfinite(out).all()
        assert relative_error(out.float(), reference) < 0.05


def test_attention_is_cheaper_follows_the_documented_count():
    m, d = 64, 16  # self-attention: 4·L·m·d + 2·L·m < 2·L²·d  ⇔  L > 2m + m/d = 132
    assert not attention_is_cheaper(132, m, d)
    assert attention_is_cheaper(133, m, d)
    assert attention_is_cheaper(1000, m, d, key_len=1000) and not attention_is_cheaper(1000, m, d, key_len=10)
    with pytest.raises(ValueError):
        attention_is_cheaper(0, m, d)


# -- argument checking ---------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [
    {"embed_dim": 10, "num_heads": 3},
    {"num_heads": 0},
    {"num_random_features": 0},
    {"kernel_fn": "cosine"},
    {"dropout": 1.5},
    {"kdim": 0},
    {"feature_redraw_interval": 0},
])
def test_bad_constructor_arguments_raise_value_error(kwargs):
    args = {"embed_dim": 12, "num_heads": 3, **kwargs}
    with pytest.raises(ValueError):
        RandMultiHeadAttention(args.pop("embed_dim"), args.pop("num_heads"), **args)


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError):
        RandMultiHeadAttention.from_dense(nn.Linear(4, 4))
    with pytest.raises(TypeError):
        RandMultiHeadAttention(12, 3, generator=0)


def test_masks_and_inputs_it_cannot_honour_raise_value_error():
    layer = make_layer()
    x, y = torch.randn(2, 5, 12, dtype=DOUBLE), torch.randn(2, 6, 12, dtype=DOUBLE)
    window = torch.ones(5, 5, dtype=torch.bool).triu(2)  # a sliding-window-like mask, not causal
    bias = torch.randn(5, 5, dtype=DOUBLE)  # additive biases (e.g. ALiBi)
    bad_calls = [
        lambda: layer(x, x, x, attn_mask=window),
        lambda: layer(x, x, x, attn_mask=bias),
        lambda: layer(x, x, x, attn_mask=torch.ones(5, 5, dtype=torch.bool).triu(1)[None].expand(4, 5, 5)),
        lambda: layer(x, x, x, attn_mask=window, is_causal=True),
        lambda: layer(x, y, y, is_causal=True),
        lambda: layer(x, y, y, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool)),
        lambda: layer(x, y[..., :8], y),
        lambda: layer(x, y, y[:, :4]),
        lambda: layer(x, y[:1], y[:1]),
        lambda: layer(x[0], y, y),
    ]
    for call in bad_calls:
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        layer(x, y, y, key_padding_mask=torch.zeros(2, 6, dtype=torch.int64))


def test_checkpoint_loads_into_a_layer_differing_only_in_runtime_settings():
    from panther.nn import RandMultiHeadAttention

    source = RandMultiHeadAttention(8, 2, num_random_features=16, dropout=0.0, batch_first=False)
    target = RandMultiHeadAttention(8, 2, num_random_features=16, dropout=0.3, batch_first=True)
    target.load_state_dict(source.state_dict(), strict=True)
    assert target.dropout == 0.3 and target.batch_first
    with pytest.raises(ValueError, match="kernel_fn"):
        RandMultiHeadAttention(8, 2, num_random_features=16, kernel_fn="relu").load_state_dict(source.state_dict())
