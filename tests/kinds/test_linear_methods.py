"""The linear kind's four methods per layer: which module each (low_rank, quantize) builds, and "auto"."""

from __future__ import annotations

import pytest
from torch import nn

from panther.kinds import kind_named, kind_of_class_name, kind_of_replacement, rank_space
from panther.nn.linear import SKLinear
from panther.nn.quantized import Int8Linear, Int8SKLinear

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
