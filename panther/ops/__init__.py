"""The sketched-linear operator: ``y = scale · (x @ A) @ B + bias``.

``A = [S1 | U2]`` (``d_in x 2r``) and ``B = [U1 ; S2]`` (``2r x d_out``) pack the ``T`` terms of a
sketched linear layer, ``r = T·k``. Only ``S1`` (the first ``r`` columns of ``A``) and ``S2`` (the
last ``r`` rows of ``B``) are learnable, so the backward pass computes just those gradients.
"""

from panther.ops.sketched_linear import pack_left, pack_right, sketched_linear

__all__ = ["pack_left", "pack_right", "sketched_linear"]
