"""End-to-end: whole plans for a trained model, from the tuner and from what users pick instead.

    python bench/tune_quality.py --workload digits                  # ~1 min
    python bench/tune_quality.py --workload minilm                  # needs [transformers], ~10 min
    python bench/tune_quality.py --workload bert-base-cost          # the tuner's cost at BERT-base size
    python bench/tune_quality.py --workload bert-base-cost --bert-sentences 256 256  # the issue's 256 sentences
    python bench/tune_quality.py --table design --workload digits   # the original design's procedure
    python bench/tune_quality.py --table spec --workload minilm     # the tuner's rows alone, ~4 min
    python bench/tune_quality.py --table design --json out.json --plot docs/tune_digits.png  # [plots]

``--table methods`` (default): per workload, plans for every tuned layer (digits: the MLP's three
Linear layers; MiniLM: all 36 encoder Linear layers) at one bar on held-out data (digits: test
accuracy one point below the dense model's validation accuracy; MiniLM: mean embedding cosine 0.95
to the dense model on sentences from articles nothing else saw). Searches see only the tuning data
(validation digits / tuning sentences) and hold a slightly stricter bound there (``--margin``):

* ``int8 all (torch.ao, per-tensor)``: ``torch.ao.quantization.quantize_dynamic`` on every tuned
  layer with its default qconfig, what a CPU user tries first; and the same ``per-channel``.
* ``accuracy-aware int8``: quantize every layer (per channel); while the bound misses, put back to
  fp32 the layer whose fp32 copy recovers the most (each layer's recovery measured once).
* ``sketch search (today)``: ``SKAutoTuner(strategy="search")`` with calibration, sketch ranks only,
  on the layers a user would hand-pick (MiniLM: the 12 FFN layers; digits: all three).
* ``SKAutoTuner (allocate)``: the tuner's defaults on every tuned layer with calibration data and a
  throughput objective: whole-model allocation over sketch, int8, smoothed int8 and sketch + int8
  per layer.
* ``SKAutoTuner (spec call)``: the same, with the budget given as the API spec writes it,
  ``search_algorithm=OptunaSearch(n_trials=budget, seed=0)`` (``"auto"`` allocates then too).
  After the rows, whether its plan is the allocating row's, layer by layer (what differs if not).

``--table spec``: only the allocating tuner's rows, the default call twice and the spec's call once,
each plan compared with the first one's (the same tuning run three times: how much of a difference
is run-to-run noise). ``--objective bytes`` tunes for bytes instead of throughput: every price is
then a stored size, nothing is timed, and the three plans must be identical.

A ``ceiling`` row replaces every tuned layer by zeros of its output shape: not a plan, but the
speed-up no method for these layers can pass. Reported: the held-out metric and whether it holds
the bar, stored bytes of the tuned layers and of the whole model over dense, the CPU speed-up of
the whole model (median of paired back-to-back runs against dense, in this process), full
evaluations of the tuning metric, and wall time.

``--table design``: the original design's procedure (random-sign sketch init, an Optuna study per
layer, winners combined unchecked) against ``SKAutoTuner``'s per-group search, each layer's rank
bisected against its share of the allowed drop, at one evaluation budget.
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
from panther.nn.surgery import replace_module  # noqa: E402
from panther.plans import apply_plan  # noqa: E402
from panther.tuner import LayerConfig, OptunaSearch, ParamsResolver, SKAutoTuner, TuningConfigs  # noqa: E402

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
    threshold: float  # on both metrics (the methods table tunes against threshold + margin)
    forward: Callable[[nn.Module], Any]  # one inference batch, for the speed measurement
    calibration: Sequence[Any]  # batches of training inputs, for data-aware init
    calibration_forward: Callable[[nn.Module, Any], Any] | None = None  # runs one calibration batch
    hand_picked: list[str] | None = None  # the layers a user sketches by hand (default: ``layers``)


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
    split: tuple[float, float, float] | None = None  # (profile, evaluations, rest) seconds of a tuning run


@dataclass
class SearchResult:
    plan: dict[str, dict[str, Any]]  # panther.plans plan (empty for torch.ao models)
    evaluations: int  # full evaluations spent
    wall_s: float
    tuner: SKAutoTuner | None = None  # SKAutoTuner procedures: its records, for the plot
    split: tuple[float, float, float] | None = None  # allocating tuner: (profile, evaluations, rest) seconds
    build: Callable[[nn.Module], nn.Module] | None = None  # makes the model from a dense copy, if not a plan


class CountingMetric:
    """Wraps a user function so that every call is counted and timed, whoever calls it."""

    def __init__(self, metric: Callable[[nn.Module], float]) -> None:
        self.metric, self.calls = metric, 0
        self.spans: list[tuple[float, float]] = []  # (start, end) of each call

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        started = time.perf_counter()
        try:
            return self.metric(model)
        finally:
            self.spans.append((started, time.perf_counter()))

    @property
    def seconds(self) -> float:
        return sum(end - start for start, end in self.spans)


def cost_split(wall_s: float, metric: CountingMetric, speed: CountingMetric) -> tuple[float, float, float]:
    """``(profile, evaluations, rest)`` seconds of a tuning run: time in the user's functions, the
    tuner's own work before its first plan (calibration, options, profiling: from the end of the
    dense baseline to the second accuracy call), and everything else the tuner did."""
    evaluations = metric.seconds + speed.seconds
    if len(metric.spans) >= 2:
        profile = metric.spans[1][0] - metric.spans[0][1] - sum(
            end - start for start, end in speed.spans if start < metric.spans[1][0])
    else:
        profile = wall_s - evaluations
    return profile, evaluations, wall_s - evaluations - profile


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
        dense_bytes = sum(p.numel() for p in dense.parameters())
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
            study.tell(trial, 1.0 - weights / dense_bytes if feasible else -1.0 + score)
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
        accuracy_threshold=work.threshold, strategy="search",
        search_algorithm=OptunaSearch(n_trials=budget, seed=seed),
        max_total_trials=max(1, budget - reserve),
        calibration_data=work.calibration if calibrated else None,
        calibration_forward=work.calibration_forward,
    )
    tuner.tune()
    return SearchResult(tuner.best_plan(), metric.calls, time.perf_counter() - start, tuner)


def outcome(work: Workload, procedure: str, search: SearchResult, threads: int,
            input_covs: dict[str, torch.Tensor] | None = None, by_bytes: bool = False) -> Outcome:
    """Rebuild the plan on a fresh copy of the dense model and measure it on held-out data.

    Sizes are stored numbers (``by_bytes=False``, the design table) or bytes (the methods table).
    """
    if search.build is not None:
        model = search.build(copy.deepcopy(work.model))
    else:
        model = apply_plan(copy.deepcopy(work.model), search.plan, input_covs=input_covs)
    final = work.final_metric(model)
    _, _, ratio = speedup(lambda: work.forward(work.model), lambda: work.forward(model), threads)
    changed = sum(1 for n in work.layers if type(model.get_submodule(n)) is not type(work.model.get_submodule(n)))
    if by_bytes:
        layers, whole = bytes_ratio(work.model, model, work.layers), bytes_ratio(work.model, model, None)
    else:
        layers, whole = layer_ratio(work.model, model, work.layers), model_ratio(work.model, model)
    return Outcome(work.name, procedure, final, work.threshold, final >= work.threshold, changed,
                   len(work.layers), layers, whole, ratio, search.evaluations, search.wall_s, search.plan,
                   search.split)


# -- the methods table: what users would pick instead, and the allocating tuner ------------------
def stored_bytes(module: nn.Module) -> int:
    """Bytes a module stores; ``torch.ao`` dynamic Linear keeps its int8 weight in packed params."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    total = 0
    for sub in module.modules():
        if isinstance(sub, DynamicLinear):
            weight, bias = sub.weight(), sub.bias()
            scales = weight.q_per_channel_scales().numel() if weight.qscheme() in (
                torch.per_channel_affine, torch.per_channel_symmetric) else 1
            total += weight.numel() + 8 * scales + (0 if bias is None else bias.numel() * bias.element_size())
        else:
            tensors = [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]
            total += sum(t.numel() * t.element_size() for t in tensors)
    return total


def bytes_ratio(dense: nn.Module, tuned: nn.Module, names: Sequence[str] | None) -> float:
    """Stored bytes of ``names`` (``None``: the whole model) in ``tuned`` over ``dense``."""
    if names is None:
        return stored_bytes(tuned) / stored_bytes(dense)
    return (sum(stored_bytes(tuned.get_submodule(n)) for n in names)
            / sum(stored_bytes(dense.get_submodule(n)) for n in names))


def torch_ao_int8(model: nn.Module, names: Sequence[str], per_channel: bool) -> nn.Module:
    """``torch.ao.quantization.quantize_dynamic`` on ``names`` (int8 weights, activations per call)."""
    import warnings

    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.13 deprecates torch.ao.quantization
        return quantize_dynamic(model, {name: qconfig for name in names}, dtype=torch.qint8)


def int8_everywhere(work: Workload, per_channel: bool) -> SearchResult:
    return SearchResult({}, 0, 0.0, build=lambda model: torch_ao_int8(model, work.layers, per_channel))


def accuracy_aware_int8(work: Workload, bound: float) -> SearchResult:
    """Quantize all (per channel); while ``bound`` misses, fall back the layer that recovers most."""
    start = time.perf_counter()
    metric = CountingMetric(work.tune_metric)

    def score(fp32: set[str]) -> float:
        return metric(torch_ao_int8(copy.deepcopy(work.model), [n for n in work.layers if n not in fp32], True))

    fp32: set[str] = set()
    if score(fp32) < bound:
        recovered = {name: score({name}) for name in work.layers}
        for name in sorted(work.layers, key=lambda n: -recovered[n]):
            fp32.add(name)
            if len(fp32) == len(work.layers) or score(fp32) >= bound:
                break
    kept = [n for n in work.layers if n not in fp32]
    return SearchResult({}, metric.calls, time.perf_counter() - start,
                        build=lambda model: torch_ao_int8(model, kept, True))


def sketch_search(work: Workload, bound: float, budget: int, seed: int) -> SearchResult:
    """Today's per-group sketch search with calibration, on the hand-picked layers."""
    start = time.perf_counter()
    metric = CountingMetric(work.tune_metric)
    layers = work.hand_picked or work.layers
    tuner = SKAutoTuner(
        model=work.model,
        configs=TuningConfigs([LayerConfig(layer_names=list(layers), params="auto", separate=True)]),
        accuracy_eval_func=metric, accuracy_threshold=bound, strategy="search",
        search_algorithm=OptunaSearch(n_trials=budget, seed=seed),
        max_total_trials=max(1, budget - 1 - 2 * len(layers)),  # baseline and composed checks
        calibration_data=work.calibration, calibration_forward=work.calibration_forward)
    tuner.tune()
    covs = collect_input_covariances(work.model, list(tuner.best_plan()), work.calibration, work.calibration_forward)
    plan = tuner.best_plan()
    return SearchResult(plan, metric.calls, time.perf_counter() - start, tuner,
                        build=lambda model: apply_plan(model, plan, input_covs=covs))


def throughput(work: Workload, calls: int = 5) -> Callable[[nn.Module], float]:
    """The tuner's speed objective: batches per second of the inference batch (median of ``calls``)."""
    def speed(model: nn.Module) -> float:
        with torch.no_grad():
            work.forward(model)
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                work.forward(model)
                times.append(time.perf_counter() - started)
        return 1.0 / sorted(times)[len(times) // 2]
    return speed


def allocating_tuner(work: Workload, bound: float, budget: int, spec_call: bool = False,
                     by_speed: bool = True) -> SearchResult:
    """``SKAutoTuner`` defaults on every layer: calibration data, a throughput objective, a trial budget.

    ``spec_call``: the budget given as the API spec writes it, ``OptunaSearch(n_trials=budget, seed=0)``,
    instead of ``max_total_trials`` (``"auto"`` allocates with a plain ``OptunaSearch`` too).
    ``by_speed=False``: no speed function, so the tuner saves bytes (prices are stored bytes, not timings)."""
    start = time.perf_counter()
    metric, speed = CountingMetric(work.tune_metric), CountingMetric(throughput(work))
    budget_kwargs: dict[str, Any] = ({"search_algorithm": OptunaSearch(n_trials=budget, seed=0)} if spec_call
                                     else {"max_total_trials": budget - 1})  # plus the baseline
    tuner = SKAutoTuner(
        model=work.model,
        configs=TuningConfigs([LayerConfig(layer_names=list(work.layers), params="auto", separate=True)]),
        accuracy_eval_func=metric, accuracy_threshold=bound, optmization_eval_func=speed if by_speed else None,
        calibration_data=work.calibration, calibration_forward=work.calibration_forward, **budget_kwargs)
    assert tuner.allocates
    tuner.tune()
    wall = time.perf_counter() - start
    plan = tuner.best_plan()
    covs = collect_input_covariances(work.model, list(plan), work.calibration, work.calibration_forward)
    return SearchResult(plan, metric.calls, wall, tuner, build=lambda model: apply_plan(model, plan, input_covs=covs),
                        split=cost_split(wall, metric, speed))


class FreeLayer(nn.Module):
    """Zeros of a linear layer's output shape at almost no cost: the speed ceiling of any method."""

    def __init__(self, out_features: int) -> None:
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(()).expand(*x.shape[:-1], self.out_features)


def free_layers(work: Workload) -> SearchResult:
    def build(model: nn.Module) -> nn.Module:
        for name in work.layers:
            replace_module(model, name, FreeLayer(model.get_submodule(name).out_features))
        return model
    return SearchResult({}, 0, 0.0, build=build)


def compare_methods(work: Workload, budget: int, seed: int, threads: int, margin: float) -> list[Outcome]:
    bound = work.threshold + margin
    procedures = [
        ("ceiling: tuned layers cost nothing (outputs zeros, not a plan)", lambda: free_layers(work)),
        ("int8 all (torch.ao, per-tensor)", lambda: int8_everywhere(work, per_channel=False)),
        ("int8 all (torch.ao, per-channel)", lambda: int8_everywhere(work, per_channel=True)),
        ("accuracy-aware int8 (fall back to fp32)", lambda: accuracy_aware_int8(work, bound)),
        (f"sketch search (today, {len(work.hand_picked or work.layers)} layers)",
         lambda: sketch_search(work, bound, budget, seed)),
        ("SKAutoTuner (allocate: sketch / int8 per layer)", lambda: allocating_tuner(work, bound, budget)),
        (f"SKAutoTuner (spec call: OptunaSearch(n_trials={budget}, seed=0))",
         lambda: allocating_tuner(work, bound, budget, spec_call=True)),
    ]
    rows = []
    for name, run in procedures:
        rows.append(outcome(work, name, run(), threads, by_bytes=True))
        print(markdown(rows[-1:], header=False), flush=True)
    print(report_same_plan(rows[-2], rows[-1]), flush=True)  # the spec's call against the default call
    return rows


def plan_differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]]) -> list[str]:
    """``layer: a's params / b's params`` for every layer the two plans build differently (absent: dense)."""
    def short(entry: dict[str, Any] | None) -> str:
        return "dense" if entry is None else f"{entry.get('type')}{entry.get('params', {})}"

    return [f"{name}: {short(a.get(name))} / {short(b.get(name))}"
            for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]


def report_same_plan(reference: Outcome, other: Outcome) -> str:
    """One line: whether ``other``'s plan is ``reference``'s, or the layers where they differ."""
    differences = plan_differences(reference.plan, other.plan)
    verdict = "identical plans" if not differences else f"{len(differences)} layers differ: " + "; ".join(differences)
    return f"{other.procedure} against {reference.procedure}: {verdict} ({len(reference.plan)} layers replaced)"


def compare_calls(work: Workload, budget: int, threads: int, margin: float, by_speed: bool) -> list[Outcome]:
    """The allocating tuner's rows alone: the default call twice, then the spec's call; each plan
    compared with the first's."""
    bound = work.threshold + margin
    objective = "" if by_speed else ", bytes"
    procedures = [(f"SKAutoTuner (allocate{objective}), run {run}",
                   lambda: allocating_tuner(work, bound, budget, by_speed=by_speed)) for run in (1, 2)]
    procedures.append((f"SKAutoTuner (spec call{objective}: OptunaSearch(n_trials={budget}, seed=0))",
                       lambda: allocating_tuner(work, bound, budget, spec_call=True, by_speed=by_speed)))
    rows = []
    for name, run in procedures:
        rows.append(outcome(work, name, run(), threads, by_bytes=True))
        print(markdown(rows[-1:], header=False), flush=True)
    for row in rows[1:]:
        print(report_same_plan(rows[0], row), flush=True)
    return rows


def compare_design(work: Workload, budget: int, seed: int, threads: int) -> tuple[list[Outcome], SearchResult]:
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


def bert_cost_workload(threshold: float = 0.955, seed: int = 0, eval_sentences: int = 128, tokens: int = 32,
                       calibration_sentences: int = 128, speed_sentences: int = 32) -> Workload:
    """A BERT-base-size encoder (``transformers`` ``BertConfig()``: hidden 768, 12 layers, FFN 3072;
    random weights) for the tuner's cost, not its quality: all 72 encoder Linear layers; metric the
    mean per-token cosine of the last hidden states to the dense model's on ``eval_sentences``
    random token sequences of ``tokens`` tokens (mean-pooled random sequences all look alike: even
    rank-1 layers keep 0.98 of that cosine); calibration batches of 8 such sequences."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    model = BertModel(BertConfig(), add_pooling_layer=False).eval()
    generator = torch.Generator().manual_seed(seed)

    def ids(count: int) -> torch.Tensor:
        return torch.randint(1000, 30000, (count, tokens), generator=generator)

    def run(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        return m(input_ids=batch).last_hidden_state

    held_out, tuning = ids(eval_sentences), ids(eval_sentences)
    calibration, speed_batch = list(ids(calibration_sentences).split(8)), ids(speed_sentences)
    with torch.no_grad():
        tuning_ref, held_out_ref = run(model, tuning), run(model, held_out)

    def cosine(m: nn.Module, batch: torch.Tensor, reference: torch.Tensor) -> float:
        with torch.no_grad():
            return torch.nn.functional.cosine_similarity(run(m, batch), reference, dim=-1).mean().item()

    layers = [name for name, m in model.named_modules() if name.startswith("encoder.") and isinstance(m, nn.Linear)]
    return Workload(
        name="BERT-base size (random weights)", model=model, layers=layers, metric="token cosine",
        tune_metric=lambda m: cosine(m, tuning, tuning_ref),
        final_metric=lambda m: cosine(m, held_out, held_out_ref),
        threshold=threshold, forward=lambda m: run(m, speed_batch),
        calibration=calibration, calibration_forward=run)


def minilm_workload(threshold: float = 0.95, all_layers: bool = False) -> Workload:
    """all-MiniLM-L6-v2's 12 FFN layers (``all_layers``: all 36 encoder Linear layers, the FFN ones
    hand-picked); metric: mean cosine to the original embeddings."""
    from minilm_model import FFN_PATTERN, embed, embedding_cosine, linear_names, load_minilm, make_batches, run_batch
    from text_data import load_text_split

    text = load_text_split()
    model = load_minilm()
    tuning, held_out = make_batches(model, text.tuning), make_batches(model, text.held_out)
    calibration = make_batches(model, text.calibration)
    tuning_ref, held_out_ref = embed(model, tuning), embed(model, held_out)
    speed_batch = make_batches(model, text.held_out[:32], batch_size=32)[0]
    every = linear_names(model, r"encoder\.layer\.\d+\.")
    ffn = linear_names(model, FFN_PATTERN)
    return Workload(
        name="all-MiniLM-L6-v2" if all_layers else "all-MiniLM-L6-v2 FFN", model=model,
        layers=every if all_layers else ffn, hand_picked=ffn, metric="embedding cosine",
        tune_metric=lambda m: embedding_cosine(m, tuning, tuning_ref),
        final_metric=lambda m: embedding_cosine(m, held_out, held_out_ref),
        threshold=threshold,
        forward=lambda m: run_batch(m, speed_batch),
        calibration=calibration, calibration_forward=run_batch,
    )


# -- reporting ------------------------------------------------------------------------------------
def markdown(rows: Sequence[Outcome], header: bool = True, size: str = "weights") -> str:
    lines = ["| workload | procedure | final metric | threshold | met | layers replaced | tuned-layer " + size
             + " | whole-model " + size + " | CPU speed-up | evaluations | wall (s) | profile / evaluations / rest (s)"
             " | tuner's own time / evaluations |", "|" + "---|" * 13]
    if not header:
        lines = []
    for r in rows:
        split = own = "–"
        if r.split is not None:
            profile, evaluations, rest = r.split
            split = f"{profile:.1f} / {evaluations:.1f} / {rest:.1f}"
            own = f"{(profile + rest) / evaluations:.0%}" if evaluations > 0 else "–"
        lines.append(f"| {r.workload} | {r.procedure} | {r.final_metric:.4f} | {r.threshold:.4f} "
                     f"| {'yes' if r.threshold_met else 'NO'} | {r.layers_sketched}/{r.layers_tuned} "
                     f"| {r.layer_ratio:.3f} | {r.model_ratio:.3f} "
                     f"| {r.speedup:.2f}x | {r.evaluations} | {r.wall_s:.1f} | {split} | {own} |")
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
    parser.add_argument("--table", choices=("methods", "design", "spec"), default="methods",
                        help="spec: the allocating tuner alone, by default twice and by the spec's call")
    parser.add_argument("--workload", choices=("digits", "minilm", "both", "bert-base-cost"), default="digits",
                        help="bert-base-cost: the allocating tuner alone on a BERT-base-size encoder with random "
                             "weights, for its wall time and cost split (needs [transformers])")
    parser.add_argument("--bert-sentences", type=int, nargs=2, default=(128, 128), metavar=("CALIBRATION", "EVAL"),
                        help="bert-base-cost: calibration and evaluation sequences (32 tokens each)")
    parser.add_argument("--budget", type=int, default=40, help="full evaluations per procedure")
    parser.add_argument("--objective", choices=("speed", "bytes"), default="speed",
                        help="spec table: the tuner's objective, throughput (priced by timings) or bytes saved "
                             "(priced by stored bytes, no timing noise)")
    parser.add_argument("--margin", type=float, default=0.005,
                        help="methods table: how far above the held-out bar searches hold the tuning metric")
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
    methods = args.table in ("methods", "spec")
    workloads = {"digits": lambda: digits_workload(args.seed),
                 "minilm": lambda: minilm_workload(args.minilm_threshold, all_layers=methods)}
    if args.workload == "bert-base-cost":
        work = bert_cost_workload(seed=args.seed, eval_sentences=args.bert_sentences[1],
                                  calibration_sentences=args.bert_sentences[0])
        rows.append(outcome(work, "SKAutoTuner (allocate: sketch / int8 per layer)",
                            allocating_tuner(work, work.threshold, args.budget), args.threads, by_bytes=True))
    for name, make in workloads.items():
        if args.workload in (name, "both"):
            work = make()
            if args.table == "spec":
                rows += compare_calls(work, args.budget, args.threads, args.margin, args.objective == "speed")
                continue
            if methods:
                rows += compare_methods(work, args.budget, args.seed, args.threads, args.margin)
                continue
            new_rows, search = compare_design(work, args.budget, args.seed, args.threads)
            metric_name = f"validation {work.metric}" if work.metric == "accuracy" else f"tuning {work.metric}"
            whole_threshold = work.threshold
            rows += new_rows
    print(markdown(rows, size="bytes" if methods else "weights"))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if args.plot:
        save_rank_plot(search, metric_name, whole_threshold, args.plot)


if __name__ == "__main__":
    main()
