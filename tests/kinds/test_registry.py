"""The layer-kind registry: each built-in kind's contract, and a new kind added in one place."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping
from typing import Any

import pytest
import torch
from torch import nn

from panther.kinds import LayerKind, all_kinds, kind_named, kind_of, rank_grid, register, unregister
from panther.plans import apply_plan, sketch_plan
from panther.tuner import LayerConfig, SKAutoTuner, TuningConfigs, layer_bytes

DENSE_EXAMPLES = {
    "SKLinear": lambda: nn.Linear(48, 40),
    "SKConv2d": lambda: nn.Conv2d(8, 16, 3, padding=1),
    "RandMultiHeadAttention": lambda: nn.MultiheadAttention(16, 4),
}
PARAMS = {
    "SKLinear": {"num_terms": 1, "low_rank": 4, "init": "svd"},
    "SKConv2d": {"num_terms": 1, "low_rank": 3, "init": "svd"},
    "RandMultiHeadAttention": {"num_random_features": 8},
}


def test_builtin_kinds_are_registered_in_matching_order():
    assert [k.name for k in all_kinds()][:3] == ["RandMultiHeadAttention", "SKConv2d", "SKLinear"]
    with pytest.raises(ValueError, match="unknown layer type 'Nope'; known: .*SKLinear"):
        kind_named("Nope")


@pytest.mark.parametrize("name", list(DENSE_EXAMPLES))
def test_each_kind_builds_its_replacement_and_plans_round_trip(name):
    dense = DENSE_EXAMPLES[name]()
    kind = kind_of(dense)
    assert kind is kind_named(name) and kind.replacement().__name__ == name
    built = kind.build(dense, PARAMS[name])
    assert type(built) is kind.replacement()
    params = kind.plan_params(built)
    assert params.items() >= {k: v for k, v in PARAMS[name].items() if k != "init"}.items()
    again = kind.build(dense, params)
    assert again.hyperparameters() == built.hyperparameters()
    assert kind.plan_params_from_state(built.get_extra_state()["hyperparameters"]) == params


def test_subclasses_that_override_forward_are_not_taken():
    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    class Plain(nn.Linear):
        pass

    assert kind_of(Scaled(4, 4)) is None and kind_of(Plain(4, 4)) is kind_named("SKLinear")


@pytest.mark.parametrize("d_in,d_out", [(16, 16), (64, 10), (10, 64), (33, 47)])
def test_linear_cost_model_equals_the_stored_numbers(d_in, d_out):
    """``is_cheaper`` against an independent count: the parameters and buffers each layer stores."""
    kind, dense = kind_named("SKLinear"), nn.Linear(d_in, d_out)
    for T, k in itertools.product((1, 2), (1, 2, 3, 5, 8, 13)):
        sketched = kind.build(dense, {"num_terms": T, "low_rank": k, "init": "sketch"})
        assert kind.is_cheaper(dense, {"num_terms": T, "low_rank": k}) == (layer_bytes(sketched)
                                                                           < layer_bytes(dense))


@pytest.mark.parametrize("dense", [nn.Linear(64, 48), nn.Conv2d(16, 32, 3), nn.Conv2d(16, 32, 3, groups=4)],
                         ids=["linear", "conv", "grouped-conv"])
def test_auto_spaces_hold_only_cheaper_ranks_up_to_the_break_even(dense):
    kind = kind_of(dense)
    space = kind.auto_space(dense, copy_weights=True, data_aware=False)
    ranks = [k for k in space["low_rank"].values() if k is not None]  # None: full-rank int8 (CPU)
    assert ranks and all(kind.is_cheaper(dense, {"low_rank": k}) for k in ranks)
    following = [k for k in rank_grid(lambda k: True, 4 * max(ranks)) if k > max(ranks)][0]
    assert not kind.is_cheaper(dense, {"low_rank": following})  # the grid stops at the break-even
    assert space["init"].values() == ["svd"]
    assert kind.auto_space(dense, copy_weights=False, data_aware=False)["init"].values() == ["sketch"]
    assert kind.auto_space(dense, copy_weights=True, data_aware=True)["init"].values() == ["data_svd"]


class Doubler(nn.Module):
    """A dense layer nobody here wrote: ``y = x @ W * 2``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * x @ self.weight


class DiagonalDoubler(nn.Module):
    """Its cheap replacement: keeps the diagonal only."""

    def __init__(self, width: int, scale: float = 2.0) -> None:
        super().__init__()
        self.width, self.scale = width, scale
        self.diagonal = nn.Parameter(torch.ones(width))

    @classmethod
    def from_dense(cls, layer: Doubler, scale: float = 2.0) -> DiagonalDoubler:
        module = cls(layer.weight.shape[0], scale)
        with torch.no_grad():
            module.diagonal.copy_(torch.diagonal(layer.weight))
        return module

    def reset_parameters(self) -> None:
        nn.init.ones_(self.diagonal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x * self.diagonal


class DoublerKind(LayerKind):
    """The whole of "adding a kind": this class and one ``register`` call."""

    name = "DiagonalDoubler"

    def dense_types(self) -> tuple[type, ...]:
        return (Doubler,)

    def replacement(self) -> type:
        return DiagonalDoubler

    def plan_params(self, module: nn.Module) -> dict[str, Any]:
        return {"scale": module.scale}

    def is_cheaper(self, dense: nn.Module, params: Mapping[str, Any]) -> bool:
        return True

    def shape_key(self, dense: nn.Module) -> Hashable:
        return ("Doubler", dense.weight.shape[0])


@pytest.fixture
def doubler_kind():
    register(DoublerKind())
    yield
    unregister("DiagonalDoubler")


def test_a_new_kind_is_tuned_planned_and_rebuilt_through_the_registry(doubler_kind):
    model = nn.Sequential(Doubler(6), nn.ReLU(), nn.Linear(6, 2))
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig({"type": "Doubler"}, {"scale": [2.0, 3.0]})]),
                        lambda m: 1.0)
    tuner.replace_without_tuning()
    assert isinstance(model[0], DiagonalDoubler) and model[0].scale == 2.0
    x = torch.randn(3, 6)
    expected = model[2](torch.relu(2 * x * torch.diagonal(tuner._layers.originals["0"].weight)))
    torch.testing.assert_close(model(x), expected)
    plan = sketch_plan(model)
    assert plan == {"0": {"type": "DiagonalDoubler", "params": {"scale": 2.0}}}
    fresh = nn.Sequential(Doubler(6), nn.ReLU(), nn.Linear(6, 2))
    apply_plan(fresh, plan)
    assert isinstance(fresh[0], DiagonalDoubler)
    with pytest.raises(ValueError, match="has no parameter \\['rank'\\]"):
        SKAutoTuner(fresh, TuningConfigs([LayerConfig("2", {"rank": [1]})]), lambda m: 1.0)
