"""Whole-model trial budget, and reuse of results for duplicate proposals."""

import copy
import logging

import optuna
import pytest
from sketch_copies import with_sketches

from panther.kinds import kind_named
from panther.tuner import Categorical, Int, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner._budget import Bisection, Budget, FixedProbes, potential, probe_params, prober_for
from panther.tuner.results import TrialRecord


def test_probes_are_the_cheapest_and_a_middle_configuration():
    space = {"num_terms": Categorical([1]), "low_rank": Categorical([1, 2, 4, 8, 16]), "k": Int(2, 10, step=2)}
    assert probe_params(space) == [{"num_terms": 1, "low_rank": 1, "k": 2}, {"num_terms": 1, "low_rank": 4, "k": 6}]
    assert probe_params({"low_rank": Categorical([3])}) == [{"low_rank": 3}]


def test_ordered_axis_is_the_single_open_cost_increasing_size():
    ordered_axis = kind_named("SKLinear").ordered_axis  # the kind names its sizes; the budget holds none
    auto_like = {"num_terms": Categorical([1]), "low_rank": Categorical([1, 2, 4, 8]), "init": Categorical(["svd"])}
    assert ordered_axis(auto_like) == ("low_rank", [1, 2, 4, 8])
    assert ordered_axis({"low_rank": Int(2, 8, step=2)}) == ("low_rank", [2, 4, 6, 8])
    assert ordered_axis({**auto_like, "num_terms": Categorical([1, 2])}) is None  # two open choices
    assert ordered_axis({"low_rank": Categorical([8, 4])}) is None  # not ascending
    assert ordered_axis({"kernel": Categorical([1, 2])}) is None  # not known to cost more when larger
    assert ordered_axis({"low_rank": Categorical([4, "8"])}) is None  # values that cannot be ordered
    assert ordered_axis({"num_random_features": Categorical([8, 16])}) is None  # another kind's size
    attention_axis = kind_named("RandMultiHeadAttention").ordered_axis({"num_random_features": Categorical([8, 16])})
    assert attention_axis == ("num_random_features", [8, 16])
    assert isinstance(prober_for(auto_like, threshold=0.9, axis=ordered_axis(auto_like)), Bisection)
    assert isinstance(prober_for(auto_like, threshold=None, axis=ordered_axis(auto_like)), FixedProbes)  # no threshold
    assert isinstance(prober_for(auto_like, threshold=0.9, axis=None), FixedProbes)  # no size to bisect


@pytest.mark.parametrize("smallest_ok", [None, 1, 2, 3, 7, 12, 13])
def test_bisection_finds_the_smallest_feasible_value_in_log_steps(smallest_ok):
    values = list(range(1, 14))  # 13 values
    bisection = Bisection({"low_rank": Categorical(values), "num_terms": Categorical([1])}, "low_rank", values)
    asked = []
    while (params := bisection.next_params()) is not None:
        assert params["num_terms"] == 1
        asked.append(params["low_rank"])
        ok = smallest_ok is not None and params["low_rank"] >= smallest_ok
        bisection.tell(TrialRecord("g", ["g"], len(asked), params, feasible=ok))
    assert len(asked) <= 4 and len(set(asked)) == len(asked)  # ceil(log2(14)) probes, never one twice
    feasible = [v for v in asked if smallest_ok is not None and v >= smallest_ok]
    assert (min(feasible) if feasible else None) == smallest_ok
    assert bisection.settled


def test_potential_favours_open_questions_on_big_layers():
    def probes(*feasible):
        return [TrialRecord("g", ["g"], i, {}, feasible=f) for i, f in enumerate(feasible)]

    assert potential(probes(True, True), 1000, threshold=0.9) == 0  # cheapest already good enough
    assert potential(probes(False, True), 1000, 0.9) > potential(probes(False, False), 1000, 0.9) > 0
    assert potential(probes(False, True), 4000, 0.9) == 4 * potential(probes(False, True), 1000, 0.9)
    assert potential(probes(True, True), 1000, threshold=None) == 1000
    assert potential(probes(False, True), 1000, 0.9, settled=True) == 0  # a finished bisection


def test_budget_shares_the_remaining_trials():
    budget = Budget(max_total_trials=10, time_budget_s=None)
    for _ in range(4):
        budget.spend()
    assert budget.share(1.0, 3.0) == 2 and budget.share(0.0, 3.0) == 0 and not budget.exhausted()
    assert Budget(None, None).share(1.0, 2.0) is None
    assert Budget(None, 60.0).share(0.0, 2.0) == 0  # a settled group gets no trials under a time budget either


def test_budgeted_auto_tuning_bisects_every_layer_within_the_budget(digits_model, accuracy_fn, dense_accuracy):
    threshold = dense_accuracy - 0.01
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig({"type": "Linear"}, "auto")]), accuracy_fn,
                        accuracy_threshold=threshold, search_algorithm=OptunaSearch(n_trials=40, seed=0),
                        strategy="search",
                        max_total_trials=14)
    tuner.tune()
    evaluated = [r for r in tuner.results.records if r.phase in ("probe", "search")]
    assert len(evaluated) <= 14
    probes = [r for r in evaluated if r.phase == "probe"]
    assert sorted({r.group for r in probes}) == ["fc1", "fc2", "fc3"]
    assert [r.group for r in probes[:3]] == ["fc1", "fc2", "fc3"]  # round-robin: each layer is reached first
    # Independent check of each layer's bisection: its best rank meets the layer's threshold, the
    # largest smaller rank it tried does not (measured here, on a fresh copy of the dense model).
    dense = copy.deepcopy(digits_model)
    checked = 0
    for group in ("fc1", "fc2", "fc3"):
        best = tuner.results.best_record(group)
        if best is None:
            continue
        tried_below = sorted(r.params["low_rank"] for r in tuner.results.records
                             if r.group == group and r.params["low_rank"] < best.params["low_rank"])
        limit = tuner.results.group_thresholds[group]
        assert accuracy_fn(with_sketches(dense, {group: best.params["low_rank"]})) >= limit
        if tried_below:
            assert accuracy_fn(with_sketches(dense, {group: tried_below[-1]})) < limit
            checked += 1
    assert checked >= 1
    # the probes live in each layer's Optuna study too, with the tuner's record attached
    for group in ("fc1", "fc2", "fc3"):
        trials = tuner.search_algorithm.studies[group].get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        recorded = sorted(r.accuracy for r in tuner.results.records if r.group == group and r.status == "ok")
        assert sorted(t.user_attrs["panther.accuracy"] for t in trials) == recorded
    model = tuner.apply_best_params()
    assert accuracy_fn(model) >= threshold


def test_spent_time_budget_evaluates_nothing_and_leaves_the_model(digits_model, accuracy_fn):
    before = dict(digits_model.named_modules())
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"low_rank": [4, 8]})]), accuracy_fn,
                        time_budget_s=1e-9)
    assert tuner.tune() == {}
    assert tuner.results.records == [] and dict(digits_model.named_modules()) == before


def test_duplicate_proposals_reuse_the_measured_result(digits_model, accuracy_fn, scripted_search, caplog):
    calls = []

    def counted(model):
        calls.append(model.fc1.low_rank)
        return accuracy_fn(model)

    proposal = {"num_terms": 1, "low_rank": 4}
    search = scripted_search([proposal, {"num_terms": 1, "low_rank": 8}, proposal, proposal])
    space = {"num_terms": [1], "low_rank": [4, 8, 16]}  # never fully evaluated here: every proposal is asked
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", space)]), counted, search_algorithm=search)
    with caplog.at_level(logging.DEBUG, logger="panther.tuner"):
        tuner.tune()
    assert calls == [4, 8]
    assert tuner.results.reused_trials == {"fc1": 2}
    assert [score for _, score in search.told][2:] == [search.told[0][1]] * 2
    reuse_lines = [r for r in caplog.records if "reusing" in r.getMessage()]
    assert len(reuse_lines) == 2 and all(r.levelno == logging.DEBUG for r in reuse_lines)  # not progress news
    assert "duplicate proposals answered from earlier results: 2" in tuner.summary()


def test_a_fully_evaluated_finite_space_stops_asking_the_search(digits_model, accuracy_fn, scripted_search):
    proposals = [{"num_terms": 1, "low_rank": k} for k in (4, 8, 4, 8, 4)]
    search = scripted_search(proposals)
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"num_terms": [1], "low_rank": [4, 8]})]),
                        accuracy_fn, search_algorithm=search)
    tuner.tune()
    assert [params["low_rank"] for params, _ in search.told] == [4, 8]  # both values known: no third question
    assert len(search._queue) == 3 and tuner.results.reused_trials == {}


@pytest.mark.parametrize("bad", [0, -1.0, True])
def test_time_budget_must_be_positive(digits_model, accuracy_fn, bad):
    with pytest.raises(ValueError, match="time_budget_s"):
        SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"low_rank": [4]})]), accuracy_fn,
                    time_budget_s=bad)


def test_time_budget_alone_stops_at_settled_bisections(digits_model, accuracy_fn, dense_accuracy):
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig({"type": "Linear"}, "auto")]), accuracy_fn,
                        accuracy_threshold=dense_accuracy - 0.01, search_algorithm=OptunaSearch(n_trials=40, seed=0),
                        strategy="search",
                        time_budget_s=600)
    tuner.tune()
    records = tuner.results.records
    assert {r.phase for r in records} == {"probe"}  # nothing left for the search to learn
    for group in ("fc1", "fc2", "fc3"):
        tried = [r for r in records if r.group == group]
        assert 1 <= len(tried) <= 5  # log2 of the "auto" grid (at most 14 ranks for these layers), rounded up
