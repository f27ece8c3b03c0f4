"""Whole-model trial budget, and reuse of results for duplicate proposals."""

import logging

import pytest

from panther.tuner import Categorical, Int, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner.budget import Budget, potential, probe_params
from panther.tuner.results import TrialRecord


def test_probes_are_the_cheapest_and_a_middle_configuration():
    space = {"num_terms": Categorical([1]), "low_rank": Categorical([1, 2, 4, 8, 16]), "k": Int(2, 10, step=2)}
    assert probe_params(space) == [{"num_terms": 1, "low_rank": 1, "k": 2}, {"num_terms": 1, "low_rank": 4, "k": 6}]
    assert probe_params({"low_rank": Categorical([3])}) == [{"low_rank": 3}]


def test_potential_favours_open_questions_on_big_layers():
    def probes(*feasible):
        return [TrialRecord("g", ["g"], i, {}, feasible=f) for i, f in enumerate(feasible)]

    assert potential(probes(True, True), 1000, threshold=0.9) == 0  # cheapest already good enough
    assert potential(probes(False, True), 1000, 0.9) > potential(probes(False, False), 1000, 0.9) > 0
    assert potential(probes(False, True), 4000, 0.9) == 4 * potential(probes(False, True), 1000, 0.9)
    assert potential(probes(True, True), 1000, threshold=None) == 1000


def test_budget_shares_the_remaining_trials():
    budget = Budget(max_total_trials=10, time_budget_s=None)
    for _ in range(4):
        budget.spend()
    assert budget.share(1.0, 3.0) == 2 and budget.share(0.0, 3.0) == 0 and not budget.exhausted()
    assert Budget(None, None).share(1.0, 2.0) is None


def test_budgeted_auto_tuning_spends_at_most_the_budget(digits_model, accuracy_fn, dense_accuracy):
    threshold = dense_accuracy - 0.01
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig({"type": "Linear"}, "auto")]), accuracy_fn,
                        accuracy_threshold=threshold, search_algorithm=OptunaSearch(n_trials=40, seed=0),
                        max_total_trials=12)
    tuner.tune()
    evaluated = [r for r in tuner.results.records if r.phase in ("probe", "search")]
    assert len(evaluated) <= 12
    probes = [r for r in evaluated if r.phase == "probe"]
    assert sorted({r.group for r in probes}) == ["fc1", "fc2", "fc3"] and len(probes) == 6
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
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"num_terms": [1], "low_rank": [4, 8]})]),
                        counted, search_algorithm=search)
    with caplog.at_level(logging.INFO, logger="panther.tuner"):
        tuner.tune()
    assert calls == [4, 8]
    assert tuner.results.reused_trials == {"fc1": 2}
    assert [score for _, score in search.told][2:] == [search.told[0][1]] * 2
    assert sum("reusing" in r.getMessage() for r in caplog.records) == 2
    assert "duplicate proposals answered from earlier results: 2" in tuner.summary()


@pytest.mark.parametrize("bad", [0, -1.0, True])
def test_time_budget_must_be_positive(digits_model, accuracy_fn, bad):
    with pytest.raises(ValueError, match="time_budget_s"):
        SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"low_rank": [4]})]), accuracy_fn,
                    time_budget_s=bad)
