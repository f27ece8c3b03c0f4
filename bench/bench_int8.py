"""Int8 per-layer methods on CPU, side by side in one run: which kernel, and whether sketch + int8 holds.

    bash run.sh python bench/bench_int8.py            # 1 thread, x of 2048 rows
    bash run.sh python bench/bench_int8.py --threads 4

1. Kernels for ``y = x·Wᵀ + b`` (int8 weights per output channel, activations quantized per call):
   panther's ``Int8Linear`` (``torch.ops.quantized.linear_dynamic``), ``torch.ao``'s
   ``quantize_dynamic`` module (same kernel, deprecated API), ``torch._int_mm`` with per-row
   activation scales, and ``torchao`` eager and under ``torch.compile`` when it is installed
   (``pip install torchao``). Speed-up: median over paired back-to-back runs against fp32.
2. Sketch + int8 on a trained-like layer (singular values ``i^-0.7``, correlated inputs,
   ``init="data_svd"``): the output error against the dense layer of the fp32 sketch, of its factors
   quantized per tensor (the issue's collapsed variant), per channel, and per channel with the first
   factor's columns normalised (``Int8SKLinear``), next to ``Int8Linear`` and the speed of each.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable

import torch
from torch import nn

from panther.nn.int8 import int8_linear, pack, quantize_per_channel
from panther.nn.linear import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear

Fn = Callable[[torch.Tensor], torch.Tensor]


def speedup(reference: Fn, candidate: Fn, x: torch.Tensor, reps: int) -> float:
    """Median of ``time(reference) / time(candidate)`` over back-to-back pairs (robust to load drift)."""
    ratios = []
    with torch.inference_mode():
        for _ in range(3):
            reference(x), candidate(x)
        for _ in range(reps):
            start = time.perf_counter()
            reference(x)
            middle = time.perf_counter()
            candidate(x)
            ratios.append((middle - start) / (time.perf_counter() - middle))
    return statistics.median(ratios)


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    return ((y - reference).norm() / reference.norm()).item()


def int_mm_linear(dense: nn.Linear) -> Fn:
    """``torch._int_mm`` with symmetric per-row activation scales (the composition torchao uses)."""
    q, scale = quantize_per_channel(dense.weight)
    q_t, bias = q.T.contiguous(), dense.bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        x_scale = x.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127
        x_q = torch.round(x / x_scale).clamp(-127, 127).to(torch.int8)
        return torch._int_mm(x_q, q_t) * (x_scale * scale) + bias

    return forward


def torchao_linears(dense: nn.Linear) -> dict[str, Fn]:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return {}
    module = copy.deepcopy(dense)
    quantize_(module, Int8DynamicActivationInt8WeightConfig())
    return {"torchao eager": module, "torchao compile": torch.compile(module)}


def kernels(x_rows: int, reps: int) -> None:
    print("1. int8 kernels: speed-up over fp32 nn.Linear (relative output error)")
    for d_in, d_out in [(384, 1536), (1536, 384), (384, 384)]:
        dense = nn.Linear(d_in, d_out).eval()
        x = torch.randn(x_rows, d_in)
        candidates: dict[str, Fn] = {
            "panther Int8Linear": Int8Linear.from_dense(dense).eval(),
            "torch.ao quantize_dynamic": torch.ao.quantization.quantize_dynamic(
                nn.Sequential(copy.deepcopy(dense)), {nn.Linear}, dtype=torch.qint8),
            "torch._int_mm": int_mm_linear(dense),
            **torchao_linears(dense),
        }
        with torch.inference_mode():
            reference = dense(x)
            cells = [f"{name} {speedup(dense, f, x, reps):.2f}x ({relative_error(f(x), reference):.4f})"
                     for name, f in candidates.items()]
        print(f"  {d_in}->{d_out}: " + ", ".join(cells))


def trained_like(d_in: int, d_out: int, rows: int) -> tuple[nn.Linear, torch.Tensor]:
    n = min(d_in, d_out)
    left, _ = torch.linalg.qr(torch.randn(d_out, n))
    right, _ = torch.linalg.qr(torch.randn(d_in, n))
    dense = nn.Linear(d_in, d_out).eval()
    with torch.no_grad():
        dense.weight.copy_(left @ torch.diag(torch.arange(1, n + 1.0) ** -0.7) @ right.T)
    x = torch.randn(rows, d_in) @ (torch.randn(d_in, d_in) / d_in**0.5)
    return dense, x


def chained(first: tuple[torch.Tensor, torch.Tensor], second: tuple[torch.Tensor, torch.Tensor],
            bias: torch.Tensor) -> Fn:
    """Two int8 products from given (int8, scales) factors: the variants Int8SKLinear did not take."""
    packed = pack(*first, None), pack(*second, bias)
    return lambda x: int8_linear(int8_linear(x, packed[0]), packed[1])


def per_tensor(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    scale = weight.abs().amax().clamp_min(1e-12) / 127
    return torch.round(weight / scale).clamp(-127, 127).to(torch.int8), scale.expand(weight.shape[0]).contiguous()


def sketch_and_int8(x_rows: int, reps: int) -> None:
    print("2. sketch + int8, data_svd: relative error to the dense layer (to the fp32 sketch) / speed-up over fp32 "
          "dense")
    for d_in, d_out, k in [(384, 1536, 32), (384, 1536, 96), (1536, 384, 96)]:
        dense, x = trained_like(d_in, d_out, x_rows)
        sketch = SKLinear.from_dense(dense, 1, k, init="data_svd", input_cov=x.T @ x / len(x)).eval()
        A, B = sketch._packed_factors()
        A, B = A.detach(), B.detach() / 2
        variants: dict[str, Fn] = {
            "fp32 sketch": sketch,
            "factors per-tensor": chained(per_tensor(A.T), per_tensor(B.T), sketch.bias),
            "per-channel": chained(quantize_per_channel(A.T), quantize_per_channel(B.T), sketch.bias),
            "Int8SKLinear (per-channel, unit columns)": Int8SKLinear.from_sketch(sketch).eval(),
            "Int8Linear": Int8Linear.from_dense(dense).eval(),
        }
        with torch.inference_mode():
            reference, sketched = dense(x), sketch(x)
            cells = [f"{name} {relative_error(f(x), reference):.4f} ({relative_error(f(x), sketched):.4f}) / "
                     f"{speedup(dense, f, x, reps):.2f}x" for name, f in variants.items()]
        print(f"  {d_in}->{d_out} rank {2 * k}: " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    warnings.simplefilter("ignore")  # torch.ao's deprecation and torchao's optional-kernel notices
    print(f"torch {torch.__version__}, engine {torch.backends.quantized.engine}, {args.threads} thread(s), "
          f"x of {args.rows} rows")
    kernels(args.rows, args.reps)
    sketch_and_int8(args.rows, args.reps)


if __name__ == "__main__":
    main()
