r"""``RandMultiHeadAttention``: Performer-style (FAVOR+) random-feature drop-in for ``nn.MultiheadAttention``.

Exact attention ``softmax(q kᵀ/√d) v`` costs ``O(L·S·d)`` per head. FAVOR+ replaces the kernel
``exp(q·k)`` by an inner product of ``m`` random features, ``exp(q·k) ≈ φ(q)·φ(k)``, so the output
``Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)`` can be computed as ``φ(q) (φ(K)ᵀ V)`` in ``O((L+S)·m·d)``
without ever forming the ``L x S`` weights (see :func:`attention_is_cheaper`).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from panther.nn.base import SketchedModule, check_positive_int
from panther.ops.random_features import (
    KERNEL_FNS,
    attn_mask_is_causal,
    causal_linear_attention,
    key_log_weights,
    linear_attention,
    orthogonal_gaussian_features,
    random_features,
)


# -- cost model ----------------------------------------------------------------------------------
def attention_is_cheaper(seq_len: int, num_random_features: int, head_dim: int, key_len: int | None = None) -> bool:
    """Whether random-feature attention needs fewer multiply-adds per head than exact attention.

    Exact attention: ``q kᵀ`` and ``weights·v`` cost ``2·L·S·d``. Random features: ``φ(q)``, ``φ(k)``
    (``(L+S)·m·d``), ``φ(k)ᵀ v`` (``S·m·d``), ``φ(q)·(φ(k)ᵀ v)`` (``L·m·d``) and the normaliser
    (``(L+S)·m``). For self-attention (``L = S``) this is cheaper roughly when ``L > 2·m``.
    """
    L = check_positive_int("seq_len", seq_len)
    S = L if key_len is None else check_positive_int("key_len", key_len)
    m = check_positive_int("num_random_features", num_random_features)
    d = check_positive_int("head_dim", head_dim)
    exact = 2 * L * S * d
    random_features = 2 * (L + S) * m * d + (L + S) * m
    return random_features < exact


# -- random features -----------------------------------------------------------------------------
# -- the layer -----------------------------------------------------------------------------------
class RandMultiHeadAttention(SketchedModule):
    r"""Multi-head attention with the softmax kernel replaced by ``m`` random features (FAVOR+).

    A drop-in for :class:`torch.nn.MultiheadAttention`: the same constructor arguments, parameters
    (``in_proj_weight`` or ``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``, ``bias_k/bias_v``)
    and ``forward`` signature. Per head, ``q`` and ``k`` are scaled by ``head_dim^{-1/4}`` each (as in
    exact attention) and mapped to features ``φ`` (see :func:`random_features`); the output is the
    normalised kernel attention ``Σ_j φ(q_i)·φ(k_j) v_j / Σ_j φ(q_i)·φ(k_j)``, computed in
    ``O((L+S)·m·d)``. With ``kernel_fn="softmax"`` it converges to exact attention as ``m`` grows.

    Differences from ``nn.MultiheadAttention`` (by design):

    * the attention weights are never formed, so ``forward`` always returns ``None`` as the weights
      (what ``nn.MultiheadAttention`` returns for ``need_weights=False``, the way
      ``nn.TransformerEncoderLayer`` calls it);
    * ``attn_mask`` may only be the causal mask (or block nothing); ``is_causal=True`` needs no mask.
      Causal attention uses blocked prefix sums and requires ``L == S``. ``key_padding_mask`` is
      exact: a bool ``True`` or float ``-inf`` removes the key, other float values ``b`` weight the
      key by ``e^b`` as an additive score bias does in softmax;
    * ``dropout`` is applied to the attention output (before ``out_proj``), not to the weights;
      like every ``nn.Dropout`` it draws from the global RNG, in training mode only;
    * a query that sees no key returns 0 (exact attention returns NaN);
    * ``_qkv_same_embed_dim`` is always False: torch's ``TransformerEncoder(Layer)`` inference fast
      path checks that flag and would otherwise run fused *exact* attention on ``in_proj_weight``.

    Args:
        embed_dim, num_heads, dropout, bias, add_bias_kv, add_zero_attn, kdim, vdim, batch_first,
            device, dtype: as for :class:`torch.nn.MultiheadAttention`.
        num_random_features: ``m``, features per head.
        kernel_fn: ``"softmax"`` (positive features, unbiased for ``exp(q·k/√d)``) or ``"relu"``.
        generator: the layer's own RNG, used for the initial weights and features and for every
            redraw, so neither construction nor ``forward`` touches the global RNG. When omitted, a
            generator seeded once from the global RNG (so ``torch.manual_seed`` still reproduces it).
        feature_redraw_interval: in training mode, redraw the features every that many forward calls
            (Performer's recipe against overfitting to one draw). ``None`` (default): never.
        iscausal: the original Panther's constructor flag: every ``forward`` is causal, as if called
            with ``is_causal=True`` (so models written for the original keep their causal mask).

    The buffer ``projection_matrix`` ``(m, head_dim)`` holds the orthogonal Gaussian features, shared
    by all heads (each head's estimate is unbiased on its own). It is saved in the state dict; a state
    dict without it (e.g. one of ``nn.MultiheadAttention``) loads keeping the current draw.
    """

    dense_type = nn.MultiheadAttention
    #: Said once per construction (``UserWarning``) when the layer is built with the original
    #: Panther's arguments (``num_random_features``, ``kernel_fn``, ``iscausal``) and no explicit
    #: ``batch_first``: the original took ``(N, L, E)``; this layer, like ``nn.MultiheadAttention``,
    #: takes ``(L, N, E)`` unless ``batch_first=True``, and batch-first input of equal lengths would
    #: silently attend across the batch.
    BATCH_FIRST_NOTICE = ("RandMultiHeadAttention reads inputs as (L, N, E), sequence first, like "
                          "nn.MultiheadAttention, unless batch_first=True; the original Panther read (N, L, E). "
                          "Pass batch_first=True for batch-first inputs, or batch_first=False to keep sequence "
                          "first, and this notice goes away")
    runtime_hyperparameters = frozenset({"dropout", "batch_first", "feature_redraw_interval", "iscausal"})
    bias_k: torch.Tensor | None
    bias_v: torch.Tensor | None
    projection_matrix: torch.Tensor

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        num_random_features: int | None = None,
        kernel_fn: str | None = None,
        generator: torch.Generator | None = None,
        feature_redraw_interval: int | None = None,
        iscausal: bool | None = None,
    ) -> None:
        super().__init__()
        # None: not given (defaults False, 64, "softmax", False); given with no batch_first, the
        # original's arguments mark code ported from it, whose inputs were batch first.
        if batch_first is None and any(a is not None for a in (num_random_features, kernel_fn, iscausal)):
            warnings.warn(self.BATCH_FIRST_NOTICE, UserWarning, stacklevel=2)
        batch_first = bool(batch_first)
        num_random_features = 64 if num_random_features is None else num_random_features
        kernel_fn = "softmax" if kernel_fn is None else kernel_fn
        iscausal = False if iscausal is None else iscausal
        self.embed_dim = check_positive_int("embed_dim", embed_dim)
        self.num_heads = check_positive_int("num_heads", num_heads)
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout must be a probability in [0, 1], got {dropout!r}")
        self.kdim = embed_dim if kdim is None else check_positive_int("kdim", kdim)
        self.vdim = embed_dim if vdim is None else check_positive_int("vdim", vdim)
        self.num_random_features = check_positive_int("num_random_features", num_random_features)
        if kernel_fn not in KERNEL_FNS:
            raise ValueError(f"kernel_fn must be one of {KERNEL_FNS}, got {kernel_fn!r} (not supported)")
        if feature_redraw_interval is not None:
            check_positive_int("feature_redraw_interval", feature_redraw_interval)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
        if not isinstance(iscausal, bool):
            raise TypeError(f"iscausal must be True or False, got {iscausal!r}")
        self.kernel_fn = kernel_fn
        self.feature_redraw_interval = feature_redraw_interval
        self.iscausal = iscausal
        self.dropout = float(dropout)
        self.batch_first = bool(batch_first)
        self.add_zero_attn = bool(add_zero_attn)
        self.head_dim = embed_dim // num_heads
        self._packed_in_proj = self.kdim == embed_dim and self.vdim == embed_dim
        self._generator = generator if generator is not None else _generator_seeded_from_global_rng()
        self._forwards_since_redraw = 0

        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        if self._packed_in_proj:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **kw))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.register_parameter("in_proj_weight", None)
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **kw))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **kw))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **kw))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **kw)) if bias else None
        # skip_init: nn.Linear's own init would draw from the global RNG; reset_parameters redoes it.
        self.out_proj = nn.utils.skip_init(NonDynamicallyQuantizableLinear, embed_dim, embed_dim, bias=bias,
                                           device=device if device is not None else torch.get_default_device(),
                                           dtype=dtype)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **kw))
        else:
            self.bias_k = self.bias_v = None
        self.register_buffer("projection_matrix", torch.empty(self.num_random_features, self.head_dim, **kw))
        self.reset_parameters()

    @property
    def _qkv_same_embed_dim(self) -> bool:
        """Always False, to keep torch's fused *exact* encoder fast path away from this layer (see class doc)."""
        return False

    # -- initialisation --------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """``nn.MultiheadAttention``'s initialisation, then fresh features, all from the layer's generator."""
        if self.in_proj_weight is not None:
            self._init(self.in_proj_weight, nn.init.xavier_uniform_)
        else:
            for weight in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                self._init(weight, nn.init.xavier_uniform_)
        self._init(self.out_proj.weight, nn.init.kaiming_uniform_, a=math.sqrt(5))  # as nn.Linear does
        with torch.no_grad():
            if self.in_proj_bias is not None:
                self.in_proj_bias.zero_()
                self.out_proj.bias.zero_()
        if self.bias_k is not None and self.bias_v is not None:
            self._init(self.bias_k, nn.init.xavier_normal_)
            self._init(self.bias_v, nn.init.xavier_normal_)
        self.redraw_features()

    def _init(self, param: torch.Tensor, init_fn: Any, **kwargs: Any) -> None:
        """Run ``init_fn`` on the generator's device (it may differ from the parameter's) and copy over."""
        draw = torch.empty(param.shape, dtype=param.dtype, device=self._generator.device)
        init_fn(draw, generator=self._generator, **kwargs)
        with torch.no_grad():
            param.copy_(draw)

    @torch.no_grad()
    def redraw_features(self) -> None:
        """Draw a new ``projection_matrix`` from the layer's generator (the global RNG is untouched).

        The buffer is replaced, not written in place, so graphs that saved the old draw stay valid.
        """
        fresh = orthogonal_gaussian_features(self.num_random_features, self.head_dim, self._generator)
        self.projection_matrix = fresh.to(device=self.projection_matrix.device, dtype=self.projection_matrix.dtype)
        self._forwards_since_redraw = 0

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, num_random_features: int = 64, kernel_fn: str = "softmax",
                   generator: torch.Generator | None = None,
                   feature_redraw_interval: int | None = None,
                   iscausal: bool = False) -> RandMultiHeadAttention:
        """A random-feature twin of ``layer`` with copies of its projections, on its device and dtype."""
        if not isinstance(layer, nn.MultiheadAttention):
            raise TypeError(f"RandMultiHeadAttention.from_dense expects an nn.MultiheadAttention, "
                            f"got {type(layer).__name__}")
        weight = layer.out_proj.weight
        sketched = cls(layer.embed_dim, layer.num_heads, dropout=layer.dropout, bias=layer.in_proj_bias is not None,
                       add_bias_kv=layer.bias_k is not None, add_zero_attn=layer.add_zero_attn, kdim=layer.kdim,
                       vdim=layer.vdim, batch_first=layer.batch_first, device=weight.device, dtype=weight.dtype,
                       num_random_features=num_random_features, kernel_fn=kernel_fn, generator=generator,
                       feature_redraw_interval=feature_redraw_interval, iscausal=iscausal)
        _copy_parameters(layer, sketched)
        return sketched

    def to_dense(self) -> nn.MultiheadAttention:
        """The exact-attention layer with the same projections (its outputs differ by the feature approximation)."""
        dense = nn.utils.skip_init(
            nn.MultiheadAttention, self.embed_dim, self.num_heads, dropout=self.dropout,
            bias=self.in_proj_bias is not None, add_bias_kv=self.bias_k is not None, add_zero_attn=self.add_zero_attn,
            kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first,
            device=self.out_proj.weight.device, dtype=self.out_proj.weight.dtype)
        _copy_parameters(self, dense)
        return dense

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, None]:
        """As ``nn.MultiheadAttention.forward``; the weights are always ``None`` (see the class doc).

        ``need_weights`` and ``average_attn_weights`` only concern the weights and are accepted for
        compatibility.
        """
        if query.is_nested or key.is_nested or value.is_nested:
            return self._forward_nested(query, key, value, key_padding_mask, attn_mask, is_causal), None
        is_batched = self._check_inputs(query, key, value)
        self_attention = query is key and key is value
        if not is_batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        batch, tgt_len, src_len = query.shape[0], query.shape[1], key.shape[1]
        causal = self._is_causal(attn_mask, is_causal, tgt_len, src_len, batch if is_batched else 1)
        log_weights = key_log_weights(key_padding_mask, batch, src_len, query.dtype)
        self._count_forward_and_maybe_redraw()

        q, k, v = self._project(query, key, value, self_attention)
        k, v, num_global = self._append_global_tokens(k, v)
        if log_weights is not None and num_global:
            log_weights = F.pad(log_weights, (0, num_global))
        out = self._attend(q, k, v, log_weights, causal, num_global)
        out = self.out_proj(F.dropout(out, self.dropout, self.training))
        if not is_batched:
            return out.squeeze(0), None
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _forward_nested(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        key_padding_mask: torch.Tensor | None, attn_mask: torch.Tensor | None,
                        is_causal: bool) -> torch.Tensor:
        """Nested (ragged, batch-first) sequences, as ``nn.TransformerEncoder`` passes them in inference:
        run on the zero-padded batch with the padding masked out, then drop the padded positions."""
        if not (query.is_nested and key.is_nested and value.is_nested):
            raise ValueError("query, key and value must be all nested or all regular tensors")
        if not self.batch_first:
            raise ValueError("nested tensors need batch_first=True")
        if key_padding_mask is not None or attn_mask is not None:
            raise ValueError("masks are not supported with nested tensors (the nesting already encodes padding)")
        padded_query = query.to_padded_tensor(0.0)
        padded_key = padded_query if key is query else key.to_padded_tensor(0.0)  # keeps self-attention's
        padded_value = padded_key if value is key else value.to_padded_tensor(0.0)  # single in-projection
        key_lengths = torch.tensor([k.shape[0] for k in key.unbind()], device=padded_key.device)
        padding = torch.arange(padded_key.shape[1], device=padded_key.device)[None, :] >= key_lengths[:, None]
        out, _ = self.forward(padded_query, padded_key, padded_value, key_padding_mask=padding, need_weights=False,
                              is_causal=is_causal)
        return torch.nested.as_nested_tensor([row[: q.shape[0]] for row, q in zip(out, query.unbind(), strict=True)])

    def _check_inputs(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> bool:
        """Validate shapes as ``nn.MultiheadAttention`` expects them; return whether the input is batched."""
        if query.dim() not in (2, 3) or key.dim() != query.dim() or value.dim() != query.dim():
            raise ValueError(f"query, key and value must all be 3-D (batched) or 2-D (unbatched), got "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        expected = (self.embed_dim, self.kdim, self.vdim)
        if (query.shape[-1], key.shape[-1], value.shape[-1]) != expected:
            raise ValueError(f"expected feature sizes (embed_dim, kdim, vdim) = {expected}, "
                             f"got {(query.shape[-1], key.shape[-1], value.shape[-1])}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must agree in all but the last dimension, got {tuple(key.shape)} and "
                             f"{tuple(value.shape)}")
        batch_dim = 0 if self.batch_first else 1
        if query.dim() == 3 and query.shape[batch_dim] != key.shape[batch_dim]:
            raise ValueError(f"query and key batch sizes differ: {tuple(query.shape)} vs {tuple(key.shape)} "
                             f"(batch_first={self.batch_first})")
        return query.dim() == 3

    def _is_causal(self, attn_mask: torch.Tensor | None, is_causal: bool, tgt_len: int, src_len: int,
                   batch: int) -> bool:
        causal = bool(is_causal) or self.iscausal
        if attn_mask is not None:
            mask_is_causal = attn_mask_is_causal(attn_mask, tgt_len, src_len, batch * self.num_heads)
            if causal and not mask_is_causal:
                raise ValueError("is_causal=True but attn_mask is not the causal mask")
            causal = mask_is_causal
        if causal and tgt_len != src_len:
            raise ValueError(f"causal attention needs equal query and key lengths, got {tgt_len} and {src_len}")
        return causal

    def _count_forward_and_maybe_redraw(self) -> None:
        if not self.training or self.feature_redraw_interval is None:
            return
        if self._forwards_since_redraw >= self.feature_redraw_interval:
            self.redraw_features()
        self._forwards_since_redraw += 1

    def _project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 self_attention: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The input projections of ``nn.MultiheadAttention`` (one matmul for packed self-attention)."""
        E = self.embed_dim
        b_q, b_k, b_v = (None, None, None) if self.in_proj_bias is None else self.in_proj_bias.split(E)
        if self.in_proj_weight is None:
            return (F.linear(query, self.q_proj_weight, b_q), F.linear(key, self.k_proj_weight, b_k),
                    F.linear(value, self.v_proj_weight, b_v))
        if self_attention:
            q, k, v = F.linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            return q, k, v
        w_q, w_k, w_v = self.in_proj_weight.split(E)
        return F.linear(query, w_q, b_q), F.linear(key, w_k, b_k), F.linear(value, w_v, b_v)

    def _append_global_tokens(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Append ``bias_k/bias_v`` and the zero key/value (``add_zero_attn``), seen by every query."""
        batch = k.shape[0]
        extra_k, extra_v = [], []
        if self.bias_k is not None and self.bias_v is not None:
            extra_k.append(self.bias_k.expand(batch, 1, self.embed_dim).to(k.dtype))
            extra_v.append(self.bias_v.expand(batch, 1, self.embed_dim).to(v.dtype))
        if self.add_zero_attn:
            extra_k.append(k.new_zeros(batch, 1, self.embed_dim))
            extra_v.append(v.new_zeros(batch, 1, self.embed_dim))
        if not extra_k:
            return k, v, 0
        return torch.cat([k, *extra_k], dim=1), torch.cat([v, *extra_v], dim=1), len(extra_k)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, log_weights: torch.Tensor | None,
                causal: bool, num_global: int) -> torch.Tensor:
        """Random-feature attention of projected ``(B, ·, E)`` tensors, in at least float32 and outside autocast."""
        batch, tgt_len = q.shape[:2]
        H, d = self.num_heads, self.head_dim
        compute_dtype = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
        scale = d ** -0.25

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.to(compute_dtype).reshape(batch, x.shape[1], H, d).transpose(1, 2)

        autocast_off = torch.is_autocast_enabled(q.device.type)
        with torch.autocast(q.device.type, enabled=False) if autocast_off else contextlib.nullcontext():
            projection = self.projection_matrix.to(compute_dtype)
            key_log_weight = None if log_weights is None else log_weights.to(compute_dtype)[:, None, :, None]
            q_features = random_features(heads(q) * scale, projection, self.kernel_fn, is_query=True)
            k_features = random_features(heads(k) * scale, projection, self.kernel_fn, is_query=False,
                                         key_log_weight=key_log_weight)
            v_heads = heads(v)
            if not causal:
                out = linear_attention(q_features, k_features, v_heads)
            else:
                src_len = k_features.shape[2] - num_global
                global_kv = global_k_sum = None
                if num_global:
                    global_k = k_features[:, :, src_len:]
                    global_kv = global_k.transpose(-2, -1) @ v_heads[:, :, src_len:]
                    global_k_sum = global_k.sum(dim=-2)
                out = causal_linear_attention(q_features, k_features[:, :, :src_len], v_heads[:, :, :src_len],
                                              global_kv, global_k_sum)
        return out.transpose(1, 2).reshape(batch, tgt_len, self.embed_dim).to(q.dtype)

    # -- bookkeeping -----------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "num_heads": self.num_heads, "dropout": self.dropout,
                "bias": self.in_proj_bias is not None, "add_bias_kv": self.bias_k is not None,
                "add_zero_attn": self.add_zero_attn, "kdim": self.kdim, "vdim": self.vdim,
                "batch_first": self.batch_first, "num_random_features": self.num_random_features,
                "kernel_fn": self.kernel_fn, "feature_redraw_interval": self.feature_redraw_interval,
                "iscausal": self.iscausal}

    def extra_repr(self) -> str:
        hp = self.hyperparameters()
        defaults = {"dropout": 0.0, "bias": True, "add_bias_kv": False, "add_zero_attn": False,
                    "kdim": self.embed_dim, "vdim": self.embed_dim, "batch_first": False,
                    "feature_redraw_interval": None, "iscausal": False}
        return ", ".join(f"{name}={value!r}" for name, value in hp.items()
                         if name not in defaults or defaults[name] != value)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[override]
        # nn.MultiheadAttention state dicts have no features: keep this layer's draw.
        state_dict.setdefault(prefix + "projection_matrix", self.projection_matrix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def _generator_seeded_from_global_rng() -> torch.Generator:
    """A private CPU generator; its seed is the only draw from the global RNG."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))


@torch.no_grad()
def _copy_parameters(source: nn.Module, target: nn.Module) -> None:
    """Copy every parameter of ``source`` into the same-named parameter of ``target``."""
    for name, param in source.named_parameters():
        target.get_parameter(name).copy_(param)
