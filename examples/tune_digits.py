"""Main job: train a digits MLP, then let SKAutoTuner pick sketched layers that keep its accuracy.

Runs offline in about a minute on 2 CPU cores:  ``bash run.sh tune`` (or ``python examples/tune_digits.py``).
The tuner takes every Linear layer with ``params="auto"`` and its defaults: with calibration data
(training inputs) it weighs each layer's options (sketch ranks, int8, sketch with int8 factors) by
predicted or measured error and measured time, and bisects one whole-model plan with a few
validations, maximising measured inference throughput subject to validation accuracy at most one
point below the dense model's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from digits_data import accuracy, digits_mlp, load_digits_split, train  # noqa: E402

from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs, layer_bytes  # noqa: E402


def throughput(model: nn.Module, batch: torch.Tensor, repeats: int = 15, calls: int = 20) -> float:
    """Samples per second of inference on ``batch``: median of ``repeats`` timings, after warm-up."""
    model.eval()
    with torch.no_grad():
        for _ in range(3):
            model(batch)
        timings = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                model(batch)
            timings.append(time.perf_counter() - start)
    return calls * len(batch) / statistics.median(timings)


def linear_bytes(model: nn.Module) -> int:
    """Bytes the model's linear layers store (int8 ones count one byte per weight)."""
    return sum(layer_bytes(m) for m in model.children())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=40, help="most validations the tuner may spend")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for this size)")
    parser.add_argument("--plan", type=Path, default=None, help="write the chosen plan as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    data = load_digits_split(seed=args.seed)
    dense = train(digits_mlp(), data.x_train, data.y_train, seed=args.seed)
    dense_val = accuracy(dense, data.x_val, data.y_val)
    threshold = dense_val - 0.01
    print(f"dense model: val acc {dense_val:.4f}, test acc {accuracy(dense, data.x_test, data.y_test):.4f}; "
          f"threshold {threshold:.4f}")

    model = copy.deepcopy(dense)
    speed_batch = data.x_val[:256]
    tuner = SKAutoTuner(
        model=model,
        configs=TuningConfigs([LayerConfig(layer_names={"type": "Linear"}, params="auto", separate=True)]),
        accuracy_eval_func=lambda m: accuracy(m, data.x_val, data.y_val),
        accuracy_threshold=threshold,
        optmization_eval_func=lambda m: throughput(m, speed_batch),
        calibration_data=data.x_train.split(256),
        max_total_trials=args.budget,
        verbose=True,
    )
    tuner.tune()
    tuned = tuner.apply_best_params()
    if args.plan:
        tuner.save_plan(args.plan)

    rows = [("dense", dense), ("sketched", tuned)]
    print("\n| model | val acc | test acc | bytes | samples/s (batch 256) |")
    print("|---|---|---|---|---|")
    for name, net in rows:
        print(f"| {name} | {accuracy(net, data.x_val, data.y_val):.4f} | {accuracy(net, data.x_test, data.y_test):.4f} "
              f"| {linear_bytes(net):,} | {throughput(net, speed_batch):,.0f} |")
    print(f"\nbest parameters: {tuner.get_best_params()}")


if __name__ == "__main__":
    main()
