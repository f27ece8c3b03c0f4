"""The linear kind's methods per layer: which module each (method, or the older low_rank/quantize) builds, "auto"."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from panther.kinds import kind_named, kind_of_class_name, kind_of_replacement, rank_space
from panther.kinds.linear import METHODS as METHOD_TABLE
from panther.kinds.linear import LinearMethod
from panther.nn.linear import SKLinear
from panther.nn.moments import channel_power
from panther.nn.quantized import Int8Linear, Int8SKLinear
from panther.tuner import Categorical, LayerConfig, SKAutoTuner
from panther.tuner._groups import TuningGroup

KIND = kind_named("SKLinear")
METHODS = [  # (params, the class built)
    ({"num_terms": 1, "low_rank": 4, "init": "svd"}, SKLinear),
    ({"num_terms": 1, "low_rank": 4, "init": "svd", "quantize": False}, SKLinear),
    ({"num_terms": 1, "low_rank": 4, "init": "svd", "quantize": True}, Int8SKLinear),
    ({"num_terms": 1, "low_rank": None, "init": "svd", "quantize": True}, Int8Linear),  # num_terms, init unused
]


@pytest.mark.parametrize("params,cls", METHODS, ids=["sketch", "sketch-explicit", "sketch+int8", "int8"])
def test_each_method_builds_its_module_and_its_plan_and_state_name_it_again(params, cls):
    dense = nn.Linear(48, 40)
    built = KIND.build(dense, params)
    assert type(built) is cls and kind_of_replacement(built) is KIND and kind_of_class_name(cls.__name__) is KIND
    plan_params = KIND.plan_params(built)
    state = built.get_extra_state()
    assert KIND.plan_params_from_state(state["hyperparameters"], state["class"]) == plan_params
    again = KIND.build(dense, plan_params)
    assert type(again) is cls and again.hyperparameters() == built.hyperparameters()
    assert KIND.is_cheaper(dense, params)
    fresh = KIND.build(dense, params, copy_weights=False)  # freshly initialised, same structure
    assert type(fresh) is cls and fresh.hyperparameters() == built.hyperparameters()


def test_full_rank_without_quantize_is_the_dense_layer_and_is_refused():
    dense = nn.Linear(48, 40)
    assert not KIND.is_cheaper(dense, {"low_rank": None, "quantize": False})
    with pytest.raises(ValueError, match="low_rank=None keeps the full weight"):
        KIND.build(dense, {"low_rank": None})


def test_quantize_is_a_parameter_of_the_kind():
    assert {"num_terms", "low_rank", "init", "quantize"} <= KIND.parameter_names()


@pytest.mark.parametrize("copy_weights,data_aware", [(True, False), (True, True), (False, False)])
def test_auto_keeps_the_sketch_space_until_allocation_weighs_methods(copy_weights, data_aware):
    """int8 is tuned through explicit spaces; "auto" keeps one open size, which budgets bisect."""
    dense = nn.Linear(64, 48)
    space = KIND.auto_space(dense, copy_weights, data_aware)
    assert set(space) == {"num_terms", "low_rank", "init"} and None not in space["low_rank"].values()
    assert space == rank_space(space["low_rank"].values(), copy_weights, data_aware)


def test_a_new_method_is_one_table_entry_and_the_tuner_feeds_it_the_covariance(monkeypatch):
    """What a method needs (its class, rank or not, covariance or not, a builder) is one METHODS entry."""
    seen = []

    def build(dense, params, input_cov, copy_weights):
        seen.append(input_cov)
        return Int8Linear.from_dense(dense)

    monkeypatch.setitem(METHOD_TABLE, "int8_cov", LinearMethod("Int8Linear", sketched=False, build=build,
                                                          reads_input_cov=True))
    assert KIND.uses_input_cov({"method": "int8_cov"})
    assert KIND.canonical_params({"method": "int8_cov", "low_rank": 4, "init": "svd"}) == {"method": "int8_cov"}
    with pytest.raises(ValueError, match="method='int8_cov' needs the layer's input covariance"):
        KIND.check_space({"method": Categorical(["int8_cov"])}, calibrated=False)
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(16, 8)), torch.randn(64, 16)
    weight = model[0].weight.detach().double().clone()
    tuner = SKAutoTuner(model, LayerConfig("0", {"method": ["int8_cov"]}), lambda m: 1.0, calibration_data=[x])
    tuner.replace_without_tuning()
    assert type(model[0]) is Int8Linear and tuner.best_plan() == {}  # nothing tuned, but installed
    x64 = x.double()
    cov = x64.T @ x64 / len(x)  # the calibration second moment, which a 16 → 8 layer gets projected
    torch.testing.assert_close(channel_power(seen[-1]), cov.diagonal(), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(seen[-1].output, weight @ cov @ weight.T, rtol=1e-5, atol=1e-8)


def test_a_group_bisects_only_a_size_every_kind_of_it_names():
    space = {"low_rank": Categorical([1, 2, 4])}
    attention = kind_named("RandMultiHeadAttention")
    assert TuningGroup("a", ["a"], space, True, 0, {"a": KIND}).ordered_axis() == ("low_rank", [1, 2, 4])
    assert TuningGroup("a+b", ["a", "b"], space, True, 0, {"a": KIND, "b": attention}).ordered_axis() is None
