"""LayerInstaller.build within reusing_builds: one build per layer and option, never a stale one."""

import torch
from torch import nn

from panther.kinds import kind_of
from panther.nn import SKLinear
from panther.tuner._installer import LayerInstaller
from panther.tuner.selectors import LayerNameResolver


def _installer() -> LayerInstaller:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 32))
    installer = LayerInstaller(model, LayerNameResolver(model), None, None)
    installer.remember({name: kind_of(model.get_submodule(name)) for name in ("0", "2")})
    return installer


SKETCH = {"num_terms": 1, "low_rank": 4}


def test_a_build_is_handed_out_again_within_the_block_only():
    installer = _installer()
    with installer.reusing_builds():
        first = installer.build("0", SKETCH, copy_weights=True)
        assert installer.build("0", dict(SKETCH), copy_weights=True) is first
        assert installer.build("2", SKETCH, copy_weights=True) is not first  # another layer
        assert installer.build("0", {**SKETCH, "low_rank": 2}, copy_weights=True) is not first  # other params
    outside = installer.build("0", SKETCH, copy_weights=True)
    assert outside is not first and outside is not installer.build("0", SKETCH, copy_weights=True)
    # the handed-out candidate is what a fresh build gives: the dense layer's rank-4 approximation
    x = torch.randn(5, 64)
    expected = SKLinear.from_dense(installer.originals["0"], 1, 4)
    torch.testing.assert_close(first(x), expected(x))


def test_a_candidate_changed_in_place_is_built_again():
    installer = _installer()
    with installer.reusing_builds():
        first = installer.build("0", SKETCH, copy_weights=True)
        with torch.no_grad():
            next(first.parameters()).add_(1.0)  # e.g. an accuracy function that trains it
        again = installer.build("0", SKETCH, copy_weights=True)
        assert again is not first
        x = torch.randn(3, 64)
        torch.testing.assert_close(again(x), SKLinear.from_dense(installer.originals["0"], 1, 4)(x))


def test_a_handed_out_candidate_follows_the_dense_layers_mode():
    installer = _installer()
    with installer.reusing_builds():
        candidate = installer.build("0", SKETCH, copy_weights=True)
        candidate.eval()  # as profiling leaves it
        installer.originals["0"].train()
        assert installer.build("0", SKETCH, copy_weights=True).training
