"""Independent float64 reference for the sketched-linear op: the per-term sum of the original design."""

from __future__ import annotations

import torch
from torch import Tensor


def per_term_reference(x: Tensor, S1s: Tensor, S2s: Tensor, U1s: Tensor, U2s: Tensor,
                       bias: Tensor | None) -> Tensor:
    """``1/(2T) · Σ_i (x·S1_i·U1_i + x·U2_i·S2_i) + bias``, term by term (no packing)."""
    T = S1s.shape[0]
    y = sum(x @ S1s[i] @ U1s[i] + x @ U2s[i] @ S2s[i] for i in range(T)) / (2 * T)
    return y if bias is None else y + bias


def make_factors(T: int, d_in: int, k: int, d_out: int, dtype: torch.dtype = torch.float64,
                 device: str = "cpu", bias: bool = True) -> dict[str, Tensor | None]:
    """Random S/U factors and bias, S's and bias requiring grad, U's fixed."""
    opts = dict(dtype=dtype, device=device)
    return {
        "S1s": torch.randn(T, d_in, k, **opts).requires_grad_(),
        "S2s": torch.randn(T, k, d_out, **opts).requires_grad_(),
        "U1s": torch.randn(T, k, d_out, **opts),
        "U2s": torch.randn(T, d_in, k, **opts),
        "bias": torch.randn(d_out, **opts).requires_grad_() if bias else None,
    }
