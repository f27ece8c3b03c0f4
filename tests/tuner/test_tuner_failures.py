"""A candidate that raises is a failed trial; the user's own bugs and Ctrl-C still propagate.

The "parents" below stand for modules nobody here wrote: one reads only its child's weight
metadata (as Hugging Face T5 does with ``self.wo.weight.dtype``), one computes with the child's
dense weight directly (as ``nn.MultiheadAttention`` does with ``out_proj.weight``).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from panther.nn import SKLinear
from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

RANK_4 = {"num_terms": [1], "low_rank": [4]}
#: Cheaper than dense for the 32 -> 10 head too, so whole-model allocation considers it.
RANK_2 = {"num_terms": [1], "low_rank": [2]}


class ReadsWeightDtype(nn.Module):
    """Casts its input to the child's weight dtype before calling it (metadata only)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc(x.to(self.fc.weight.dtype))))


class MultipliesByWeight(nn.Module):
    """Computes with its child's dense weight instead of calling the child."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 32)
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(nn.functional.linear(x, self.fc.weight, self.fc.bias)))


def constant_accuracy(model: nn.Module) -> float:
    model(torch.randn(4, 64))
    return 1.0


def test_metadata_readers_get_the_dense_weights_shape_dtype_and_device():
    dense = nn.Linear(64, 32, dtype=torch.float64)
    sketched = SKLinear.from_dense(dense, low_rank=4)
    assert sketched.weight.shape == dense.weight.shape and sketched.weight.dtype == torch.float64
    assert sketched.weight.device == dense.weight.device and sketched.weight.requires_grad
    model = ReadsWeightDtype()
    model.fc = SKLinear.from_dense(model.fc, low_rank=32)  # full rank: exact
    x = torch.randn(5, 64)
    assert torch.allclose(model(x), model.head(torch.relu(model.fc.to_dense()(x))), atol=1e-6)


def test_computing_with_a_sketched_weight_raises_a_clear_error():
    sketched = SKLinear.from_dense(nn.Linear(64, 32), low_rank=4)
    with pytest.raises(TypeError, match="sketched layer SKLinear: its parent computes with the child's dense"):
        torch.nn.functional.linear(torch.randn(2, 64), sketched.weight)
    with pytest.raises(TypeError, match="sketched layer SKLinear"):
        torch.matmul(torch.randn(2, 32), sketched.weight)
    for tensor_only in ("T", "data"):
        with pytest.raises(AttributeError, match="effective_weight"):
            getattr(sketched.weight, tensor_only)


@pytest.mark.parametrize("strategy", ["search", "allocate"])
def test_a_candidate_that_raises_is_a_failed_trial_and_tuning_goes_on(strategy: str):
    """Allocation finds the raising layer with one calibration batch, before any plan is evaluated."""
    torch.manual_seed(0)
    model = MultipliesByWeight()
    before = dict(model.named_modules())
    configs = TuningConfigs([LayerConfig(["fc", "head"], RANK_4 if strategy == "search" else RANK_2)])
    calibration = [torch.randn(16, 64)] if strategy == "allocate" else None
    tuner = SKAutoTuner(model, configs, constant_accuracy, accuracy_threshold=0.5, strategy=strategy,
                        calibration_data=calibration)
    best = tuner.tune()
    assert dict(model.named_modules()) == before  # restored after the failure
    fc_trials = [r for r in tuner.results.records if r.group == "fc"]
    assert fc_trials and all(r.status == "failed" for r in fc_trials)
    assert "TypeError" in fc_trials[0].error and "SKLinear" in fc_trials[0].error
    assert set(best) == {"head"}  # the other layer was still tuned
    assert "every trial failed" in tuner.summary()


def test_an_evaluation_function_that_fails_on_the_dense_model_propagates():
    model = ReadsWeightDtype()
    before = dict(model.named_modules())
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("fc", RANK_4)]), lambda m: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        tuner.tune()
    assert dict(model.named_modules()) == before


def test_a_user_bug_that_only_shows_without_threshold_still_propagates():
    """Without a threshold no baseline is measured: the dense model is checked on the first failure."""
    model = ReadsWeightDtype()
    calls = []

    def buggy(m: nn.Module) -> float:
        calls.append(type(m.fc).__name__)
        raise KeyError("metric")

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("fc", RANK_4)]), buggy)
    with pytest.raises(KeyError):
        tuner.tune()
    assert calls == ["SKLinear", "Linear"] and isinstance(model.fc, nn.Linear)


def fails_when_both_sketched(m: nn.Module) -> float:
    """An accuracy function that raises only with both layers sketched (e.g. a shape clash)."""
    if isinstance(m.fc, SKLinear) and isinstance(m.head, SKLinear):
        raise RuntimeError("both")
    return 1.0


def test_a_nan_composed_check_backs_off_instead_of_crashing():
    """Winners that only fail together: the composed check treats the error as missing the threshold."""
    torch.manual_seed(0)
    model = ReadsWeightDtype()

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["fc", "head"], RANK_4)]), fails_when_both_sketched,
                        accuracy_threshold=0.5, strategy="search")
    best = tuner.tune()
    assert len(best) == 1 and len(tuner.reverted_layers) == 1  # one layer kept, one reverted
    assert math.isnan(tuner.results.composed_accuracy) or tuner.results.composed_accuracy >= 0.5


def test_an_allocated_plan_that_raises_misses_the_threshold_and_the_next_is_tried():
    torch.manual_seed(0)
    model = ReadsWeightDtype()
    before = dict(model.named_modules())

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["fc", "head"], RANK_2)]), fails_when_both_sketched,
                        accuracy_threshold=0.5, strategy="allocate")
    best = tuner.tune()
    assert dict(model.named_modules()) == before
    both = [p for p in tuner.results.plans if len(p.choices) == 2]
    assert both and all(not p.feasible and p.status == "failed" and p.accuracy is None for p in both)
    assert all("RuntimeError: both" in p.error for p in both)  # what the accuracy function raised
    assert len(best) == 1 and tuner.results.composed_accuracy == 1.0
