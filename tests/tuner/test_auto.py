"""params="auto": only configurations cheaper than the dense layer, ordered, grouped by shape."""

import itertools

import pytest
import torch
from torch import nn

from panther.kinds import kind_named, rank_grid
from panther.nn import SKConv2d, SKLinear
from panther.tuner import ParamsResolver, layer_bytes
from panther.tuner.selectors import LayerNameResolver


def combinations(space):
    names = list(space)
    return [dict(zip(names, values, strict=True)) for values in itertools.product(*(space[n].values() for n in names))]


@pytest.mark.parametrize("d_in,d_out", [(64, 256), (256, 256), (256, 10), (128, 96), (3, 50)])
def test_linear_space_holds_only_cheaper_sketches_up_to_break_even(d_in, d_out):
    dense = nn.Linear(d_in, d_out)
    space = ParamsResolver(nn.Sequential(dense)).space_for(dense)
    dense_cost = d_in * d_out  # weights and multiply-adds per sample
    for params in combinations(space):
        rank = 2 * params["num_terms"] * params["low_rank"]
        assert rank * (d_in + d_out) < dense_cost
        sketch = SKLinear.from_dense(dense, **params)
        assert layer_bytes(sketch) < layer_bytes(dense)  # measured on the built layer
    ranks = space["low_rank"].values()
    assert ranks == sorted(ranks) and space["num_terms"].values() == [1]
    # the grid reaches the break-even: the next grid value would not be cheaper
    following = rank_grid(lambda k: True, 4 * max(ranks))
    next_rank = following[following.index(ranks[-1]) + 1]
    assert 2 * next_rank * (d_in + d_out) >= dense_cost


@pytest.mark.parametrize("c_in,c_out,kernel", [(16, 32, 3), (64, 64, 3), (8, 128, 1), (32, 16, 5)])
def test_conv_space_counts_kernel_size_and_both_terms(c_in, c_out, kernel):
    dense = nn.Conv2d(c_in, c_out, kernel)
    space = ParamsResolver(nn.Sequential(dense)).space_for(dense)
    dense_cost = kernel * kernel * c_in * c_out  # per output pixel
    x = torch.randn(1, c_in, 9, 9)
    for params in combinations(space):
        hidden = 2 * params["num_terms"] * params["low_rank"]
        assert hidden * (c_in * kernel * kernel) + c_out * hidden < dense_cost
        assert SKConv2d.from_dense(dense, **params)(x).shape == dense(x).shape


def test_nothing_efficient_and_unsupported_layers_are_skipped_with_a_warning():
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(64, 64), nn.LayerNorm(64))
    resolver = ParamsResolver(model)
    with pytest.warns(UserWarning) as caught:
        spaces = resolver.resolve(["0", "1", "2"])
    assert list(spaces) == ["1"]
    text = " ".join(str(w.message) for w in caught)
    assert "'0'" in text and "cheaper" in text and "'2'" in text and "LayerNorm" in text


def test_identical_layers_share_one_space_and_modules_or_names_are_accepted():
    model = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 32), nn.Linear(32, 16))
    resolver = ParamsResolver(LayerNameResolver(model))
    spaces = resolver.resolve([model[0], "2", "3"])
    assert list(spaces) == ["0", "2", "3"]
    assert spaces["0"] is spaces["2"] and spaces["3"] != spaces["0"]
    assert resolver.groups(spaces) == [(["0", "2"], spaces["0"]), (["3"], spaces["3"])]


def test_init_follows_copy_weights_and_resolution_is_deterministic():
    model = nn.Sequential(nn.Linear(40, 30))
    assert ParamsResolver(model).resolve(["0"])["0"]["init"].values() == ["svd"]
    assert ParamsResolver(model).resolve(["0"], copy_weights=False)["0"]["init"].values() == ["sketch"]
    assert ParamsResolver(model).resolve(["0"]) == ParamsResolver(model).resolve(["0"])


def test_joint_space_keeps_ranks_cheaper_for_every_layer():
    model = nn.Sequential(nn.Linear(256, 256), nn.Linear(256, 10))
    spaces = ParamsResolver(model).resolve(["0", "1"])
    joint = kind_named("SKLinear").joint_space(list(spaces.values()))  # the kind owns joint spaces
    assert joint.keys() == spaces["0"].keys() and joint["init"] == spaces["0"]["init"]
    assert joint["low_rank"].values() == spaces["1"]["low_rank"].values()
    for k in joint["low_rank"].values():
        assert 2 * k * (256 + 10) < 256 * 10


def test_bad_arguments():
    with pytest.raises(TypeError):
        ParamsResolver("model")
    with pytest.raises(ValueError):
        ParamsResolver(nn.Linear(3, 3)).resolve([nn.Linear(3, 3)])
