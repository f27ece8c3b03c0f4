"""Speed of SKLinear against nn.Linear, the per-term loop of the original design and (on CUDA) the
two-GEMM PyTorch/cuBLAS path, beside the FLOP roofline ratio ``d_in·d_out / (2·T·k·(d_in+d_out))``.

    python bench/bench_layers.py --quick                       # the CPU target point, ~1 min
    python bench/bench_layers.py --d 4096 --batch 512 --terms 1x64 --threads 2
    python bench/bench_layers.py --device cuda --d 8192 --batch 8192 --terms 1x16 --modes fwd
    python bench/bench_layers.py --overhead                    # small-batch CPU dispatch overhead

Times are medians of ``torch.utils.benchmark`` after a warm-up; the variants of a point are measured
in interleaved rounds and the smallest median is kept, which damps noise from shared CPUs.
The CUDA forward also prints the
fraction of the HBM roofline reached (bytes of x, A, B, bias and y over measured time and peak).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as benchmark
from torch import nn

from panther.nn import SKLinear
from panther.ops import pack_left, pack_right, sketched_linear
from panther.ops._torch_path import torch_forward

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# Peak HBM bandwidth (GB/s) by device-name fragment, for the roofline fraction.
HBM_GBPS = {"H200": 4800.0, "H100 PCIe": 2000.0, "H100": 3350.0, "A100": 2039.0}


@dataclass
class Row:
    device: str
    dtype: str
    d: int
    batch: int
    T: int
    k: int
    mode: str
    sklinear_ms: float
    linear_ms: float
    loop_ms: float
    two_gemm_ms: float | None
    speedup_vs_linear: float
    roofline: float
    speedup_vs_loop: float
    vs_two_gemm: float | None
    hbm_fraction: float | None


def roofline_ratio(d_in: int, d_out: int, T: int, k: int) -> float:
    return d_in * d_out / (2 * T * k * (d_in + d_out))


def median_ms(fn: Callable[[], object], threads: int, min_run_time: float, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def best_of_rounds(fns: dict[str, Callable[[], object]], threads: int, min_run_time: float,
                   rounds: int) -> dict[str, float]:
    """Median time (ms) of each closure, measured round-robin; the best round per closure is kept."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            best[name] = min(best[name], median_ms(fn, threads, min_run_time))
    return best


class PerTermLoop(nn.Module):
    """The original design: 4 matmuls per term, summed, divided by 2T, plus bias."""

    def __init__(self, layer: SKLinear) -> None:
        super().__init__()
        self.S1s, self.S2s = nn.Parameter(layer.S1s.detach().clone()), nn.Parameter(layer.S2s.detach().clone())
        self.register_buffer("U1s", layer.U1s.clone())
        self.register_buffer("U2s", layer.U2s.clone())
        self.bias = nn.Parameter(layer.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = self.S1s.shape[0]
        y = x @ self.S1s[0] @ self.U1s[0] + x @ self.U2s[0] @ self.S2s[0]
        for i in range(1, T):
            y = y + x @ self.S1s[i] @ self.U1s[i] + x @ self.U2s[i] @ self.S2s[i]
        return y / (2 * T) + self.bias


def step(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], object]:
    """A closure running one forward (no grad) or forward+backward (grads of x and all parameters)."""
    if mode == "fwd":
        def run() -> object:
            with torch.no_grad():
                return module(x)
        return run
    xg = x.detach().requires_grad_()
    inputs = [xg, *[p for p in module.parameters() if p.requires_grad]]
    grad_out = torch.randn(x.shape[0], module(xg).shape[-1], device=x.device, dtype=x.dtype)
    return lambda: torch.autograd.grad(module(xg), inputs, grad_out)


def peak_hbm_gbps(device: torch.device, override: float | None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((gbps for key, gbps in HBM_GBPS.items() if key in name), None)


def bench_point(d: int, batch: int, T: int, k: int, mode: str, device: torch.device, dtype: torch.dtype,
                threads: int, min_run_time: float, rounds: int, hbm_gbps: float | None) -> Row:
    sk = SKLinear(d, d, num_terms=T, low_rank=k, device=device, dtype=dtype)
    dense = nn.Linear(d, d, device=device, dtype=dtype)
    loop = PerTermLoop(sk)
    x = torch.randn(batch, d, device=device, dtype=dtype)
    fns = {"sk": step(sk, x, mode), "dense": step(dense, x, mode), "loop": step(loop, x, mode)}
    if device.type == "cuda":
        with torch.no_grad():
            A, B = pack_left(sk.S1s, sk.U2s), pack_right(sk.U1s, sk.S2s)
        bias, scale = sk.bias.detach(), 1.0 / (2 * T)
        fns["two"] = ((lambda: torch_forward(x, A, B, bias, scale)) if mode == "fwd"
                      else step(_TwoGemmLayer(sk), x, mode))
    times = best_of_rounds(fns, threads, min_run_time, rounds)
    t_sk, t_dense, t_loop, t_two = times["sk"], times["dense"], times["loop"], times.get("two")
    frac = None
    if device.type == "cuda" and mode == "fwd" and hbm_gbps:
        nbytes = x.element_size() * (x.numel() + A.numel() + B.numel() + bias.numel() + batch * d)
        frac = nbytes / (t_sk * 1e-3) / (hbm_gbps * 1e9)
    return Row(str(device), str(dtype).replace("torch.", ""), d, batch, T, k, mode, t_sk, t_dense, t_loop, t_two,
               t_dense / t_sk, roofline_ratio(d, d, T, k), t_loop / t_sk,
               None if t_two is None else t_two / t_sk, frac)


class _TwoGemmLayer(nn.Module):
    """SKLinear's math forced through the PyTorch (cuBLAS) path, for the CUDA comparison."""

    def __init__(self, layer: SKLinear) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from panther.ops.sketched_linear import _SketchedLinearFunction

        sk = self.layer
        with torch.no_grad():
            A, B = pack_left(sk.S1s, sk.U2s), pack_right(sk.U1s, sk.S2s)
        return _SketchedLinearFunction.apply(x, sk.S1s, sk.S2s, A, B, sk.bias, 1.0 / (2 * sk.num_terms))


def markdown(rows: list[Row]) -> str:
    head = ("| device | dtype | d | B | T | k | mode | SKLinear ms | nn.Linear ms | loop ms | 2-GEMM ms "
            "| vs Linear | roofline | vs loop | vs 2-GEMM | HBM frac |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    for r in rows:
        lines.append(f"| {r.device} | {r.dtype} | {r.d} | {r.batch} | {r.T} | {r.k} | {r.mode} | "
                     f"{r.sklinear_ms:.3f} | {r.linear_ms:.3f} | {r.loop_ms:.3f} | {fmt(r.two_gemm_ms, '.3f')} | "
                     f"{r.speedup_vs_linear:.2f}x | {r.roofline:.1f}x | {r.speedup_vs_loop:.2f}x | "
                     f"{fmt(r.vs_two_gemm, '.2f')} | {fmt(r.hbm_fraction, '.1%')} |")
    return "\n".join(lines)


def _summed_backward(fn: Callable[..., torch.Tensor], *args: object) -> Callable[[], None]:
    """A timed step: ``fn(*args).sum().backward()`` (arguments bound now, not at call time)."""
    return lambda: fn(*args).sum().backward()


def overhead_table(threads: int, min_run_time: float, rounds: int) -> str:
    """Small-batch CPU cost: the autograd.Function path (used) vs the custom op vs nn.Linear."""
    op = torch.ops.panther.sketched_linear_forward.default
    lines = ["| d | B | mode | Function path us | custom op us | nn.Linear us |", "|---|---|---|---|---|---|"]
    for d in (768, 4096):
        for batch in (1, 8, 32):
            sk = SKLinear(d, d, num_terms=1, low_rank=16)
            dense = nn.Linear(d, d)
            x = torch.randn(batch, d)
            xg = x.clone().requires_grad_()
            A, B = pack_left(sk.S1s.detach(), sk.U2s), pack_right(sk.U1s, sk.S2s.detach())
            S1, S2, bias = sk.S1s, sk.S2s, sk.bias
            S1f, S2f, bias_f = S1.detach(), S2.detach(), bias.detach()
            cases: dict[str, dict[str, Callable[[], object]]] = {
                "fwd": {"fn": functools.partial(sketched_linear, x, S1f, S2f, A, B, bias_f, 0.5),
                        "op": functools.partial(op, x, S1f, S2f, A, B, bias_f, 0.5, False),
                        "dense": step(dense, x, "fwd")},
                "fwd+bwd": {"fn": _summed_backward(sketched_linear, xg, S1, S2, A, B, bias, 0.5),
                            "op": _summed_backward(lambda *a: op(*a)[0], xg, S1, S2, A, B, bias, 0.5, True),
                            "dense": _summed_backward(dense, xg)},
            }
            for mode, fns in cases.items():
                t = best_of_rounds(fns, threads, min_run_time, rounds)
                lines.append(f"| {d} | {batch} | {mode} | {t['fn'] * 1e3:.1f} | {t['op'] * 1e3:.1f} | "
                             f"{t['dense'] * 1e3:.1f} |")
    return "\n".join(lines)


def parse_terms(text: str) -> list[tuple[int, int]]:
    try:
        return [tuple(int(v) for v in item.split("x")) for item in text.split(",")]  # type: ignore[misc]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--terms wants TxK[,TxK...], got {text!r}") from exc


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--d", type=int, nargs="+", default=[1024, 4096, 8192])
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 512, 4096])
    parser.add_argument("--terms", type=parse_terms, default=[(1, 16), (1, 64), (2, 32), (3, 128)],
                        help="comma-separated TxK pairs, e.g. 1x16,2x32")
    parser.add_argument("--modes", nargs="+", choices=["fwd", "fwdbwd"], default=["fwd", "fwdbwd"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on CPU (default 2)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved measurement rounds (best kept)")
    parser.add_argument("--hbm-gbps", type=float, default=None, help="peak HBM bandwidth (auto for H100/H200)")
    parser.add_argument("--quick", action="store_true", help="only the target point d=4096, B=512, T=1, k=64 "
                        "(CPU) or d=8192, B=8192, T=1, k=16 (CUDA)")
    parser.add_argument("--overhead", action="store_true", help="small-batch CPU dispatch overhead table")
    parser.add_argument("--csv", help="write rows to this CSV file")
    parser.add_argument("--json", help="write rows to this JSON file")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.overhead:
        print(overhead_table(args.threads, args.min_run_time, args.rounds))
        return 0
    if args.quick:
        args.d, args.batch, args.terms = ([8192], [8192], [(1, 16)]) if device.type == "cuda" else (
            [4096], [512], [(1, 64)])
    hbm = peak_hbm_gbps(device, args.hbm_gbps)
    if device.type == "cuda":
        print(f"# {torch.cuda.get_device_name(device)}, TF32 matmul allowed: "
              f"{torch.backends.cuda.matmul.allow_tf32}, peak HBM {hbm} GB/s", flush=True)
    rows = []
    for d in args.d:
        for batch in args.batch:
            for T, k in args.terms:
                for mode in args.modes:
                    row = bench_point(d, batch, T, k, "fwd" if mode == "fwd" else "fwd+bwd", device,
                                      DTYPES[args.dtype], args.threads, args.min_run_time, args.rounds, hbm)
                    rows.append(row)
                    print(markdown([row]).splitlines()[-1], file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(asdict(rows[0])))
            writer.writeheader()
            writer.writerows(asdict(r) for r in rows)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump([asdict(r) for r in rows], fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
