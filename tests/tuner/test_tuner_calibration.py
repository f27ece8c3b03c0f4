"""Data-aware initialisation inside the tuner: calibration once, covariances reused by candidates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panther.nn.calibration import collect_input_covariances
from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

from conftest import DigitsMLP, accuracy


def _model(trained_digits) -> DigitsMLP:
    model = DigitsMLP()
    model.load_state_dict(trained_digits[0])
    return model


def test_auto_uses_data_svd_with_calibration_and_matches_a_direct_build(digits, trained_digits):
    x_train, _, x_val, y_val = digits
    model = _model(trained_digits)
    reads = []

    def batches():
        for batch in x_train[:512].split(128):
            reads.append(1)
            yield batch

    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig(["fc2"], "auto")]),
                        accuracy_eval_func=lambda m: accuracy(m, x_val, y_val),
                        search_algorithm=OptunaSearch(n_trials=3, seed=0), calibration_data=batches())
    assert tuner.getConfigs()[0].params["init"].values() == ["data_svd"]
    tuner.tune()
    assert len(reads) == 4  # the generator was read exactly once, for all trials
    tuned = tuner.apply_best_params()
    rank = tuner.get_best_params()["fc2"]["low_rank"]
    # Independent expectation: the same layer built directly from the covariance of fc2's inputs.
    dense = _model(trained_digits)
    cov = collect_input_covariances(dense, ["fc2"], x_train[:512].split(128))["fc2"]
    from panther.nn import SKLinear

    expected = SKLinear.from_dense(dense.fc2, 1, rank, init="data_svd", input_cov=cov)
    hidden = torch.relu(dense.fc1(x_val))
    torch.testing.assert_close(tuned.fc2(hidden), expected(hidden), rtol=1e-4, atol=1e-5)


def test_data_svd_without_calibration_is_rejected_before_touching_the_model(trained_digits):
    model = _model(trained_digits)
    config = LayerConfig(["fc1"], {"num_terms": [1], "low_rank": [4], "init": Categorical(["data_svd"])})
    with pytest.raises(ValueError, match="calibration_data"):
        SKAutoTuner(model, TuningConfigs([config]), accuracy_eval_func=lambda m: 0.0)
    assert isinstance(model.fc1, nn.Linear)


def test_calibration_data_must_be_iterable(trained_digits):
    with pytest.raises(TypeError, match="calibration_data"):
        SKAutoTuner(_model(trained_digits), TuningConfigs([LayerConfig(["fc1"], "auto")]),
                    accuracy_eval_func=lambda m: 0.0, calibration_data=3)
