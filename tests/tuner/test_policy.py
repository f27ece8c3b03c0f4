"""The composed-model policy alone: synthetic trial records and an additive accuracy model, no network.

Independent expectation: with drops that add up, ``accuracy(kept) = baseline - Σ drop(kept)``, so
which group must back off, and to what, follows by hand.
"""

from __future__ import annotations

from panther.tuner._policy import ComposedCheck
from panther.tuner.results import TrialRecord, TuningResults

BASELINE = 0.90


def record(group: str, trial: int, accuracy: float, weights: int, dense: int = 1000) -> TrialRecord:
    return TrialRecord(group, [group], trial, {"low_rank": weights}, accuracy=accuracy, accuracy_std=0.0,
                       feasible=True, score=1.0 - weights / dense, bytes=weights, dense_bytes=dense)


def additive(kept) -> float:
    return BASELINE - sum(BASELINE - r.accuracy for r in kept.values())


def results_with(*records: TrialRecord) -> TuningResults:
    groups = sorted({r.group for r in records})
    return TuningResults(records=list(records), groups={g: [g] for g in groups}, baseline_accuracy=BASELINE)


def test_the_worst_trade_off_steps_up_to_a_safer_trial():
    # a: best trial drops 0.02 saving 900; b: best drops 0.03 saving 500 (worse per weight) or 0.01 saving 200
    results = results_with(record("a", 1, 0.88, 100), record("b", 2, 0.87, 500), record("b", 3, 0.89, 800))
    measured = []

    def accuracy(kept):
        measured.append({g: r.trial for g, r in kept.items()})
        return additive(kept)

    ComposedCheck(results, {"a": 1000, "b": 1000}, 0.86, accuracy, None).run(spend_margin=False)
    assert measured == [{"a": 1, "b": 2}, {"a": 1, "b": 3}]  # 0.85 < 0.86, then 0.87
    assert results.chosen == {"b": 3} and results.reverted == []
    assert results.composed_accuracy == 0.90 - 0.02 - 0.01


def test_a_group_with_nothing_safer_is_reverted_to_dense():
    results = results_with(record("a", 1, 0.88, 100), record("b", 2, 0.87, 500))
    ComposedCheck(results, {"a": 1000, "b": 1000}, 0.865, additive, None).run(spend_margin=False)
    assert results.reverted == ["b"] and results.selected_record("a").trial == 1
    assert results.composed_accuracy == 0.88


def test_spare_margin_buys_a_cheaper_trial_only_when_the_composed_model_still_holds():
    # alone, a's cheaper trial 4 drops 0.04: fits the margin of 0.88 - 0.85 = 0.03? no; trial 5 drops 0.025: yes
    results = results_with(record("a", 1, 0.89, 500), record("a", 4, 0.86, 100), record("a", 5, 0.875, 300))
    ComposedCheck(results, {"a": 1000}, 0.865, additive, None).run(spend_margin=True)
    assert results.chosen == {"a": 5} and results.composed_accuracy == 0.875


def test_with_a_speed_measure_a_cheaper_trial_must_also_be_faster():
    speed = {1: 2.0, 5: 1.5}  # fewer weights, yet measured slower together
    fast, cheap = record("a", 1, 0.89, 500), record("a", 5, 0.875, 300)
    fast.score, cheap.score = speed[1], speed[5]  # with optmization_eval_func the score is the speed
    results = results_with(fast, cheap)
    ComposedCheck(results, {"a": 1000}, 0.865, additive,
                  lambda kept: speed[kept["a"].trial]).run(spend_margin=True)
    assert results.chosen == {} and results.selected_record("a").trial == 1
