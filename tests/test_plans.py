"""Plans and rebuilding: a fresh dense model must reload a sketched model's weights exactly."""

import json

import pytest
import torch
from torch import nn

from panther.nn import SKLinear
from panther.nn.surgery import replace_module
from panther.plans import apply_plan, load_plan, rebuild_sketched_layers, save_plan, sketch_plan


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 32))
        self.head = nn.Linear(32, 3)
        self.alias = self.trunk[2]  # the same module under a second name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.alias(torch.relu(self.trunk[0](x))))


def test_replace_module_keeps_shared_modules_shared():
    model = TwoHeads()
    new = SKLinear.from_dense(model.trunk[2], 1, 4)
    assert sorted(replace_module(model, "alias", new)) == ["alias", "trunk.2"]
    assert model.trunk[2] is new and model.alias is new


def test_plan_round_trip_through_json_and_a_fresh_model(tmp_path):
    model = TwoHeads()
    replace_module(model, "trunk.0", SKLinear.from_dense(model.trunk[0], 1, 3))
    replace_module(model, "trunk.2", SKLinear.from_dense(model.trunk[2], 2, 2))
    plan = sketch_plan(model)
    assert plan == {
        "trunk.0": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 3, "init": "svd"}},
        "trunk.2": {"type": "SKLinear", "params": {"num_terms": 2, "low_rank": 2, "init": "svd"}},
    }
    path = tmp_path / "plan.json"
    save_plan(plan, path)
    assert json.loads(path.read_text()) == plan
    fresh = apply_plan(TwoHeads(), load_plan(path))
    assert sketch_plan(fresh) == plan
    assert fresh.alias is fresh.trunk[2]


@pytest.mark.parametrize("source", ["state_dict", "plan"])
def test_rebuild_then_strict_load_reproduces_outputs(source):
    model = TwoHeads()
    replace_module(model, "trunk.2", SKLinear.from_dense(model.trunk[2], 1, 4))
    with torch.no_grad():
        model.trunk[2].S1s.add_(0.1)  # trained away from its initialisation
    state = model.state_dict()
    fresh = TwoHeads()
    rebuild_sketched_layers(fresh, state if source == "state_dict" else sketch_plan(model))
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(5, 12)
    torch.testing.assert_close(fresh(x), model(x), rtol=0, atol=0)


def test_bad_plans_fail_before_the_model_changes():
    model = TwoHeads()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bad_plans = [
        {"trunk.0": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 2}},
         "nope": {"type": "SKLinear", "params": {}}},
        {"trunk.0": {"type": "SKLinear", "params": {"num_terms": 1, "low_rank": 2}},
         "trunk.1": {"type": "SKLinear", "params": {}}},
        {"trunk.0": {"type": "Mystery", "params": {}}},
        {"trunk.0": {"type": "SKLinear"}},
        ["trunk.0"],
    ]
    for plan in bad_plans:
        with pytest.raises(ValueError):
            apply_plan(model, plan)
        assert isinstance(model.trunk[0], nn.Linear)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_old_plan_paths_say_where_the_names_went():
    """panther.nn holds no plan code (plans need the kind registry above it); the old names point there."""
    with pytest.raises(ImportError, match="panther.plans"):
        from panther.nn import rebuild_sketched_layers  # noqa: F401
    with pytest.raises(ImportError, match="panther.plans"):
        from panther.nn.rebuild import apply_plan as old_apply_plan  # noqa: F401
    with pytest.raises(ImportError, match="panther.nn.surgery"):
        from panther.nn.rebuild import replace_module as old_replace_module  # noqa: F401
