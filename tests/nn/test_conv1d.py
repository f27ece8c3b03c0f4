"""Hugging Face ``Conv1D`` (GPT-2's projections: ``x @ W + b`` with ``W`` stored ``(in, out)``) as a dense layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panther.nn import SKLinear
from panther.nn.calibration import collect_input_covariances
from panther.plans import apply_plan, rebuild_sketched_layers
from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs

pytorch_utils = pytest.importorskip("transformers.pytorch_utils")
Conv1D = pytorch_utils.Conv1D


def conv1d(in_features: int = 24, out_features: int = 40) -> nn.Module:
    layer = Conv1D(out_features, in_features)  # (nf, nx): transformers' own argument order
    nn.init.normal_(layer.weight)
    nn.init.normal_(layer.bias)
    return layer


def test_full_rank_sketch_reproduces_the_layer_and_keeps_its_bias():
    dense = conv1d()
    sketched = SKLinear.from_dense(dense, num_terms=1, low_rank=12)  # 2k = 24 = min(in, out)
    assert (sketched.in_features, sketched.out_features) == (24, 40)
    x = torch.randn(2, 5, 24)
    torch.testing.assert_close(sketched(x), dense(x), atol=1e-4, rtol=1e-4)
    assert torch.equal(sketched.bias, dense.bias)
    torch.testing.assert_close(sketched.to_dense().weight, dense.weight.T, atol=1e-4, rtol=1e-4)


def test_low_rank_svd_is_the_best_approximation_of_the_transposed_weight():
    dense = conv1d()
    sketched = SKLinear.from_dense(dense, num_terms=1, low_rank=3)
    u, s, vh = torch.linalg.svd(dense.weight.T.double())  # (out, in): what nn.Linear would hold
    best = (u[:, :6] * s[:6]) @ vh[:6]
    torch.testing.assert_close(sketched.effective_weight().double(), best, atol=1e-4, rtol=1e-4)


def test_calibration_sees_the_conv1d_inputs():
    model = nn.Sequential(conv1d(24, 40))
    batches = [torch.randn(8, 24) for _ in range(3)]
    covs = collect_input_covariances(model, ["0"], batches)
    rows = torch.cat(batches).double()
    torch.testing.assert_close(covs["0"].double(), rows.T @ rows / len(rows), atol=1e-5, rtol=1e-5)


def test_tuner_selects_conv1d_by_type_name_and_plans_rebuild_it():
    model = nn.Sequential(conv1d(), nn.ReLU(), conv1d(40, 24))
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig({"type": "Conv1D"}, "auto")]), lambda m: 1.0)
    assert [n for c in tuner.getConfigs() for n in c.layer_names] == ["0", "2"]
    tuner.replace_without_tuning()
    assert all(isinstance(model[i], SKLinear) for i in (0, 2))
    fresh = nn.Sequential(conv1d(), nn.ReLU(), conv1d(40, 24))
    rebuild_sketched_layers(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict(), strict=True)
    x = torch.randn(3, 24)
    assert torch.equal(fresh(x), model(x))
    with pytest.raises(ValueError, match="it is a ReLU"):
        apply_plan(fresh, {"1": {"type": "SKLinear", "params": {"low_rank": 2}}})
