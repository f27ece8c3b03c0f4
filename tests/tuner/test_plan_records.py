"""One record type for both strategies: a search trial is a one-group plan, measured as an allocation's plans are."""

from __future__ import annotations

from dataclasses import fields

import pytest
import torch
from test_tuner_allocation import FourLayers, KnownAccuracy

from panther.nn import SKLinear
from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs, layer_bytes
from panther.tuner.results import MeasuredPlan, PlanRecord, TrialRecord

SPACE = {"num_terms": [1], "low_rank": [8], "init": ["svd"]}  # one option: both strategies measure the same plan


def tuned(strategy: str) -> tuple[SKAutoTuner, KnownAccuracy]:
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["third"], SPACE)]), accuracy, accuracy_threshold=0.9,
                        strategy=strategy)
    tuner.tune()
    return tuner, accuracy


def test_a_search_trial_and_an_allocation_plan_are_the_same_measured_record():
    searched, accuracy = tuned("search")
    allocated, _ = tuned("allocate")
    trial = next(r for r in searched.results.records if r.status == "ok" and r.phase != "allocation")
    plan, = allocated.results.plans  # one group, one option: the path's cheapest point meets the threshold
    assert isinstance(trial, TrialRecord) and isinstance(plan, PlanRecord)
    assert isinstance(trial, MeasuredPlan) and isinstance(plan, MeasuredPlan)
    assert trial.choices == plan.choices == {"third": trial.params}

    # independent expectation: the module built by hand, measured by hand
    dense = accuracy.dense["third"]
    built = SKLinear.from_dense(dense, num_terms=1, low_rank=8, init="svd")
    expected = {"status": "ok", "error": None, "feasible": True, "bytes": layer_bytes(built),
                "dense_bytes": layer_bytes(dense), "speed": None}  # no speed function: priced by bytes
    for record in (trial, plan):
        assert {name: getattr(record, name) for name in expected} == expected
        assert record.accuracy == pytest.approx(accuracy.of_modules({"third": built}), rel=1e-6)
    shared = {f.name for f in fields(MeasuredPlan)} - {"phase", "duration_s"}
    assert {n: getattr(trial, n) for n in shared} == {n: getattr(plan, n) for n in shared}


def test_a_plan_that_raises_is_failed_like_a_trial_that_raises():
    def raises_when_sketched(model: torch.nn.Module) -> float:
        if isinstance(model.third, SKLinear):
            raise RuntimeError("sketched")
        return 1.0

    records = {}
    for strategy in ("search", "allocate"):
        model = FourLayers()
        tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["third"], SPACE)]), raises_when_sketched,
                            accuracy_threshold=0.9, strategy=strategy)
        tuner.tune()
        records[strategy] = (next(r for r in tuner.results.records if r.params) if strategy == "search"
                             else tuner.results.plans[0])
    for record in records.values():
        assert (record.status, record.error, record.accuracy, record.feasible) == (
            "failed", "RuntimeError: sketched", None, False)
