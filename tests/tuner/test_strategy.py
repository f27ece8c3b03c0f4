"""``decide_strategy``: the one decision of what is tuned and how, shared by SKAutoTuner and Lightning."""

from __future__ import annotations

import optuna
import pytest
import torch
from torch import nn

from panther.tuner import AllocationUnavailableError, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner import decide_strategy as exported
from panther.tuner.strategy import decide_strategy

LINEARS = TuningConfigs([LayerConfig({"type": "Linear"}, "auto", separate=True)])
CONVS = TuningConfigs([LayerConfig({"type": "Conv2d"}, "auto", separate=True)])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))


def _cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))


@pytest.mark.parametrize("model, configs, options", [
    (_mlp(), LINEARS, {}),
    (_mlp(), LINEARS, {"thresholded": False}),
    (_mlp(), LINEARS, {"search_named": True}),
    (_mlp(), LINEARS, {"strategy": "search"}),
    (_cnn(), CONVS, {}),
    (_cnn(), CONVS, {"calibrated": True}),
])
def test_the_tuner_takes_the_decided_strategy(model, configs, options):
    """SKAutoTuner asks the same function: its groups and strategy are the decision's."""
    settings = {"strategy": "auto", "thresholded": True, "search_named": False, "calibrated": False, **options}
    decision = decide_strategy(model, configs, **settings)
    tuner = SKAutoTuner(model, configs, lambda m: 1.0, strategy=settings["strategy"],
                        accuracy_threshold=0.5 if settings["thresholded"] else None,
                        search_algorithm=(OptunaSearch(n_trials=2, sampler=optuna.samplers.RandomSampler(seed=0))
                                          if settings["search_named"] else None),
                        calibration_data=[torch.randn(2, 3, 8, 8)] if settings["calibrated"] else None)
    assert tuner.allocates == decision.allocates
    assert [(g.name, g.space) for g in tuner._groups] == [(g.name, g.space) for g in decision.groups]


def test_auto_allocates_with_a_threshold_and_no_chosen_search():
    decision = decide_strategy(_mlp(), LINEARS, thresholded=True, search_named=False)
    assert decision.strategy == "allocate" and decision.why_search is None and decision.nothing_to_tune is None
    assert exported is decide_strategy
    # int8 is offered beside the sketch when allocating on CPU; methods=False keeps sketches only
    assert all("int8" in g.space["method"].values() for g in decision.groups)
    sketches = decide_strategy(_mlp(), LINEARS, thresholded=True, search_named=False, methods=False)
    assert sketches.allocates and all("method" not in g.space for g in sketches.groups)
    assert all(None not in g.space["low_rank"].values() for g in sketches.groups)


def test_auto_searches_what_it_cannot_allocate_and_allocate_refuses_it():
    decision = decide_strategy(_cnn(), CONVS, thresholded=True, search_named=False)
    assert decision.strategy == "search" and "calibration_data" in decision.why_search
    with pytest.raises(AllocationUnavailableError, match="calibration_data"):
        decide_strategy(_cnn(), CONVS, strategy="allocate", thresholded=True, search_named=False)


def test_nothing_to_tune_says_why():
    tiny = nn.Sequential(nn.Linear(2, 2))  # no sketch is cheaper; only int8 would be (methods=False: not offered)
    with pytest.warns(UserWarning, match="no sketch of this Linear is cheaper"):
        decision = decide_strategy(tiny, LINEARS, thresholded=True, search_named=False, methods=False)
    assert not decision.groups
    assert "select no layer worth sketching" in decision.nothing_to_tune
    assert "0: no sketch of this Linear is cheaper" in decision.nothing_to_tune
    with pytest.raises(ValueError, match="matches no layer"):
        decide_strategy(tiny, TuningConfigs([LayerConfig(["missing"], "auto")]), thresholded=True, search_named=False)
