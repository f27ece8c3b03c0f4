"""How much of a trained model survives compression, by initialisation: ``sketch`` vs ``svd`` vs ``data_svd``.

    python bench/init_quality.py --workload digits          # ~10 s
    python bench/init_quality.py --workload minilm          # a few minutes on 1 CPU thread
    python bench/init_quality.py --json init_quality.json   # both, and the rows as JSON

* digits: the 64-256-256-10 MLP; fc1 and fc2 become SKLinear of the given rank; test accuracy.
* minilm: all-MiniLM-L6-v2 with all 12 FFN layers (``intermediate.dense``/``output.dense``) at a
  given fraction of their stored weights; mean cosine between the compressed and the original
  sentence embeddings on held-out sentences (articles never used for calibration). Optionally a
  short distillation fine-tune at the smallest ratio shows what training recovers from each init.

``data_svd`` is calibrated on training inputs only (digits: the training split; MiniLM: the
calibration sentences) with :func:`panther.nn.calibration.collect_input_covariances`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from compression import layer_ratio, rank_for_ratio, sketched_copy  # noqa: E402
from digits_data import accuracy, digits_mlp, load_digits_split, train  # noqa: E402

from panther.nn.calibration import collect_input_covariances  # noqa: E402

INITS = ("sketch", "svd", "data_svd")
DIGITS_LAYERS = ("0", "2")  # fc1 (64->256) and fc2 (256->256) of the Sequential MLP


@dataclass
class Row:
    workload: str
    init: str
    rank: int
    layer_ratio: float  # stored weights of the compressed layers / their dense weights
    metric: str
    value: float
    dense_value: float
    fine_tuned: bool = False


def digits_rows(ranks: Sequence[int], seed: int = 0, epochs: int = 40) -> list[Row]:
    """Test accuracy of the digits MLP with fc1 and fc2 sketched at each rank, per init."""
    data = load_digits_split(seed=seed)
    torch.manual_seed(seed)
    dense = train(digits_mlp(), data.x_train, data.y_train, epochs=epochs, seed=seed)
    dense_acc = accuracy(dense, data.x_test, data.y_test)
    covs = collect_input_covariances(dense, DIGITS_LAYERS, data.x_train.split(256))
    rows = []
    for rank in ranks:
        for init in INITS:
            model = sketched_copy(dense, {name: rank for name in DIGITS_LAYERS}, init, covs, seed=seed)
            rows.append(Row("digits MLP", init, rank, layer_ratio(dense, model, DIGITS_LAYERS), "test accuracy",
                            accuracy(model, data.x_test, data.y_test), dense_acc))
    return rows


def minilm_rows(ratios: Sequence[float], distill_epochs: int, n_calibration: int = 512,
                n_held_out: int = 256) -> list[Row]:
    """Held-out embedding cosine of MiniLM with its 12 FFN layers at each weight ratio, per init."""
    from minilm_model import (
        FFN_PATTERN,
        distill,
        embed,
        embedding_cosine,
        input_covariances,
        linear_names,
        load_minilm,
        make_batches,
    )
    from text_data import load_text_split

    text = load_text_split(n_calibration=n_calibration, n_held_out=n_held_out)
    dense = load_minilm()
    names = linear_names(dense, FFN_PATTERN)
    calibration, held_out = make_batches(dense, text.calibration), make_batches(dense, text.held_out)
    reference = embed(dense, held_out)
    covs = input_covariances(dense, names, calibration)
    rows = []
    for ratio in ratios:
        ranks = {name: rank_for_ratio(dense.get_submodule(name), ratio) for name in names}
        for init in INITS:
            model = sketched_copy(dense, ranks, init, covs)
            actual = layer_ratio(dense, model, names)
            rank = max(ranks.values())
            rows.append(Row("MiniLM FFN", init, rank, actual, "held-out cosine",
                            embedding_cosine(model, held_out, reference), 1.0))
            if distill_epochs and ratio == min(ratios):
                distill(model, dense, calibration, epochs=distill_epochs)
                rows.append(Row("MiniLM FFN", init, rank, actual, "held-out cosine",
                                embedding_cosine(model, held_out, reference), 1.0, fine_tuned=True))
            print(f"  {rows[-1]}", flush=True)
    return rows


def markdown(rows: Sequence[Row]) -> str:
    """One line per (workload, rank), one column per init."""
    header = "| workload | metric | rank | layer weight ratio | dense | " + " | ".join(INITS) + " |"
    lines = [header, "|" + "---|" * (5 + len(INITS))]
    keys: dict[tuple, dict[str, Row]] = {}
    for row in rows:
        keys.setdefault((row.workload, row.rank, row.fine_tuned), {})[row.init] = row
    for (workload, rank, tuned), by_init in keys.items():
        first = next(iter(by_init.values()))
        metric = first.metric + (" after distillation" if tuned else "")
        values = " | ".join(f"{by_init[i].value:.3f}" if i in by_init else "-" for i in INITS)
        lines.append(f"| {workload} | {metric} | {rank} | {first.layer_ratio:.2f} | {first.dense_value:.3f} "
                     f"| {values} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("digits", "minilm", "both"), default="both")
    parser.add_argument("--digits-ranks", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--minilm-ratios", type=float, nargs="+", default=[0.31, 0.63, 1.25])
    parser.add_argument("--distill-epochs", type=int, default=1,
                        help="distillation epochs over the calibration sentences at the smallest ratio (0: none)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows: list[Row] = []
    if args.workload in ("digits", "both"):
        rows += digits_rows(args.digits_ranks, seed=args.seed)
    if args.workload in ("minilm", "both"):
        rows += minilm_rows(args.minilm_ratios, args.distill_epochs)
    print(markdown(rows))
    print(f"\n({time.perf_counter() - start:.0f} s, {args.threads} thread(s))")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=2))


if __name__ == "__main__":
    main()
