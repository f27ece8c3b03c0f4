"""End-to-end: the original design's tuning procedure against SKAutoTuner, at one evaluation budget.

    python bench/tune_quality.py --workload digits                 # ~1 min
    python bench/tune_quality.py --workload minilm --budget 60     # needs [transformers] + gensim, ~10 min
    python bench/tune_quality.py --json tune_quality.json --plot docs/tune_digits.png   # needs [plots]

Per workload the same trained model, layers, accuracy threshold and budget of full evaluations
(one evaluation = the whole model on the validation/tuning data) go to:

* ``original``: a re-creation of the original design's procedure: random-sign sketch init
  (``init="sketch"``), every layer tuned on its own with the others dense (an Optuna study per
  layer over ``num_terms`` x ``low_rank``, the budget split evenly), and the per-layer winners
  combined without checking the combination.
* ``SKAutoTuner``: the tuner's defaults (``params="auto"``: ``svd`` init, only ranks cheaper than
  the dense layer; the allowed drop shared between layers by weight; a whole-model trial budget,
  each layer's rank bisected against its share; the composed model re-checked, the worst
  trade-offs stepped up or reverted, and any margin left spent on cheaper ranks).
* ``SKAutoTuner + calibration``: the same, given calibration batches of training inputs, so its
  candidates use ``init="data_svd"`` (input covariances measured once, reused by every trial).

Both searches maximise the fraction of the tuned layers' weights saved subject to the threshold
(digits: validation accuracy one point below the dense model; MiniLM: mean embedding cosine 0.95
on the tuning sentences). Reported: the final metric on held-out data, whether the threshold still
holds there, weight ratios, measured CPU speed-up, evaluations spent and wall time.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from compression import layer_ratio, model_ratio, speedup  # noqa: E402
from digits_data import accuracy, digits_mlp, load_digits_split, train  # noqa: E402

from panther.nn import SKLinear  # noqa: E402
from panther.nn.calibration import collect_input_covariances  # noqa: E402
from panther.nn.rebuild import apply_plan, replace_module  # noqa: E402
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs  # noqa: E402
from panther.tuner.auto import ParamsResolver  # noqa: E402

#: ``num_terms`` choices of the original design's per-layer search.
ORIGINAL_TERMS = (1, 2, 3)


@dataclass
class Workload:
    """A trained model and what the tuning procedures need to know about it."""

    name: str
    model: nn.Module
    layers: list[str]
    metric: str
    tune_metric: Callable[[nn.Module], float]  # what the searches see (validation / tuning data)
    final_metric: Callable[[nn.Module], float]  # reported only (test / held-out data)
    threshold: float  # on both metrics
    forward: Callable[[nn.Module], Any]  # one inference batch, for the speed measurement
    calibration: Sequence[Any]  # batches of training inputs, for data-aware init
    calibration_forward: Callable[[nn.Module, Any], Any] | None = None  # runs one calibration batch


@dataclass
class Outcome:
    workload: str
    procedure: str
    final_metric: float
    threshold: float
    threshold_met: bool
    layers_sketched: int
    layers_tuned: int
    layer_ratio: float
    model_ratio: float
    speedup: float
    evaluations: int
    wall_s: float
    plan: dict[str, dict[str, Any]]


@dataclass
class SearchResult:
    plan: dict[str, dict[str, Any]]  # panther.nn.rebuild plan
    evaluations: int  # full evaluations spent
    wall_s: float
    tuner: SKAutoTuner | None = None  # SKAutoTuner procedures: its records, for the plot


class CountingMetric:
    """Wraps the tuning metric so that every full evaluation is counted, whoever calls it."""

    def __init__(self, metric: Callable[[nn.Module], float]) -> None:
        self.metric, self.calls = metric, 0

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        return self.metric(model)


# -- the two procedures ---------------------------------------------------------------------------
def original_procedure(work: Workload, budget: int, seed: int) -> SearchResult:
    """Sketch init; each layer tuned alone (others dense); winners combined unchecked."""
    start = time.perf_counter()
    metric = CountingMetric(work.tune_metric)
    per_layer = max(1, budget // len(work.layers))
    resolver = ParamsResolver(work.model)
    plan: dict[str, dict[str, Any]] = {}
    for index, name in enumerate(work.layers):
        dense = work.model.get_submodule(name)
        space = resolver.space_for(dense)
        if space is None:
            continue
        ranks = list(space["low_rank"].values())
        dense_weights = sum(p.numel() for p in dense.parameters())
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed + index))
        for _ in range(per_layer):
            trial = study.ask()
            params = {"num_terms": trial.suggest_categorical("num_terms", list(ORIGINAL_TERMS)),
                      "low_rank": trial.suggest_categorical("low_rank", ranks), "init": "sketch"}
            candidate = SKLinear.from_dense(dense, **params)
            replace_module(work.model, name, candidate)
            try:
                score = metric(work.model)
            finally:
                replace_module(work.model, name, dense)
            weights = sum(p.numel() for p in candidate.parameters()) + sum(b.numel() for b in candidate.buffers())
            feasible = score >= work.threshold
            trial.set_user_attr("params", params)
            study.tell(trial, 1.0 - weights / dense_weights if feasible else -1.0 + score)
        if study.best_value >= 0.0:  # infeasible trials score below 0
            plan[name] = {"type": "SKLinear", "params": study.best_trial.user_attrs["params"]}
    return SearchResult(plan, metric.calls, time.perf_counter() - start)


def autotuner_procedure(work: Workload, budget: int, seed: int, calibrated: bool = False) -> SearchResult:
    """SKAutoTuner defaults under a whole-model budget (the model is left unchanged).

    ``calibrated`` passes the calibration batches, so "auto" searches with ``init="data_svd"``.
    """
    start = time.perf_counter()
    metric = CountingMetric(work.tune_metric)
    # the baseline evaluation, and composed checks: typically one per layer when backing off,
    # and at most one per layer when spending spare margin
    reserve = 1 + 2 * len(work.layers)
    tuner = SKAutoTuner(
        model=work.model,
        configs=TuningConfigs([LayerConfig(layer_names=list(work.layers), params="auto", separate=True)]),
        accuracy_eval_func=metric,
        accuracy_threshold=work.threshold,
        search_algorithm=OptunaSearch(n_trials=budget, seed=seed),
        max_total_trials=max(1, budget - reserve),
        calibration_data=work.calibration if calibrated else None,
        calibration_forward=work.calibration_forward,
    )
    tuner.tune()
    return SearchResult(tuner.best_plan(), metric.calls, time.perf_counter() - start, tuner)


def outcome(work: Workload, procedure: str, search: SearchResult, threads: int,
            input_covs: dict[str, torch.Tensor] | None = None) -> Outcome:
    """Rebuild the plan on a fresh copy of the dense model and measure it on held-out data."""
    model = apply_plan(copy.deepcopy(work.model), search.plan, input_covs=input_covs)
    final = work.final_metric(model)
    _, _, ratio = speedup(lambda: work.forward(work.model), lambda: work.forward(model), threads)
    return Outcome(work.name, procedure, final, work.threshold, final >= work.threshold, len(search.plan),
                   len(work.layers), layer_ratio(work.model, model, work.layers), model_ratio(work.model, model),
                   ratio, search.evaluations, search.wall_s, search.plan)


def compare(work: Workload, budget: int, seed: int, threads: int) -> tuple[list[Outcome], SearchResult]:
    """The three rows of one workload, and the calibrated tuner's search (for the plot)."""
    original = original_procedure(work, budget, seed)
    rows = [outcome(work, "original (sketch init, per layer, unchecked)", original, threads)]
    ours = autotuner_procedure(work, budget, seed)
    rows.append(outcome(work, "SKAutoTuner (svd init, composed check)", ours, threads))
    calibrated = autotuner_procedure(work, budget, seed, calibrated=True)
    covs = collect_input_covariances(work.model, list(calibrated.plan), work.calibration, work.calibration_forward)
    rows.append(outcome(work, "SKAutoTuner + calibration (data_svd init)", calibrated, threads, input_covs=covs))
    return rows, calibrated


# -- workloads ------------------------------------------------------------------------------------
def digits_workload(seed: int = 0, epochs: int = 40) -> Workload:
    """The 64-256-256-10 MLP; threshold: validation accuracy one point below the dense model."""
    data = load_digits_split(seed=seed)
    torch.manual_seed(seed)
    model = train(digits_mlp(), data.x_train, data.y_train, epochs=epochs, seed=seed)
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    speed_batch = data.x_val[:256]
    return Workload(
        name="digits MLP", model=model, layers=layers, metric="accuracy",
        tune_metric=lambda m: accuracy(m, data.x_val, data.y_val),
        final_metric=lambda m: accuracy(m, data.x_test, data.y_test),
        threshold=accuracy(model, data.x_val, data.y_val) - 0.01,
        forward=lambda m: m(speed_batch),
        calibration=data.x_train.split(256),
    )


def minilm_workload(threshold: float = 0.95) -> Workload:
    """all-MiniLM-L6-v2's 12 FFN layers; metric: mean cosine to the original embeddings."""
    from minilm_model import FFN_PATTERN, embed, embedding_cosine, linear_names, load_minilm, make_batches, run_batch
    from text_data import load_text_split

    text = load_text_split()
    model = load_minilm()
    tuning, held_out = make_batches(model, text.tuning), make_batches(model, text.held_out)
    calibration = make_batches(model, text.calibration)
    tuning_ref, held_out_ref = embed(model, tuning), embed(model, held_out)
    speed_batch = make_batches(model, text.held_out[:32], batch_size=32)[0]
    return Workload(
        name="all-MiniLM-L6-v2 FFN", model=model, layers=linear_names(model, FFN_PATTERN), metric="embedding cosine",
        tune_metric=lambda m: embedding_cosine(m, tuning, tuning_ref),
        final_metric=lambda m: embedding_cosine(m, held_out, held_out_ref),
        threshold=threshold,
        forward=lambda m: run_batch(m, speed_batch),
        calibration=calibration, calibration_forward=run_batch,
    )


# -- reporting ------------------------------------------------------------------------------------
def markdown(rows: Sequence[Outcome]) -> str:
    lines = ["| workload | procedure | final metric | threshold | met | layers sketched | tuned-layer weights "
             "| whole-model weights "
             "| CPU speed-up | evaluations | wall (s) |", "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r.workload} | {r.procedure} | {r.final_metric:.4f} | {r.threshold:.4f} "
                     f"| {'yes' if r.threshold_met else 'NO'} | {r.layers_sketched}/{r.layers_tuned} "
                     f"| {r.layer_ratio:.3f} | {r.model_ratio:.3f} "
                     f"| {r.speedup:.2f}x | {r.evaluations} | {r.wall_s:.1f} |")
    return "\n".join(lines)


def save_rank_plot(search: SearchResult | None, metric_name: str, whole_threshold: float, path: Path) -> None:
    """Every trial of the tuner, per layer: rank against the tuning metric, with the thresholds.

    Shows each layer's rank bisection closing in on its share of the allowed drop (dotted), and
    the rank finally installed (star), which may be cheaper when the composed model had margin.
    """
    if search is None or search.tuner is None:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        print("(no plot: pip install -e '.[plots]')")
        return
    results, best = search.tuner.results, search.tuner.get_best_params()
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for index, (group, layers) in enumerate(results.groups.items()):
        color = plt.cm.tab20(index % 20)
        trials = sorted((r for r in results.records if r.group == group and r.accuracy is not None),
                        key=lambda r: r.params["num_terms"] * r.params["low_rank"])
        ranks = [2 * r.params["num_terms"] * r.params["low_rank"] for r in trials]
        axes.plot(ranks, [r.accuracy for r in trials], "o-", color=color, alpha=0.7, markersize=4, label=group)
        if group in results.group_thresholds:
            axes.axhline(results.group_thresholds[group], color=color, linestyle=":", linewidth=1)
        if layers[0] in best:
            chosen = best[layers[0]]
            rank = 2 * chosen["num_terms"] * chosen["low_rank"]
            accuracy = next(r.accuracy for r in trials if r.params == chosen)
            axes.plot([rank], [accuracy], "*", color=color, markersize=14, markeredgecolor="black")
    axes.axhline(whole_threshold, color="black", linestyle="--", label="whole-model threshold")
    axes.set_xscale("log", base=2)
    axes.set_xlabel("rank 2·num_terms·low_rank (log scale)")
    axes.set_ylabel(metric_name)
    axes.set_title("SKAutoTuner + calibration: every trial (star: installed)")
    axes.legend(fontsize=6, ncol=2, loc="lower right")
    figure.savefig(path, bbox_inches="tight", dpi=110)
    print(f"plot saved to {path}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=("digits", "minilm", "both"), default="digits")
    parser.add_argument("--budget", type=int, default=40, help="full evaluations per procedure")
    parser.add_argument("--minilm-threshold", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for the speed measurement")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--plot", type=Path, default=None,
                        help="save a plot of every trial of the last workload (needs the [plots] extra)")
    args = parser.parse_args(argv)
    if args.budget < 2:
        parser.error("--budget must be at least 2")
    torch.set_num_threads(args.threads)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows: list[Outcome] = []
    search: SearchResult | None = None
    metric_name, whole_threshold = "metric", math.nan
    workloads = {"digits": lambda: digits_workload(args.seed), "minilm": lambda: minilm_workload(args.minilm_threshold)}
    for name, make in workloads.items():
        if args.workload in (name, "both"):
            work = make()
            new_rows, search = compare(work, args.budget, args.seed, args.threads)
            metric_name = f"validation {work.metric}" if work.metric == "accuracy" else f"tuning {work.metric}"
            whole_threshold = work.threshold
            rows += new_rows
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if args.plot:
        save_rank_plot(search, metric_name, whole_threshold, args.plot)


if __name__ == "__main__":
    main()
