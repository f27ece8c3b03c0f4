"""How many sampled rows the allocation's int8 errors need: sampled against every calibration row.

On all-MiniLM-L6-v2 (real weights, its 36 encoder Linear layers, the bundled calibration
sentences), each layer's int8 options (int8, smoothed int8, int8 factors of rank-16 and rank-64
data-aware sketches) are measured as the profile measures them
(:class:`panther.tuner._allocation.profile._RowSample`: a uniform row sample, each batch's extreme
rows alongside) with at most ``--rows`` rows per layer, over three sampling seeds, and compared with
the same measurement on every row. Prints the relative deviation's median, 90th percentile and
maximum per sample size.

    python bench/profile_rows.py [--rows 128 256 512]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))

from minilm_model import linear_names, load_minilm, make_batches, run_batch  # noqa: E402
from text_data import load_text_split  # noqa: E402

from panther.nn import SKLinear  # noqa: E402
from panther.nn.calibration import collect_input_covariances  # noqa: E402
from panther.nn.quantized import Int8Linear, Int8SKLinear, SmoothInt8Linear  # noqa: E402
from panther.tuner._allocation import profile  # noqa: E402

SEEDS = 3


def int8_options(dense: nn.Linear, cov: torch.Tensor) -> dict[str, nn.Module]:
    options: dict[str, nn.Module] = {"int8": Int8Linear.from_dense(dense),
                                     "int8_smooth": SmoothInt8Linear.from_dense(dense, cov)}
    for rank in (16, 64):
        sketch = SKLinear.from_dense(dense, 1, rank, init="data_svd", input_cov=cov)
        options[f"rank={rank}+int8"] = Int8SKLinear.from_sketch(sketch)
    return options


@torch.no_grad()
def sampled_errors(dense: nn.Module, seen: list[tuple[torch.Tensor, torch.Tensor]], options: dict[str, nn.Module],
                   rows: int, seed: int) -> dict[str, float]:
    original = profile.SAMPLE_ROWS
    profile.SAMPLE_ROWS = rows
    try:
        sample = profile._RowSample(dense, torch.Generator().manual_seed(seed))
        for x, y in seen:
            sample.add(x, y)
        return sample.errors(dense, options)
    finally:
        profile.SAMPLE_ROWS = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[128, 256, 512])
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_minilm().eval()
    batches = make_batches(model, load_text_split().calibration)
    names = linear_names(model, r"encoder\.layer\.\d+\.")
    covs = collect_input_covariances(model, names, batches, run_batch)
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {name: [] for name in names}
    hooks = [model.get_submodule(name).register_forward_hook(
        lambda module, args, out, name=name: seen[name].append((args[0].detach(), out.detach()))) for name in names]
    with torch.no_grad():
        for batch in batches:
            run_batch(model, batch)
    for hook in hooks:
        hook.remove()
    deviations: dict[int, list[float]] = {rows: [] for rows in args.rows}
    for name in names:
        dense = model.get_submodule(name)
        options = int8_options(dense, covs[name])
        every_row = sampled_errors(dense, seen[name], options, rows=sys.maxsize, seed=0)
        for rows in args.rows:
            for seed in range(SEEDS):
                sampled = sampled_errors(dense, seen[name], options, rows, seed)
                deviations[rows] += [abs(sampled[key] / every_row[key] - 1) for key in options]
    total = sum(x.reshape(-1, x.shape[-1]).shape[0] for x, _ in seen[names[0]])
    print(f"all-MiniLM-L6-v2: {len(names)} layers x 4 int8 options x {SEEDS} seeds; "
          f"{total} calibration rows per layer in {len(batches)} batches")
    print("| rows sampled | median deviation | 90th percentile | max |\n|---|---|---|---|")
    for rows, values in deviations.items():
        values.sort()
        print(f"| {rows} | {statistics.median(values):.1%} | {values[int(0.9 * len(values))]:.1%} | {values[-1]:.1%} |")


if __name__ == "__main__":
    main()
