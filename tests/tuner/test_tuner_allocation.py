"""Whole-model allocation (``strategy="allocate"``) against independent expectations.

The accuracy used here is a known formula of the installed layers: ``1 - Σ c_l·e_l²`` with ``e_l``
the relative output error of the layer at ``l`` against its dense original on fixed inputs, and
sensitivities ``c_l`` the allocation is not told. Brute force over every combination gives the true
least-bytes plan that meets the threshold, which the allocation must approach with a few
evaluations (its role-sensitivity correction is what finds the unequal ``c_l``).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from optuna.samplers import RandomSampler
from torch import nn

from panther.kinds import kind_of
from panther.nn import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear, SmoothInt8Linear
from panther.plans import apply_plan, rebuild_sketched_layers
from panther.tuner import LayerConfig, OptunaSearch, ParamsResolver, SKAutoTuner, TuningConfigs, layer_bytes
from panther.tuner._allocate import choose_plan, role_of
from panther.tuner._allocation.profile import profile_layers
from panther.tuner.results import PlanRecord, TuningResults
from panther.tuner.tuner import AllocationUnavailableError

SENSITIVITY = {"first": 1.0, "second": 12.0, "third": 0.2, "fourth": 3.0}
RANKS = [2, 4, 8, 16]


class FourLayers(nn.Module):
    """Four independent linear layers under distinct names (so each is its own role)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        for name, (d_in, d_out) in zip(SENSITIVITY, [(96, 64), (64, 80), (80, 48), (48, 96)], strict=True):
            layer = nn.Linear(d_in, d_out)
            with torch.no_grad():  # a decaying spectrum, as trained layers have
                u, _, vh = torch.linalg.svd(torch.randn(d_out, d_in), full_matrices=False)
                layer.weight.copy_(u @ torch.diag(0.8 ** torch.arange(min(d_in, d_out)).float()) @ vh)
            setattr(self, name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fourth(self.third(self.second(self.first(x))))


class KnownAccuracy:
    """``1 - Σ c_l·e_l²`` of whatever sits at each name; counts its calls (full evaluations)."""

    def __init__(self, model: nn.Module) -> None:
        self.dense = {name: getattr(model, name) for name in SENSITIVITY}
        generator = torch.Generator().manual_seed(5)
        self.inputs = {name: torch.randn(256, layer.in_features, generator=generator)
                       for name, layer in self.dense.items()}
        self.calls = 0

    def error(self, name: str, module: nn.Module) -> float:
        with torch.no_grad():
            reference = self.dense[name](self.inputs[name])
            signal = reference - self.dense[name].bias
            return float((module(self.inputs[name]) - reference).norm() / signal.norm())

    def of_modules(self, modules: dict[str, nn.Module]) -> float:
        return 1.0 - sum(SENSITIVITY[n] * self.error(n, m) ** 2 for n, m in modules.items())

    def __call__(self, model: nn.Module) -> float:
        self.calls += 1
        return self.of_modules({name: getattr(model, name) for name in SENSITIVITY})


def least_bytes_by_brute_force(model: nn.Module, accuracy: KnownAccuracy, threshold: float) -> int:
    options = {name: [layer] + [SKLinear.from_dense(layer, num_terms=1, low_rank=k, init="svd") for k in RANKS]
               for name, layer in accuracy.dense.items()}
    cost = {name: [layer_bytes(m) for m in mods] for name, mods in options.items()}
    loss = {name: [SENSITIVITY[name] * accuracy.error(name, m) ** 2 for m in mods] for name, mods in options.items()}
    best = math.inf
    names = list(options)
    for combo in itertools.product(*(range(len(options[n])) for n in names)):
        if 1.0 - sum(loss[n][i] for n, i in zip(names, combo, strict=True)) >= threshold:
            best = min(best, sum(cost[n][i] for n, i in zip(names, combo, strict=True)))
    return int(best)


def allocating_tuner(model: nn.Module, accuracy: KnownAccuracy, threshold: float, **kwargs) -> SKAutoTuner:
    space = {"num_terms": [1], "low_rank": RANKS, "init": ["svd"]}
    return SKAutoTuner(model, TuningConfigs([LayerConfig(list(SENSITIVITY), space, separate=True)]), accuracy,
                       accuracy_threshold=threshold, strategy="allocate", **kwargs)


@pytest.mark.parametrize("threshold", [0.9, 0.97, 0.995])
def test_allocation_approaches_the_brute_force_optimum_in_few_evaluations(threshold: float):
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    optimum = least_bytes_by_brute_force(model, accuracy, threshold)
    tuner = allocating_tuner(model, accuracy, threshold)
    best = tuner.tune()
    chosen = {name: tuner._layers.build(name, best[name], True) if name in best else accuracy.dense[name]
              for name in SENSITIVITY}
    assert accuracy.of_modules(chosen) >= threshold  # the plan holds the bar by the independent formula
    assert tuner.results.composed_accuracy == pytest.approx(accuracy.of_modules(chosen))
    assert sum(layer_bytes(m) for m in chosen.values()) <= 1.02 * optimum  # exact here; without the correction +12-35 %
    assert accuracy.calls <= 1 + 16  # baseline + plans; brute force needed 5**4 = 625 combinations
    assert {p.phase for p in tuner.results.plans} == {"bisect", "sensitivity"}


def test_role_sensitivities_recover_the_hidden_ones():
    """The measured drop per unit Σe² is the formula's ``c_l`` (exact here: errors add by construction)."""
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = allocating_tuner(model, accuracy, 0.97)
    tuner.tune()
    alone = [p for p in tuner.results.plans if p.phase == "sensitivity"]
    for plan in alone:
        (name, params), = plan.choices.items()
        module = tuner._layers.build(name, params, True)
        expected_drop = SENSITIVITY[name] * accuracy.error(name, module) ** 2
        assert 1.0 - plan.accuracy == pytest.approx(expected_drop, rel=1e-5)


def test_a_trial_budget_bounds_the_plans_and_the_result_still_holds():
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = allocating_tuner(model, accuracy, 0.97, max_total_trials=4)
    best = tuner.tune()
    assert len(tuner.results.plans) <= 4
    chosen = {name: tuner._layers.build(name, best[name], True) if name in best else accuracy.dense[name]
              for name in SENSITIVITY}
    assert accuracy.of_modules(chosen) >= 0.97


def test_the_fastest_plan_wins_unless_a_more_accurate_one_ties_within_noise():
    def plan(number, speed, accuracy, phase="bisect", feasible=True, saved=10):
        return PlanRecord(number=number, phase=phase, choices={"g": {}}, speed=speed, accuracy=accuracy,
                          feasible=feasible, bytes=100 - saved, dense_bytes=100)

    plans = [plan(1, 2.00, 0.96), plan(2, 1.95, 0.99), plan(3, 1.50, 0.999), plan(4, 9.0, 0.5, feasible=False),
             plan(5, None, 0.999, phase="sensitivity")]
    assert choose_plan(plans, by_speed=True).number == 2  # 1.95 is within 3 % of 2.00, and more accurate
    assert choose_plan([plans[0], plans[2]], by_speed=True).number == 1  # 1.50 is not a tie
    by_size = [plan(1, None, 0.96, saved=30), plan(2, None, 0.99, saved=30), plan(3, None, 0.999, saved=5)]
    assert choose_plan(by_size, by_speed=False).number == 2
    assert choose_plan([plans[3], plans[4]], by_speed=True) is None


def timed_int8_tuner(monkeypatch, jitter: float) -> SKAutoTuner:
    """An allocating tune of :func:`digits_like_mlp` by speed where each option's time is given: int8
    and smoothed int8 take 0.4 of dense, one ``jitter`` (relative) faster than the other, as timing
    noise would have it; the whole model's speed is the sum of its layers' noiseless times."""
    times = {Int8Linear: 0.4 * (1 + jitter), SmoothInt8Linear: 0.4 * (1 - jitter)}
    monkeypatch.setattr("panther.tuner._allocation.profile._call_seconds",
                        lambda module, x: times.get(type(module), 1.0))
    model = digits_like_mlp()
    x = torch.randn(128, 64, generator=torch.Generator().manual_seed(0))
    reference = model(x).detach()

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), reference, dim=-1).mean())

    def speed(m: nn.Module) -> float:
        return 1.0 / sum({Int8Linear: 0.4, SmoothInt8Linear: 0.4}.get(type(m.get_submodule(n)), 1.0)
                         for n in ("0", "2", "4"))

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["0", "2", "4"], "auto", separate=True)]), cosine,
                        accuracy_threshold=0.99, optmization_eval_func=speed, calibration_data=[x[:64], x[64:]])
    tuner.tune()
    return tuner


def test_int8_and_smoothed_int8_timed_within_noise_give_one_plan_whichever_was_faster(monkeypatch):
    int8_faster = timed_int8_tuner(monkeypatch, jitter=-0.01).get_best_params()
    smooth_faster = timed_int8_tuner(monkeypatch, jitter=0.01).get_best_params()
    assert int8_faster == smooth_faster
    # per layer, the one of the two with the lower output error on the calibration inputs
    tuner = timed_int8_tuner(monkeypatch, jitter=0.0)
    model, x = tuner.model, torch.cat(tuner._layers.calibration_batches())
    inputs = {"0": x, "2": model[1](model[0](x)), "4": model[3](model[2](model[1](model[0](x))))}
    for name, params in int8_faster.items():
        errors = {}
        for method in ("int8", "int8_smooth"):
            with torch.no_grad():
                layer, dense = tuner._layers.build(name, {"method": method}, True), tuner._layers.originals[name]
                errors[method] = float((layer(inputs[name]) - dense(inputs[name])).norm())
        assert params["method"] == min(errors, key=errors.get)
    # the control: without the tie, which one wins depends on which was timed faster
    monkeypatch.setattr("panther.tuner._allocate.SPEED_TIE", 0.0)
    untied = [timed_int8_tuner(monkeypatch, jitter).get_best_params() for jitter in (-0.01, 0.01)]
    assert untied[0] != untied[1]


def test_profiled_int8_error_is_the_layer_output_error_on_the_calibration_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 48), nn.ReLU(), nn.Linear(48, 16))
    batches = [torch.randn(20, 32) for _ in range(3)]
    candidates = {"2": {"int8": Int8Linear.from_dense(model[2]),
                        "sketch": SKLinear.from_dense(model[2], num_terms=1, low_rank=4, init="svd")}}
    profiles = profile_layers(model.eval(), candidates, {}, batches, lambda m, b: m(b))
    with torch.no_grad():
        inputs = torch.cat([model[1](model[0](b)) for b in batches])
        reference = model[2](inputs)
        signal = (reference - model[2].bias).norm()
        for key, module in candidates["2"].items():
            # each batch is quantized on its own, as the layer sees it in the model
            output = torch.cat([module(model[1](model[0](b))) for b in batches])
            assert profiles["2"].error[key] == pytest.approx(float((output - reference).norm() / signal), rel=1e-6)
            assert profiles["2"].bytes[key] == layer_bytes(module)


def test_auto_offers_int8_only_when_allocating_on_a_device_with_the_kernel(monkeypatch):
    layer = nn.Linear(64, 64)
    resolver = ParamsResolver(nn.Sequential(layer))
    searched = resolver.space_for(layer, data_aware=False)
    allocated = resolver.space_for(layer, data_aware=False, methods=True)
    assert "method" not in searched
    assert allocated["method"].values() == ["sketch", "sketch_int8", "int8"]
    assert allocated["low_rank"].values() == searched["low_rank"].values()  # int8 ignores the rank
    monkeypatch.setattr("panther.nn.int8.int8_available", lambda device: False)
    assert "method" not in resolver.space_for(layer, data_aware=False, methods=True)


def digits_like_mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def test_auto_allocates_methods_and_the_plan_reloads_exactly(tmp_path):
    """A size objective picks int8 where it is cheap; plan JSON and a weights_only checkpoint rebuild it."""
    model = digits_like_mlp()
    x = torch.randn(128, 64)
    reference = model(x).detach()

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), reference, dim=-1).mean())

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["0", "2", "4"], "auto", separate=True)]), cosine,
                        accuracy_threshold=0.99, calibration_data=[x[:64], x[64:]])
    assert tuner.allocates
    tuner.tune()
    types = {type(getattr(model, n)) for n in ("0", "2", "4")}
    assert types == {nn.Linear}  # tune() leaves the model dense
    tuner.apply_best_params()
    installed = {n: type(model.get_submodule(n)) for n in ("0", "2", "4")}
    assert set(installed.values()) & {Int8Linear, Int8SKLinear}  # int8 is cheapest per byte here
    assert cosine(model) >= 0.99 and cosine(model) == pytest.approx(tuner.results.composed_accuracy, abs=1e-6)
    tuned = model(x).detach()

    fresh = digits_like_mlp()
    tuner.save_plan(tmp_path / "plan.json")
    from panther.plans import load_plan

    apply_plan(fresh, load_plan(tmp_path / "plan.json"))
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh(x), tuned)

    torch.save(model.state_dict(), tmp_path / "model.pt")
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    rebuilt = digits_like_mlp()
    rebuild_sketched_layers(rebuilt, state)
    rebuilt.load_state_dict(state, strict=True)
    assert torch.equal(rebuilt(x), tuned)


def test_results_with_plans_round_trip(tmp_path):
    model = FourLayers()
    tuner = allocating_tuner(model, KnownAccuracy(model), 0.97)
    best = tuner.tune()
    tuner.save_tuning_results(tmp_path / "results.pkl")
    loaded = TuningResults.load(tmp_path / "results.pkl")
    assert loaded.plans == tuner.results.plans and loaded.chosen_plan == tuner.results.chosen_plan
    other = allocating_tuner(FourLayers(), KnownAccuracy(model), 0.97)
    other.load_tuning_results(tmp_path / "results.pkl")
    assert other.get_best_params() == best
    assert "whole-model plans evaluated" in other.summary()


def test_strategy_rules():
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    configs = TuningConfigs([LayerConfig(list(SENSITIVITY), {"low_rank": RANKS}, separate=True)])
    assert SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9).allocates
    assert not SKAutoTuner(model, configs, accuracy).allocates  # nothing to spend without a threshold
    # a plain OptunaSearch says where and how long, not how: its study holds the plans
    assert SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9,
                       search_algorithm=OptunaSearch(n_trials=2, seed=0)).allocates
    # a sampler you chose, or an algorithm of your own, is searched with
    assert not SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9,
                           search_algorithm=OptunaSearch(sampler=RandomSampler(seed=0))).allocates

    class MySearch(OptunaSearch):
        pass

    assert not SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9, search_algorithm=MySearch()).allocates
    assert not SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9, strategy="search").allocates
    with pytest.raises(ValueError, match="strategy must be one of"):
        SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.9, strategy="greedy")
    with pytest.raises(ValueError, match="pass accuracy_threshold"):
        SKAutoTuner(model, configs, accuracy, strategy="allocate")


def test_allocate_refuses_layers_it_cannot_measure_before_touching_the_model():
    model = nn.Sequential(nn.Linear(16, 16), nn.TransformerEncoderLayer(16, 2, 32, batch_first=True))
    before = dict(model.named_modules())
    configs = TuningConfigs([LayerConfig(["1.self_attn"], {"num_random_features": [8], "kernel_fn": ["relu"]})])
    with pytest.raises(AllocationUnavailableError, match="RandMultiHeadAttention"):
        SKAutoTuner(model, configs, lambda m: 1.0, accuracy_threshold=0.5, strategy="allocate")
    auto = SKAutoTuner(model, configs, lambda m: 1.0, accuracy_threshold=0.5)
    assert not auto.allocates and dict(model.named_modules()) == before


def test_convolutions_are_allocated_only_with_calibration_data():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    configs = TuningConfigs([LayerConfig({"type": "Conv2d"}, "auto", separate=True)])
    assert not SKAutoTuner(model, configs, lambda m: 1.0, accuracy_threshold=0.5).allocates
    with pytest.raises(AllocationUnavailableError, match="calibration_data"):
        SKAutoTuner(model, configs, lambda m: 1.0, accuracy_threshold=0.5, strategy="allocate")
    batches = [torch.randn(2, 3, 8, 8)]
    tuner = SKAutoTuner(model, configs, lambda m: 1.0, accuracy_threshold=0.5, calibration_data=batches)
    assert tuner.allocates and tuner.tune()


def test_a_generator_of_calibration_batches_serves_both_passes():
    model = digits_like_mlp()
    x = torch.randn(64, 64)
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["0", "2"], "auto", separate=True)]),
                        lambda m: 1.0, accuracy_threshold=0.5, calibration_data=(b for b in x.split(16)))
    assert tuner.tune() and kind_of(model[0]) is not None


def test_roles_replace_whole_block_indices_and_keep_shapes_apart():
    assert role_of("encoder.layer.3.attention.self.query") == role_of("encoder.layer.11.attention.self.query")
    assert role_of("encoder.layer.3.attention.self.query") == "encoder.layer.#.attention.self.query"
    assert role_of("fc1") == "fc1" and role_of("block1.0.conv2") == "block1.#.conv2"
    assert role_of("0", ("Linear", 64, 256)) != role_of("2", ("Linear", 256, 256))
    assert role_of("0", ("Linear", 256, 256)) == role_of("2", ("Linear", 256, 256))


class SkipsALayer(nn.Module):
    """``unused`` is selected but never called (as a head only some tasks run)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.used, self.unused = nn.Linear(64, 64), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.used(x)


def test_a_layer_no_calibration_batch_runs_stays_dense_with_the_reason():
    model = SkipsALayer()
    x = torch.randn(32, 64)
    reference = model(x).detach()

    def cosine(m: nn.Module) -> float:
        with torch.no_grad():
            return float(nn.functional.cosine_similarity(m(x), reference, dim=-1).mean())

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["used", "unused"], "auto", separate=True)]), cosine,
                        accuracy_threshold=0.9, calibration_data=[x])
    best = tuner.tune()
    (failed,) = [r for r in tuner.results.records if r.status == "failed"]
    assert failed.group == "unused" and "no calibration batch ran" in failed.error
    assert set(best) == {"used"}


def test_the_results_table_lists_every_evaluated_plan_per_replaced_layer():
    model = FourLayers()
    tuner = allocating_tuner(model, KnownAccuracy(model), 0.97)
    tuner.tune()
    df = tuner.get_results_dataframe()
    plan_rows = df[df["plan"].notna()]
    expected = sum(len(p.choices) for p in tuner.results.plans)  # one layer per group here
    assert len(plan_rows) == expected
    for plan in tuner.results.plans:
        rows = plan_rows[plan_rows["plan"] == plan.number]
        assert set(rows["layer_name"]) == set(plan.choices) and (rows["accuracy"] == plan.accuracy).all()
    chosen = plan_rows[plan_rows["best"]]
    assert set(chosen["plan"]) == {tuner.results.chosen_plan}
    assert set(chosen["layer_name"]) == set(tuner.get_best_params())
