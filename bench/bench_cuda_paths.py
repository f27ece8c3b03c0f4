"""The CUDA paths of SKLinear side by side on a lent GPU: the fused kernels, the cuBLAS two-GEMM path
and nn.Linear, with the fraction of the HBM roofline each reaches (its minimal traffic over time and
peak bandwidth), and what the dispatch rule (``panther/ops/_dispatch.py``) picks at each batch.

    PANTHER_CUDA_KERNELS=1 python bench/bench_cuda_paths.py            # d=8192, B 1/32/8192, k 16/64
    PANTHER_CUDA_KERNELS=1 python bench/bench_cuda_paths.py --dtype bfloat16 --json out.json
    python bench/bench_cuda_paths.py --device cpu --dry-run     # every step at toy size on the CPU (CI)

"fused" forces the kernels (fused forward, kernel backward GEMMs); "2-GEMM" is the PyTorch/cuBLAS
path; "rule" is what SKLinear does with the kernels enabled. The JSON file is rewritten after each
point, so a run cut short keeps the points it measured. The dry-run stands in for the extension and the
device (``cpu_standin.py``): it checks the script, not the kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from bench_layers import DTYPES, median_ms, peak_hbm_gbps
from cpu_standin import H200_SM_COUNT, StandInExtension
from torch import nn

from panther.nn import SKLinear
from panther.ops import _cuda_ext, _dispatch, pack_left, pack_right
from panther.ops._torch_path import torch_forward
from panther.ops.sketched_linear import _SketchedLinearFunction

VARIANTS = ("fused", "two_gemm", "linear", "rule")


def traffic_elements(variant: str, mode: str, batch: int, d: int, k: int) -> int:
    """Elements a perfect implementation must move through HBM (T = 1, so 2r = 2k, d_in = d_out = d)."""
    r2 = 2 * k
    if variant == "linear":
        fwd = 2 * batch * d + d * d + d
        return fwd if mode == "fwd" else fwd + 3 * batch * d + 2 * d * d + d  # gY, x, W read; gX, gW, gb written
    fwd = 2 * batch * d + 2 * d * r2 + d
    if mode == "fwd":
        return fwd
    # forward also saves x@A; backward reads gY, x, x@A, A, B and writes gX, gS1, gS2, gb.
    return fwd + batch * r2 + 2 * batch * d + batch * r2 + 2 * d * r2 + batch * d + 2 * d * k + d


@dataclass
class Row:
    dtype: str
    d: int
    batch: int
    k: int
    mode: str
    ms: dict[str, float]
    hbm_fraction: dict[str, float | None]
    rule_picks_fused: bool


@contextlib.contextmanager
def forced_fused(on: bool) -> Iterator[None]:
    """Make every batch "fill" the device, so the fused forward always runs."""
    real = _dispatch.multiprocessor_count
    if on:
        _dispatch.multiprocessor_count = lambda device: 1  # type: ignore[assignment]
    try:
        yield
    finally:
        _dispatch.multiprocessor_count = real  # type: ignore[assignment]


def extension(device: torch.device) -> Any:
    """The compiled kernels on CUDA (which must have built), the PyTorch stand-in on the CPU (dry-run)."""
    if device.type == "cpu":
        return StandInExtension
    ext = _cuda_ext.cuda_extension()
    assert ext is not None, "the CUDA kernels did not build (PANTHER_CUDA_KERNELS=1 set?)"
    return ext


def sm_count(device: torch.device) -> int:
    return H200_SM_COUNT if device.type == "cpu" else _dispatch.multiprocessor_count(device)


def closures(sk: SKLinear, dense: nn.Linear, x: torch.Tensor, mode: str) -> dict[str, Callable[[], object]]:
    with torch.no_grad():
        A, B = pack_left(sk.S1s, sk.U2s), pack_right(sk.U1s, sk.S2s)
    scale = 1.0 / (2 * sk.num_terms)
    ext = extension(x.device)
    if mode == "fwd":
        bias = sk.bias.detach()
        return {"fused": lambda: ext.forward(x, A, B, bias, scale, False),
                "two_gemm": lambda: torch_forward(x, A, B, bias, scale),
                "linear": lambda: torch.nn.functional.linear(x, dense.weight.detach(), dense.bias.detach()),
                "rule": lambda: sk(x)}
    xg = x.detach().requires_grad_()
    grad_y = torch.randn_like(x)
    sk_inputs = [xg, sk.S1s, sk.S2s, sk.bias]

    def two_gemm() -> object:
        y = _SketchedLinearFunction.apply(xg, sk.S1s, sk.S2s, A, B, sk.bias, scale)
        return torch.autograd.grad(y, sk_inputs, grad_y)

    return {"fused": lambda: torch.autograd.grad(sk(xg), sk_inputs, grad_y),
            "two_gemm": two_gemm,
            "linear": lambda: torch.autograd.grad(dense(xg), [xg, dense.weight, dense.bias], grad_y),
            "rule": lambda: torch.autograd.grad(sk(xg), sk_inputs, grad_y)}


def bench_point(d: int, batch: int, k: int, mode: str, dtype: torch.dtype, min_run_time: float, rounds: int,
                hbm_gbps: float | None, device: torch.device) -> Row:
    sk = SKLinear(d, d, num_terms=1, low_rank=k, device=device, dtype=dtype)
    dense = nn.Linear(d, d, device=device, dtype=dtype)
    x = torch.randn(batch, d, device=device, dtype=dtype)
    fns = closures(sk, dense, x, mode)
    best = {name: float("inf") for name in VARIANTS}
    for _ in range(rounds):
        for name in VARIANTS:
            with forced_fused(name == "fused"), torch.no_grad() if mode == "fwd" else contextlib.nullcontext():
                best[name] = min(best[name], median_ms(fns[name], 1, min_run_time))
    max_rank, rows = extension(device).fused_forward_limits(x)
    picks = _dispatch.use_fused_forward(batch, 2 * k, max_rank, rows, sm_count(device))
    frac: dict[str, float | None] = {}
    for name in VARIANTS:
        elements = traffic_elements("linear" if name == "linear" else "sketched", mode, batch, d, k)
        frac[name] = (elements * x.element_size() / (best[name] * 1e-3) / (hbm_gbps * 1e9)) if hbm_gbps else None
    return Row(str(dtype).replace("torch.", ""), d, batch, k, mode, best, frac, picks)


def markdown(rows: list[Row]) -> str:
    head = ("| dtype | d | B | k | mode | fused ms | 2-GEMM ms | nn.Linear ms | rule ms | rule picks | "
            "fused vs 2-GEMM | HBM fused | HBM 2-GEMM | HBM Linear |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    pct = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    for r in rows:
        lines.append(f"| {r.dtype} | {r.d} | {r.batch} | {r.k} | {r.mode} | {r.ms['fused']:.3f} | "
                     f"{r.ms['two_gemm']:.3f} | {r.ms['linear']:.3f} | {r.ms['rule']:.3f} | "
                     f"{'fused' if r.rule_picks_fused else '2-GEMM'} | {r.ms['two_gemm'] / r.ms['fused']:.2f}x | "
                     f"{pct(r.hbm_fraction['fused'])} | {pct(r.hbm_fraction['two_gemm'])} | "
                     f"{pct(r.hbm_fraction['linear'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, default=8192)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 32, 8192])
    parser.add_argument("--k", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (best kept)")
    parser.add_argument("--hbm-gbps", type=float, default=None, help="peak HBM bandwidth (auto for H100/H200)")
    parser.add_argument("--json", help="write rows to this JSON file")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes, stand-in kernels (with --device cpu)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.d, args.batch, args.k, args.min_run_time, args.rounds = 128, [32, 4224], [16, 64], 0.01, 1
        args.hbm_gbps = args.hbm_gbps or 4800.0  # the H200's, so the roofline arithmetic runs too
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_cuda_paths.py: needs a CUDA device (or --device cpu --dry-run)", file=sys.stderr)
        return 2
    if device.type == "cpu" and not args.dry_run:
        print("bench_cuda_paths.py: the CPU runs only the --dry-run (the kernels are CUDA)", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    hbm = peak_hbm_gbps(device, args.hbm_gbps)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU dry-run"
    print(f"# {name}, {sm_count(device)} SMs, peak HBM {hbm} GB/s, "
          f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}", flush=True)
    rows = []
    for batch in args.batch:
        for k in args.k:
            for mode in args.modes:
                rows.append(bench_point(args.d, batch, k, mode, DTYPES[args.dtype], args.min_run_time, args.rounds,
                                        hbm, device))
                print(markdown(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
                if args.json:
                    write_rows(args.json, rows)
    print(markdown(rows))
    return 0


def write_rows(path: str, rows: list[Row]) -> None:
    """Replace ``path`` atomically with every row so far."""
    with open(f"{path}.tmp", "w") as fh:
        json.dump([asdict(r) for r in rows], fh, indent=1)
    os.replace(f"{path}.tmp", path)


if __name__ == "__main__":
    raise SystemExit(main())
