"""``SKLinear``: a sketched, low-rank drop-in for ``nn.Linear``."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import nn

from panther.nn.base import DerivedCache, SketchedModule, SketchedWeight, check_init, check_positive_int, per_sequence
from panther.nn.dense import is_linear_like, linear_dims, linear_weight
from panther.nn.factorize import low_rank_basis, random_signs
from panther.nn.moments import InputMoment
from panther.ops import pack_left, pack_right, sketched_linear


def linear_is_cheaper(in_features: int, out_features: int, num_terms: int, low_rank: int) -> bool:
    """Whether ``SKLinear`` stores and multiplies fewer numbers, ``2Tk(d_in + d_out)``, than ``d_in·d_out`` dense."""
    return 2 * num_terms * low_rank * (in_features + out_features) < in_features * out_features


class SKLinear(SketchedModule):
    r"""Sketched linear layer ``y = 1/(2T) · Σ_i (x·S1_i·U1_i + x·U2_i·S2_i) + bias``.

    ``T = num_terms`` terms of rank ``k = low_rank`` each; ``U1s (T, k, d_out)`` and
    ``U2s (T, d_in, k)`` are fixed buffers, ``S1s (T, d_in, k)``, ``S2s (T, k, d_out)`` and ``bias``
    are learned. The layer has rank at most ``2·T·k`` and ``2·T·k·(d_in + d_out)`` weights (half of
    them learnable), so it is cheaper than ``nn.Linear`` when ``2·T·k < d_in·d_out/(d_in + d_out)``.

    Args:
        in_features, out_features, bias, device, dtype: as for :class:`torch.nn.Linear`.
        num_terms: ``T``, number of sketch terms averaged.
        low_rank: ``k``, rank of each term.
        W_init: dense weight ``(out_features, in_features)`` to approximate; Kaiming-initialised
            (as ``nn.Linear``) when omitted.
        init: how the terms are derived from the weight. ``"sketch"`` (the original design):
            random-sign ``U``'s, an unbiased but noisy copy of the weight, for training from
            scratch. ``"svd"``: ``U``'s from the SVD of the weight, so the layer equals its best
            rank-``2Tk`` approximation; use it to compress a trained layer. ``"data_svd"``: like
            ``"svd"`` but minimising the output error on inputs with covariance ``input_cov``.
        input_cov: ``(in_features, in_features)`` second moment of the inputs, for ``"data_svd"``.
        generator: RNG for the random parts of the initialisation (the global one when omitted).
    """

    dense_type = nn.Linear
    #: Warned (``UserWarning``, once per construction) when the sketch stores at least as many numbers
    #: as the dense layer, ``2·T·k·(d_in + d_out) >= d_in·d_out``: it then saves nothing. Plain words,
    #: so it also serves as the ``match`` pattern of ``pytest.warns``.
    WARNING_MSG_FC = ("SKLinear holds at least as many parameters as the dense layer it replaces, so it saves "
                      "nothing: use a smaller low_rank or num_terms, or keep nn.Linear")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        num_terms: int,
        low_rank: int,
        W_init: torch.Tensor | None = None,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        *,
        init: str = "sketch",
        input_cov: InputMoment | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = check_positive_int("in_features", in_features)
        self.out_features = check_positive_int("out_features", out_features)
        self.num_terms = check_positive_int("num_terms", num_terms)
        self.low_rank = check_positive_int("low_rank", low_rank)
        self.init = check_init(init)
        if init == "data_svd" and input_cov is None:
            raise ValueError("init='data_svd' needs input_cov, the (in_features, in_features) input covariance")
        if W_init is not None and tuple(W_init.shape) != (out_features, in_features):
            raise ValueError(f"W_init must have shape ({out_features}, {in_features}), got {tuple(W_init.shape)}")
        if not linear_is_cheaper(in_features, out_features, num_terms, low_rank):
            warnings.warn(f"{self.WARNING_MSG_FC} (2·{num_terms}·{low_rank}·({in_features} + {out_features}) = "
                          f"{2 * num_terms * low_rank * (in_features + out_features)} >= {in_features * out_features})",
                          UserWarning, stacklevel=2)
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        T, k = num_terms, low_rank
        self.S1s = nn.Parameter(torch.empty(T, in_features, k, **kw))
        self.S2s = nn.Parameter(torch.empty(T, k, out_features, **kw))
        self.register_buffer("U1s", torch.empty(T, k, out_features, **kw))
        self.register_buffer("U2s", torch.empty(T, in_features, k, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if bias else None
        self._pack_cache = DerivedCache()  # packed A/B for inference
        if W_init is None:
            self.reset_parameters(generator=generator)
        else:
            self._init_from_weight(W_init, input_cov=input_cov, generator=generator)
            if self.bias is not None:
                self._reset_bias(generator)

    # -- initialisation --------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw a Kaiming-uniform dense weight (as ``nn.Linear`` does) and re-derive the terms."""
        weight = torch.empty(self.out_features, self.in_features, device=self.S1s.device, dtype=self.S1s.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        init = "svd" if self.init == "data_svd" else self.init
        self._init_from_weight(weight, init=init, generator=generator)
        if self.bias is not None:
            self._reset_bias(generator)

    def _reset_bias(self, generator: torch.Generator | None) -> None:
        bound = 1 / math.sqrt(self.in_features)
        nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    @torch.no_grad()
    def _init_from_weight(self, weight: torch.Tensor, init: str | None = None,
                          input_cov: InputMoment | None = None,
                          generator: torch.Generator | None = None) -> None:
        """Set ``S``/``U`` so that the layer approximates ``x @ weight.T`` by ``init``'s rule."""
        init = init or self.init
        T, k = self.num_terms, self.low_rank
        w_t = weight.detach().to(device=self.S1s.device, dtype=self.S1s.dtype).T  # (d_in, d_out)
        opts = dict(dtype=w_t.dtype, device=w_t.device, generator=generator)
        if init == "sketch":
            self.U1s.copy_(random_signs((T, k, self.out_features), 1 / math.sqrt(k), **opts))
            self.U2s.copy_(random_signs((T, self.in_features, k), 1 / math.sqrt(k), **opts))
            self.S1s.copy_(w_t @ self.U1s.transpose(1, 2))
            self.S2s.copy_(self.U2s.transpose(1, 2) @ w_t)
            return
        left, sigma, right = low_rank_basis(w_t, 2 * T * k, input_cov=input_cov, generator=generator)
        scaled_left = left * (2 * T * sigma)  # (d_in, 2Tk)
        scaled_right = (2 * T * sigma)[:, None] * right  # (2Tk, d_out)
        # Chunks 0..T-1 feed the S1·U1 halves, chunks T..2T-1 the U2·S2 halves.
        first, second = slice(0, T * k), slice(T * k, 2 * T * k)
        self.U1s.copy_(right[first].reshape(T, k, -1))
        self.S1s.copy_(scaled_left[:, first].reshape(-1, T, k).transpose(0, 1))
        self.U2s.copy_(left[:, second].reshape(-1, T, k).transpose(0, 1))
        self.S2s.copy_(scaled_right[second].reshape(T, k, -1))

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, num_terms: int = 1, low_rank: int = 16, init: str = "svd",
                   input_cov: InputMoment | None = None,
                   generator: torch.Generator | None = None) -> SKLinear:
        """Sketch a (trained) ``nn.Linear`` or ``transformers`` ``Conv1D``, copying weight, bias, device, dtype.

        ``init="svd"`` (the default here) keeps as much of the trained layer as the rank allows.
        """
        if not is_linear_like(layer):
            raise TypeError(f"SKLinear.from_dense expects an nn.Linear (or a transformers Conv1D), "
                            f"got {type(layer).__name__}")
        in_features, out_features = linear_dims(layer)
        weight = linear_weight(layer)
        sketched = cls(in_features, out_features, num_terms, low_rank, W_init=weight,
                       bias=layer.bias is not None, init=init, input_cov=input_cov, generator=generator,
                       device=weight.device, dtype=weight.dtype)
        if layer.bias is not None:
            with torch.no_grad():
                sketched.bias.copy_(layer.bias)
        return sketched

    def to_dense(self) -> nn.Linear:
        dense = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                          device=self.S1s.device, dtype=self.S1s.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.effective_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    @property
    def weight(self) -> SketchedWeight:
        """Metadata of the ``(out_features, in_features)`` weight for parents that read it (:class:`SketchedWeight`)."""
        return self._sketched_weight((self.out_features, self.in_features), self.S1s)

    def effective_weight(self) -> torch.Tensor:
        """The ``(out_features, in_features)`` matrix this layer multiplies by."""
        with torch.no_grad():
            A, B = self._packed_factors()
            return (A @ B).T / (2 * self.num_terms)

    # -- forward ---------------------------------------------------------------------------
    def _packed_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``A = [S1|U2]``, ``B = [U1;S2]``; cached across calls that cannot change the weights."""
        if torch.is_grad_enabled() and (self.S1s.requires_grad or self.S2s.requires_grad):
            self._pack_cache.clear()  # training: weights change every step, packing is cheap
            return self._pack()
        return self._pack_cache.get((self.S1s, self.S2s, self.U1s, self.U2s), self._pack)

    @torch.no_grad()
    def _pack(self) -> tuple[torch.Tensor, torch.Tensor]:
        return pack_left(self.S1s, self.U2s), pack_right(self.U1s, self.S2s)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_nested:
            return per_sequence(self, input)
        if input.shape[-1] != self.in_features:
            raise ValueError(f"SKLinear expected last dimension {self.in_features}, got shape {tuple(input.shape)}")
        A, B = self._packed_factors()
        S1s, S2s, bias = self.S1s, self.S2s, self.bias
        x = input.reshape(-1, self.in_features)
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, A, B = x.to(dtype), A.to(dtype), B.to(dtype)
            S1s, S2s = S1s.to(dtype), S2s.to(dtype)
            bias = bias.to(dtype) if bias is not None else None
        y = sketched_linear(x, S1s, S2s, A, B, bias, 1.0 / (2 * self.num_terms))
        return y.view(*input.shape[:-1], self.out_features)

    # -- bookkeeping -----------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "num_terms": self.num_terms,
                "low_rank": self.low_rank, "bias": self.bias is not None, "init": self.init}

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, num_terms={self.num_terms}, "
                f"low_rank={self.low_rank}, bias={self.bias is not None}, init={self.init!r}")
