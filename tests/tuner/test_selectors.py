"""Layer selectors: the whole-component regex rule, dict filters, picking, aliases, validation."""

import re

import pytest
from torch import nn

from panther.tuner.selectors import validate_selector
from panther.tuner.SkAutoTuner.Configs import LayerNameResolver


class MyLinear(nn.Linear):
    """A subclass: ``type`` selectors must match it as a Linear."""


class Layer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attention = nn.Linear(2, 2)
        self.fc = nn.Linear(2, 2)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer0 = Layer()
        self.layer1 = Layer()


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = Encoder()
        self.blocks = nn.Sequential(*[nn.Linear(2, 2) for _ in range(11)])
        self.fc1 = nn.Linear(2, 2)
        self.fc10 = MyLinear(2, 2)
        self.conv = nn.Conv2d(1, 1, 1)
        self.head = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(1, 1, 1))


@pytest.fixture
def net() -> Net:
    return Net()


@pytest.fixture
def resolver(net: Net) -> LayerNameResolver:
    return LayerNameResolver(net)


def reference(model: nn.Module, pattern: str) -> list:
    """The documented rule applied naively to ``named_modules()``."""
    rule = r"(?:^|\.)(?:" + pattern + r")(?:\.|$)"
    return [name for name, _ in model.named_modules() if name and re.search(rule, name)]


def test_names_are_in_model_order_without_root(resolver, net):
    assert resolver.names() == [name for name, _ in net.named_modules()][1:]
    assert resolver.names().index("blocks.2") < resolver.names().index("blocks.10")


def test_string_matches_whole_components(resolver):
    assert resolver.resolve("fc1") == ["fc1"]
    assert resolver.resolve("blocks.1") == ["blocks.1"]
    assert resolver.resolve("encoder.*attention") == ["encoder.layer0.attention", "encoder.layer1.attention"]
    assert resolver.resolve("layer0") == ["encoder.layer0", "encoder.layer0.attention", "encoder.layer0.fc"]


def test_string_matches_nested_prefixes():
    wrapper = nn.Module()
    wrapper.model = Net()
    names = LayerNameResolver(wrapper).resolve("encoder")
    assert names[0] == "model.encoder" and "model.encoder.layer0.fc" in names
    assert all(n.startswith("model.encoder") for n in names)


@pytest.mark.parametrize("pattern",
                         ["fc1", "fc.*", "blocks.1", "blocks\\.1\\d", "encoder", "layer[01]\\.fc", "fc|conv"])
def test_string_agrees_with_documented_rule(resolver, net, pattern):
    assert resolver.resolve(pattern) == reference(net, pattern)


def test_list_is_union_in_model_order(resolver):
    assert resolver.resolve(["fc10", "encoder.layer0.fc", "fc10"]) == ["encoder.layer0.fc", "fc10"]


def test_type_selector_matches_subclasses_and_lists(resolver):
    linears = [f"encoder.layer{i}.{n}" for i in (0, 1) for n in ("attention", "fc")]
    linears += [f"blocks.{i}" for i in range(11)] + ["fc1", "fc10"]
    assert resolver.resolve({"type": "Linear"}) == linears
    assert resolver.resolve({"type": nn.Linear}) == linears
    assert resolver.resolve({"type": "MyLinear"}) == ["fc10"]
    assert resolver.resolve({"type": ["Conv2d", "ConvTranspose2d"]}) == ["conv", "head.1"]
    assert resolver.resolve({"type": "torch.nn.modules.conv.Conv2d"}) == ["conv"]


def test_dict_keys_combine_with_and(resolver):
    assert resolver.resolve({"contains": "attention"}) == ["encoder.layer0.attention", "encoder.layer1.attention"]
    assert resolver.resolve({"pattern": "encoder.*", "type": "Linear", "contains": "layer1"}) == [
        "encoder.layer1.attention",
        "encoder.layer1.fc",
    ]
    assert resolver.resolve({"pattern": ["fc1", "conv"], "type": "Conv2d"}) == ["conv"]


def test_indices_and_range_pick_from_matches(resolver):
    blocks = [f"blocks.{i}" for i in range(11)]
    sel = {"pattern": "blocks\\.\\d+"}
    assert resolver.resolve(sel) == blocks
    assert resolver.resolve({**sel, "indices": [4, 0, -1]}) == [blocks[0], blocks[4], blocks[-1]]
    assert resolver.resolve({**sel, "indices": 2}) == [blocks[2]]
    assert resolver.resolve({**sel, "range": [0, 6]}) == blocks[0:6]
    assert resolver.resolve({**sel, "range": [0, 12, 2]}) == blocks[0:12:2]
    assert resolver.resolve({**sel, "range": [8, None]}) == blocks[8:]
    with pytest.raises(IndexError, match="11 layers matched"):
        resolver.resolve({**sel, "indices": [11]})


def test_no_match_is_empty(resolver):
    assert resolver.resolve("decoder") == []
    assert resolver.resolve({"type": "LSTM"}) == []


def test_shared_module_reported_once_under_first_name():
    model = nn.Module()
    model.first = nn.Linear(2, 2)
    model.other = nn.Linear(2, 2)
    model.second = model.first
    resolver = LayerNameResolver(model)
    assert resolver.names() == ["first", "other"]
    assert resolver.resolve("second") == ["first"]
    assert resolver.resolve({"type": "Linear"}) == ["first", "other"]
    assert resolver.aliases("second") == ["first", "second"]
    assert resolver.module("second") is model.first


def test_module_lookup_and_live_view(resolver, net):
    assert resolver.module("encoder.layer1.fc") is net.encoder.layer1.fc
    assert resolver.type_name("fc10") == "MyLinear"
    with pytest.raises(KeyError, match="fc1"):
        resolver.module("fc2")
    net.fc1 = nn.Identity()
    assert resolver.type_name("fc1") == "Identity"
    assert "fc1" not in resolver.resolve({"type": "Linear"})


@pytest.mark.parametrize(
    "selector, error, match",
    [
        ("fc(", ValueError, "invalid regex.*missing \\)"),
        ({"pattern": "a[", "type": "Linear"}, ValueError, "invalid regex"),
        (["fc1", 3], TypeError, "strings"),
        ([], ValueError, "empty"),
        ("", ValueError, "empty"),
        (5, TypeError, "selector"),
        ({"type": "Linear", "name": "x"}, ValueError, "unknown"),
        ({"type": "Linear", "indices": [0], "range": [0, 2]}, ValueError, "together"),
        ({"type": "Linear", "range": [0]}, ValueError, "range"),
        ({"type": "Linear", "range": [0, 4, 0]}, ValueError, "zero"),
        ({"type": "Linear", "indices": ["0"]}, TypeError, "integers"),
        ({"indices": [0]}, ValueError, "at least one"),
        ({"type": 3}, TypeError, "class"),
        ({"contains": [1]}, TypeError, "strings"),
        ({"pattern": []}, ValueError, "empty"),
    ],
)
def test_malformed_selectors(selector, error, match):
    with pytest.raises(error, match=match):
        validate_selector(selector)
