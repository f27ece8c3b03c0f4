"""``SKConv2d``: a sketched, low-rank drop-in for ``nn.Conv2d``.

The layer is two convolutions: ``x`` is convolved with a learnable kernel ``S1s`` into ``2·T·k``
hidden channels per group, and a fixed 1x1 projection ``U1s`` maps them back to the output
channels, averaging the ``2T`` terms. Per group the dense kernel, reshaped to a matrix
``(out/groups, in/groups·kh·kw)``, is replaced by a product of rank at most ``2·T·k``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from panther.nn.base import SketchedModule, SketchedWeight, check_init, check_positive_int, factory_kwargs
from panther.nn.factorize import low_rank_basis, random_signs

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("same", "valid")

IntPair = int | Sequence[int]
Padding = str | int | Sequence[int]


# -- argument checking -------------------------------------------------------------------------
def _pair(name: str, value: IntPair, minimum: int = 1) -> tuple[int, int]:
    """An int or a pair of ints (tuple or list, as JSON gives back) as a tuple, each >= ``minimum``."""
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in pair)):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_padding(padding: Padding, stride: tuple[int, int]) -> str | tuple[int, int]:
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise ValueError(f"padding string must be one of {PADDING_STRINGS}, got {padding!r}")
        if padding == "same" and stride != (1, 1):
            raise ValueError(f"padding='same' needs stride 1 (as for nn.Conv2d), got stride={stride}")
        return padding
    return _pair("padding", padding, minimum=0)


def _check_groups(in_channels: int, out_channels: int, groups: int) -> int:
    check_positive_int("groups", groups)
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must both be "
                         f"divisible by groups ({groups})")
    return groups


def explicit_padding(padding: str | tuple[int, int], kernel_size: tuple[int, int],
                     dilation: tuple[int, int]) -> list[int]:
    """``F.pad`` amounts ``[left, right, top, bottom]`` equal to ``padding`` (``'same'`` pads the extra
    pixel of an even receptive field at the right/bottom, as ``nn.Conv2d`` does)."""
    if padding == "valid":
        return [0, 0, 0, 0]
    if padding == "same":
        amounts: list[int] = []
        for size, step in reversed(list(zip(kernel_size, dilation, strict=True))):
            total = step * (size - 1)
            amounts += [total // 2, total - total // 2]
        return amounts
    return [padding[1], padding[1], padding[0], padding[0]]


# -- cost model ---------------------------------------------------------------------------------
def conv_flops_ratio(in_channels: int, out_channels: int, kernel_size: IntPair, groups: int, num_terms: int,
                     low_rank: int) -> float:
    """Multiply-adds per output pixel of ``SKConv2d`` divided by those of the matching ``nn.Conv2d``.

    The sketched layer costs ``2Tk·in·kh·kw`` (first conv, all groups) ``+ 2Tk·out`` (projection);
    the dense one ``out·(in/groups)·kh·kw``. The first term is also the learnable weight count, so
    the ratio (minus the projection share) is the parameter ratio too. Below 1 the layer is cheaper.
    """
    for name, value in (("in_channels", in_channels), ("out_channels", out_channels),
                        ("num_terms", num_terms), ("low_rank", low_rank)):
        check_positive_int(name, value)
    kh, kw = _pair("kernel_size", kernel_size)
    _check_groups(in_channels, out_channels, groups)
    hidden = 2 * num_terms * low_rank
    sketched = hidden * in_channels * kh * kw + hidden * out_channels
    dense = out_channels * (in_channels // groups) * kh * kw
    return sketched / dense


def conv_is_cheaper(in_channels: int, out_channels: int, kernel_size: IntPair, groups: int, num_terms: int,
                    low_rank: int) -> bool:
    """Whether ``SKConv2d`` needs fewer multiply-adds than ``nn.Conv2d`` (for the tuner's ``"auto"``)."""
    return conv_flops_ratio(in_channels, out_channels, kernel_size, groups, num_terms, low_rank) < 1


# -- the layer ----------------------------------------------------------------------------------
class SKConv2d(SketchedModule):
    r"""Sketched 2-D convolution with effective kernel ``W = 1/(2T) · P · K`` per group.

    ``K`` is the learnable ``S1s (groups·2Tk, in/groups, kh, kw)``: a convolution to ``2Tk`` hidden
    channels per group. ``P`` is the fixed buffer ``U1s (2T, k, out_channels)``: entry ``[l, j, o]``
    weighs hidden channel ``l·k + j`` of output ``o``'s group in output ``o``. Names and shapes (for
    ``groups=1``) match the original Panther ``SKConv2d``, so its state dicts load.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
            device, dtype: as for :class:`torch.nn.Conv2d` (``padding`` may be ``'same'``/``'valid'``;
            pairs may be tuples or lists). Every group gets its own rank-``2Tk`` factorisation.
        num_terms: ``T``, number of sketch terms averaged. It and ``low_rank`` come after
            ``padding_mode`` so that ``nn.Conv2d``'s positional order is kept; their defaults
            (1 and 16) are those of :meth:`from_dense`.
        low_rank: ``k``, rank of each term.
        W_init: dense kernel ``(out_channels, in_channels/groups, kh, kw)`` to approximate;
            Kaiming-initialised (as ``nn.Conv2d``) when omitted.
        init: ``"sketch"``: random-sign ``U1s`` (``±1/sqrt(k)``) and ``S1s = U1s·W``, an unbiased,
            noisy copy of ``W``, for training from scratch. ``"svd"``: from the SVD of each group's
            reshaped kernel, the best rank-``2Tk`` approximation (exact when ``2Tk`` reaches the
            rank). ``"data_svd"``: minimises the output error for patch inputs with second moment
            ``input_cov``.
        input_cov: second moment of the unfolded input patches (``F.unfold`` order, channel-major),
            for ``"data_svd"``: ``(f, f)`` with ``f = in/groups·kh·kw`` shared by all groups,
            ``(groups, f, f)`` per group, or the full ``(in·kh·kw, in·kh·kw)`` matrix.
        generator: RNG for the random parts of the initialisation (the global one when omitted).
    """

    dense_type = nn.Conv2d

    #: Warned (``UserWarning``, once per construction) when the sketch needs at least the dense
    #: convolution's multiply-adds (:func:`conv_is_cheaper`): it then saves nothing. Plain words, so it
    #: also serves as the ``match`` pattern of ``pytest.warns``.
    WARNING_MSG_CONV = ("SKConv2d holds at least as many parameters as the dense convolution it replaces, so it "
                        "saves nothing: use a smaller low_rank or num_terms, or keep nn.Conv2d")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntPair,
        stride: IntPair = 1,
        padding: Padding = 0,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        num_terms: int = 1,
        low_rank: int = 16,
        W_init: torch.Tensor | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "sketch",
        input_cov: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = _check_padding(padding, self.stride)
        self.dilation = _pair("dilation", dilation)
        self.groups = _check_groups(in_channels, out_channels, groups)
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.num_terms = check_positive_int("num_terms", num_terms)
        self.low_rank = check_positive_int("low_rank", low_rank)
        self.init = check_init(init)
        if init == "data_svd" and input_cov is None:
            raise ValueError("init='data_svd' needs input_cov, the second moment of the unfolded input patches")
        if init != "data_svd" and input_cov is not None:
            raise ValueError(f"input_cov is only used by init='data_svd', got init={init!r}")
        if W_init is not None and tuple(W_init.shape) != self._dense_shape():
            raise ValueError(f"W_init must have shape {self._dense_shape()}, got {tuple(W_init.shape)}")
        ratio = conv_flops_ratio(in_channels, out_channels, self.kernel_size, self.groups, num_terms, low_rank)
        if not ratio < 1:
            warnings.warn(f"{self.WARNING_MSG_CONV} (num_terms={num_terms}, low_rank={low_rank}: {ratio:.2f}x the "
                          "dense layer's multiply-adds)", UserWarning, stacklevel=2)
        self._pad_amounts = explicit_padding(self.padding, self.kernel_size, self.dilation)
        covs = self._group_covariances(input_cov) if input_cov is not None else None

        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        hidden = 2 * self.num_terms * self.low_rank
        self.S1s = nn.Parameter(torch.empty(self.groups * hidden, in_channels // groups, *self.kernel_size, **kw))
        self.register_buffer("U1s", torch.empty(2 * self.num_terms, self.low_rank, out_channels, **kw))
        self.bias = nn.Parameter(torch.empty(out_channels, **kw)) if bias else None
        if W_init is None:
            self.reset_parameters(generator=generator)
        else:
            self._init_from_weight(W_init, self.init, covs, generator)
            self._reset_bias(generator)

    def _dense_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def _group_covariances(self, input_cov: torch.Tensor) -> list[torch.Tensor]:
        """One ``(f, f)`` patch covariance per group from any of the accepted ``input_cov`` layouts."""
        f = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
        shape = tuple(input_cov.shape)
        if shape == (f, f):
            return [input_cov] * self.groups
        if shape == (self.groups, f, f):
            return list(input_cov.unbind(0))
        if shape == (self.groups * f, self.groups * f):
            return [input_cov[g * f:(g + 1) * f, g * f:(g + 1) * f] for g in range(self.groups)]
        raise ValueError(f"input_cov must be ({f}, {f}), ({self.groups}, {f}, {f}) or "
                         f"({self.groups * f}, {self.groups * f}), got {shape}")

    # -- initialisation --------------------------------------------------------------------
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Re-draw a Kaiming-uniform dense kernel (as ``nn.Conv2d`` does) and re-derive the factors."""
        weight = torch.empty(self._dense_shape(), device=self.S1s.device, dtype=self.S1s.dtype)
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
        self._init_from_weight(weight, "svd" if self.init == "data_svd" else self.init, None, generator)
        self._reset_bias(generator)

    def _reset_bias(self, generator: torch.Generator | None) -> None:
        if self.bias is not None:
            fan_in = self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in)
            nn.init.uniform_(self.bias, -bound, bound, generator=generator)

    @torch.no_grad()
    def _init_from_weight(self, weight: torch.Tensor, init: str, covs: list[torch.Tensor] | None,
                          generator: torch.Generator | None) -> None:
        """Set ``S1s``/``U1s`` so that the layer approximates the dense ``weight`` by ``init``'s rule."""
        T, k, g = self.num_terms, self.low_rank, self.groups
        hidden, out_per_group = 2 * T * k, self.out_channels // g
        w = weight.detach().to(device=self.S1s.device, dtype=self.S1s.dtype).reshape(g, out_per_group, -1)
        if init == "sketch":
            signs = random_signs((2 * T, k, self.out_channels), 1 / math.sqrt(k), dtype=w.dtype, device=w.device,
                                 generator=generator)
            self.U1s.copy_(signs)
            per_group = signs.reshape(hidden, g, out_per_group)
            self.S1s.copy_(torch.einsum("rgo,gof->grf", per_group, w).reshape(self.S1s.shape))
            return
        projections, kernels = [], []
        for group in range(g):
            # low_rank_basis factors (inputs x outputs) matrices, as its input_cov expects.
            left, sigma, right = low_rank_basis(w[group].T, hidden, input_cov=None if covs is None else covs[group],
                                                generator=generator)
            projections.append(right)  # (2Tk, out/g): the fixed side
            kernels.append((2 * T * sigma)[:, None] * left.T)  # (2Tk, f): the learnable side, 2T undoes the mean
        self.U1s.copy_(torch.cat(projections, dim=1).reshape(self.U1s.shape))
        self.S1s.copy_(torch.cat(kernels, dim=0).reshape(self.S1s.shape))

    # -- conversion ------------------------------------------------------------------------
    @classmethod
    def from_dense(cls, layer: nn.Module, num_terms: int = 1, low_rank: int = 16, init: str = "svd",
                   input_cov: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> SKConv2d:
        """Sketch a (trained) ``nn.Conv2d``, copying its configuration, kernel, bias, device and dtype.

        ``init="svd"`` (the default here) keeps as much of the trained kernel as the rank allows.
        """
        if not isinstance(layer, nn.Conv2d):
            raise TypeError(f"SKConv2d.from_dense expects an nn.Conv2d, got {type(layer).__name__}")
        sketched = cls(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                       layer.dilation, layer.groups, layer.bias is not None, layer.padding_mode, num_terms,
                       low_rank, W_init=layer.weight, init=init, input_cov=input_cov, generator=generator,
                       **factory_kwargs(layer))
        if layer.bias is not None:
            with torch.no_grad():
                sketched.bias.copy_(layer.bias)
        return sketched

    def to_dense(self) -> nn.Conv2d:
        dense = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                          self.dilation, self.groups, self.bias is not None, self.padding_mode,
                          device=self.S1s.device, dtype=self.S1s.dtype)
        with torch.no_grad():
            dense.weight.copy_(self.effective_weight())
            if self.bias is not None:
                dense.bias.copy_(self.bias)
        return dense

    @property
    def weight(self) -> SketchedWeight:
        """Metadata of the dense kernel, for parents that read it (see :class:`~panther.nn.base.SketchedWeight`)."""
        return self._sketched_weight(self._dense_shape(), self.S1s)

    def effective_weight(self) -> torch.Tensor:
        """The ``(out_channels, in_channels/groups, kh, kw)`` kernel this layer convolves with."""
        with torch.no_grad():
            g = self.groups
            projection = self.U1s.reshape(-1, g, self.out_channels // g)
            kernels = self.S1s.reshape(g, projection.shape[0], -1)
            merged = torch.einsum("rgo,grf->gof", projection, kernels) / (2 * self.num_terms)
            return merged.reshape(self._dense_shape())

    # -- forward ---------------------------------------------------------------------------
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self.padding_mode == "zeros":
            hidden = F.conv2d(input, self.S1s, None, self.stride, self.padding, self.dilation, self.groups)
        else:
            padded = F.pad(input, self._pad_amounts, mode=self.padding_mode)
            hidden = F.conv2d(padded, self.S1s, None, self.stride, 0, self.dilation, self.groups)
        # Output o reads the 2Tk hidden channels of its group: a grouped 1x1 conv (a matmul over channels).
        projection = self.U1s.reshape(-1, self.out_channels).T.reshape(self.out_channels, -1, 1, 1)
        return F.conv2d(hidden, projection / (2 * self.num_terms), self.bias, groups=self.groups)

    # -- bookkeeping -----------------------------------------------------------------------
    def hyperparameters(self) -> dict[str, Any]:
        padding = self.padding if isinstance(self.padding, str) else list(self.padding)
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_size": list(self.kernel_size), "stride": list(self.stride), "padding": padding,
                "dilation": list(self.dilation), "groups": self.groups, "bias": self.bias is not None,
                "padding_mode": self.padding_mode, "num_terms": self.num_terms, "low_rank": self.low_rank,
                "init": self.init}

    def extra_repr(self) -> str:
        text = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"
        if self.padding != (0, 0):
            text += f", padding={self.padding!r}"
        if self.dilation != (1, 1):
            text += f", dilation={self.dilation}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        if self.padding_mode != "zeros":
            text += f", padding_mode={self.padding_mode!r}"
        return text + f", num_terms={self.num_terms}, low_rank={self.low_rank}, init={self.init!r}"
