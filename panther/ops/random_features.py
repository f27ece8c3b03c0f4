"""Random-feature attention math (FAVOR+), apart from the module that uses it.

``exp(q·k)`` is approximated by an inner product of ``m`` random features, ``φ(q)·φ(k)``, so attention
``Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)`` is ``φ(q) (φ(K)ᵀ V)``: linear in the sequence length.
:class:`panther.nn.RandMultiHeadAttention` is the ``nn.MultiheadAttention`` drop-in built on these.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

#: Supported feature maps: ``"softmax"`` (unbiased for ``exp(q·k)``) and ``"relu"`` (an arc-cosine kernel).
KERNEL_FNS = ("softmax", "relu")

#: Sequence block length of the causal scan: larger blocks trade ``O(L·C·m)`` work for fewer prefix states.
_CAUSAL_CHUNK = 64


def orthogonal_gaussian_features(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """``(num_features, dim)`` float64 rows, each marginally ``N(0, I_dim)``, orthogonal within blocks of ``dim``.

    Orthogonal rows (FAVOR+'s ORF) keep every single feature unbiased while lowering the variance of
    the kernel estimate; the row lengths are redrawn from the chi distribution of a Gaussian vector.
    """
    device = generator.device
    blocks = []
    for _ in range(math.ceil(num_features / dim)):
        gaussian = torch.randn(dim, dim, generator=generator, device=device, dtype=torch.float64)
        q, r = torch.linalg.qr(gaussian)
        blocks.append((q * torch.sign(torch.diagonal(r))).T)  # sign fix makes q Haar-distributed
    directions = torch.cat(blocks)[:num_features]
    lengths = torch.randn(num_features, dim, generator=generator, device=device, dtype=torch.float64).norm(dim=1)
    return directions * lengths[:, None]


def random_features(x: torch.Tensor, projection: torch.Tensor, kernel_fn: str, *, is_query: bool,
                    key_log_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Features ``φ(x)`` ``(..., N, m)`` of ``x`` ``(..., N, d)`` for the projection rows ``w`` ``(m, d)``.

    ``softmax``: ``exp(w·x − |x|²/2)/√m``, whose inner products are unbiased for ``exp(q·k)``. ``relu``:
    ``relu(w·x)/√m``. ``key_log_weight`` ``(..., N, 1)`` multiplies key ``j``'s features by
    ``exp(key_log_weight_j)`` (a float padding mask; ``-inf`` drops the key). Every rescaling used for
    stability is one constant per query, or per head for the keys, so it cancels in the normalisation.
    """
    m = projection.shape[0]
    wx = x @ projection.T
    if kernel_fn == "relu":
        features = F.relu(wx) / math.sqrt(m)
        if key_log_weight is None:
            return features
        return features * torch.exp(key_log_weight - _finite_or_zero(key_log_weight.amax(dim=-2, keepdim=True)))
    logits = wx - x.pow(2).sum(dim=-1, keepdim=True) / 2
    if key_log_weight is not None:
        logits = logits + key_log_weight
    shift = logits.amax(dim=-1, keepdim=True) if is_query else logits.amax(dim=(-2, -1), keepdim=True)
    return torch.exp(logits - _finite_or_zero(shift).detach()) / math.sqrt(m)


def _finite_or_zero(shift: torch.Tensor) -> torch.Tensor:
    """A fully masked row's maximum is ``-inf``; shifting by it would turn its zeros into NaN."""
    return torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))


# -- linear attention ----------------------------------------------------------------------------
def _normalise(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """``numerator / denominator``; a query that sees no key (denominator 0, numerator 0) outputs 0, not NaN."""
    return numerator / denominator.clamp_min(torch.finfo(denominator.dtype).tiny).unsqueeze(-1)


def linear_attention(q_features: torch.Tensor, k_features: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Every query sees every key: ``φ(Q)(φ(K)ᵀV) / φ(Q)Σ_jφ(k_j)`` on ``(B, H, ·, ·)`` tensors."""
    kv = k_features.transpose(-2, -1) @ v  # (B, H, m, d)
    k_sum = k_features.sum(dim=-2).unsqueeze(-1)  # (B, H, m, 1)
    return _normalise(q_features @ kv, (q_features @ k_sum).squeeze(-1))


def causal_linear_attention(q_features: torch.Tensor, k_features: torch.Tensor, v: torch.Tensor,
                            global_kv: torch.Tensor | None = None,
                            global_k_sum: torch.Tensor | None = None) -> torch.Tensor:
    """Query ``i`` sees keys ``j ≤ i`` (plus the optional ``global_*`` sums, seen by every query).

    Blocked prefix sums: within a block of ``_CAUSAL_CHUNK`` positions the masked ``C x C`` products
    are formed directly, across blocks the running ``φ(K)ᵀV`` state is carried, so memory stays
    ``O(L/C·m·d)`` instead of the ``O(L·m·d)`` of a per-position cumulative sum.
    """
    B, H, L, m = q_features.shape
    d = v.shape[-1]
    C = min(_CAUSAL_CHUNK, L)
    n_blocks = math.ceil(L / C)
    pad = n_blocks * C - L  # zero features: padded keys add nothing, padded queries are dropped
    qf = F.pad(q_features, (0, 0, 0, pad)).reshape(B, H, n_blocks, C, m)
    kf = F.pad(k_features, (0, 0, 0, pad)).reshape(B, H, n_blocks, C, m)
    vb = F.pad(v, (0, 0, 0, pad)).reshape(B, H, n_blocks, C, d)

    block_kv = kf.transpose(-2, -1) @ vb  # (B, H, N, m, d)
    block_k_sum = kf.sum(dim=-2)  # (B, H, N, m)
    kv_before = _exclusive_cumsum(block_kv, dim=2)
    k_sum_before = _exclusive_cumsum(block_k_sum, dim=2)
    if global_kv is not None and global_k_sum is not None:
        kv_before = kv_before + global_kv.unsqueeze(2)
        k_sum_before = k_sum_before + global_k_sum.unsqueeze(2)

    lower = torch.ones(C, C, dtype=torch.bool, device=q_features.device).tril()
    scores = (qf @ kf.transpose(-2, -1)).masked_fill(~lower, 0)  # (B, H, N, C, C)
    numerator = qf @ kv_before + scores @ vb
    denominator = (qf @ k_sum_before.unsqueeze(-1)).squeeze(-1) + scores.sum(dim=-1)
    return _normalise(numerator, denominator).reshape(B, H, n_blocks * C, d)[:, :, :L]


def _exclusive_cumsum(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of the entries strictly before each position (shifted, not ``cumsum − x``, to avoid cancellation)."""
    total = torch.cumsum(x, dim=dim)
    return torch.cat([torch.zeros_like(total.narrow(dim, 0, 1)), total.narrow(dim, 0, x.shape[dim] - 1)], dim=dim)


# -- masks ---------------------------------------------------------------------------------------
def key_log_weights(key_padding_mask: torch.Tensor | None, batch: int, src_len: int,
                    dtype: torch.dtype) -> torch.Tensor | None:
    """``(batch, src_len)`` additive key scores: ``-inf`` for a ``True`` bool entry, the value of a float one."""
    if key_padding_mask is None:
        return None
    if tuple(key_padding_mask.shape) != (batch, src_len):
        raise ValueError(f"key_padding_mask must have shape ({batch}, {src_len}) (or ({src_len},) for unbatched "
                         f"input), got {tuple(key_padding_mask.shape)}")
    if key_padding_mask.dtype == torch.bool:
        return torch.zeros(key_padding_mask.shape, dtype=dtype, device=key_padding_mask.device).masked_fill(
            key_padding_mask, float("-inf"))
    if not key_padding_mask.is_floating_point():
        raise TypeError(f"key_padding_mask must be bool or floating point, got {key_padding_mask.dtype}")
    return key_padding_mask.to(dtype)


def attn_mask_is_causal(attn_mask: torch.Tensor, tgt_len: int, src_len: int, num_masks: int) -> bool:
    """True for the causal mask, False for a mask that blocks nothing; ValueError for any other mask.

    Random-feature attention never forms the ``L x S`` scores, so it can honour only these two
    patterns. Accepts the shapes ``nn.MultiheadAttention`` does: ``(L, S)`` or ``(num_masks, L, S)``,
    bool (``True`` = blocked) or float (``-inf`` = blocked, every other entry must be 0).
    """
    if attn_mask.dim() not in (2, 3) or tuple(attn_mask.shape[-2:]) != (tgt_len, src_len) or (
            attn_mask.dim() == 3 and attn_mask.shape[0] != num_masks):
        raise ValueError(f"attn_mask must have shape ({tgt_len}, {src_len}) or ({num_masks}, {tgt_len}, {src_len}), "
                         f"got {tuple(attn_mask.shape)}")
    if attn_mask.dtype == torch.bool:
        blocked = attn_mask
    elif attn_mask.is_floating_point():
        blocked = torch.isneginf(attn_mask)
        if bool((attn_mask.masked_fill(blocked, 0) != 0).any()):
            raise ValueError("RandMultiHeadAttention cannot honour additive attention biases: a float attn_mask "
                             "may hold only 0 and -inf")
    else:
        raise TypeError(f"attn_mask must be bool or floating point, got {attn_mask.dtype}")
    if not bool(blocked.any()):
        return False
    causal = torch.ones(tgt_len, src_len, dtype=torch.bool, device=attn_mask.device).triu(diagonal=1)
    if bool((blocked == causal).all()):
        return True
    raise ValueError("RandMultiHeadAttention supports only the causal attn_mask (and masks that block nothing); "
                     "use key_padding_mask to drop keys")
