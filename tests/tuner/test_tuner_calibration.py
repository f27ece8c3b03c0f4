"""Data-aware initialisation inside the tuner: calibration once, covariances reused by candidates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panther.nn.calibration import collect_input_covariances
from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs


@pytest.fixture
def fresh_model(digits_mlp_class, trained_digits):
    def build() -> nn.Module:
        model = digits_mlp_class()
        model.load_state_dict(trained_digits[0])
        return model

    return build


def test_auto_uses_data_svd_with_calibration_and_matches_a_direct_build(digits, fresh_model, accuracy_fn):
    x_train = digits[0]
    model = fresh_model()
    reads = []

    def batches():
        for batch in x_train[:512].split(128):
            reads.append(1)
            yield batch

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["fc2"], "auto")]),
                        accuracy_eval_func=accuracy_fn,
                        search_algorithm=OptunaSearch(n_trials=3, seed=0), calibration_data=batches())
    assert tuner.getConfigs()[0].params["init"].values() == ["data_svd"]
    tuner.tune()
    assert len(reads) == 4  # the generator was read exactly once, for all trials
    tuned = tuner.apply_best_params()
    rank = tuner.get_best_params()["fc2"]["low_rank"]
    # Independent expectation: the same layer built directly from the covariance of fc2's inputs.
    dense = fresh_model()
    cov = collect_input_covariances(dense, ["fc2"], x_train[:512].split(128))["fc2"]
    from panther.nn import SKLinear

    expected = SKLinear.from_dense(dense.fc2, 1, rank, init="data_svd", input_cov=cov)
    hidden = torch.relu(dense.fc1(digits[2]))
    torch.testing.assert_close(tuned.fc2(hidden), expected(hidden), rtol=1e-4, atol=1e-5)


def test_data_svd_without_calibration_is_rejected_before_touching_the_model(fresh_model):
    model = fresh_model()
    config = LayerConfig(["fc1"], {"num_terms": [1], "low_rank": [4], "init": Categorical(["data_svd"])})
    with pytest.raises(ValueError, match="calibration_data"):
        SKAutoTuner(model, TuningConfigs([config]), accuracy_eval_func=lambda m: 0.0)
    assert isinstance(model.fc1, nn.Linear)


def test_calibration_data_must_be_iterable(fresh_model):
    with pytest.raises(TypeError, match="calibration_data"):
        SKAutoTuner(fresh_model(), TuningConfigs([LayerConfig(["fc1"], "auto")]),
                    accuracy_eval_func=lambda m: 0.0, calibration_data=3)


def test_data_svd_without_calibration_is_rejected_for_convolutions_too():
    """The check is the kind's (``check_space``), so every data-aware kind gets it, named by layer."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(ValueError, match=r"configs\[0\]: '0' \(SKConv2d\): init='data_svd' needs"):
        SKAutoTuner(model, LayerConfig("0", {"low_rank": [1], "init": ["svd", "data_svd"]}), lambda m: 1.0)
    assert type(model[0]) is nn.Conv2d
