"""LayerConfig / TuningConfigs: normalisation, validation, immutable edits, dict round trips."""

import json

import pytest

from panther.tuner import Categorical, Float, Int, LayerConfig, TuningConfigs


def make(names="fc1", **params) -> LayerConfig:
    return LayerConfig(layer_names=names, params=params or {"num_terms": Categorical([1, 2])})


def test_spec_example_and_legacy_lists_normalise_to_specs():
    config = LayerConfig(
        layer_names=["fc1", "fc2"],
        params={"num_terms": [1, 2, 3], "low_rank": Int(16, 128, step=16)},
        separate=True,
        copy_weights=False,
    )
    assert config.layer_names == ["fc1", "fc2"]
    assert config.params == {"num_terms": Categorical([1, 2, 3]), "low_rank": Int(16, 128, step=16)}
    assert (config.separate, config.copy_weights, config.is_auto) == (True, False, False)


def test_auto_params():
    config = LayerConfig(layer_names={"type": "Linear"}, params="auto", separate=False)
    assert config.params == "auto" and config.is_auto and config.separate is False


def test_selector_is_copied_not_aliased():
    names = ["fc1"]
    config = LayerConfig(names, {"k": [1]})
    names.append("fc2")
    assert config.layer_names == ["fc1"]


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"params": {}}, ValueError, "empty"),
        ({"params": "manual"}, ValueError, "'auto'"),
        ({"params": [1, 2]}, TypeError, "dict"),
        ({"params": {"num_terms": 3}}, TypeError, "'num_terms'"),
        ({"params": {"num_terms": "abc"}}, TypeError, "'num_terms'"),
        ({"params": {1: [1]}}, TypeError, "names"),
        ({"params": {"k": []}}, ValueError, "at least one"),
        ({"layer_names": {"typ": "Linear"}}, ValueError, "unknown"),
        ({"layer_names": "fc("}, ValueError, "regex"),
        ({"separate": "yes"}, TypeError, "separate"),
        ({"copy_weights": 1}, TypeError, "copy_weights"),
    ],
)
def test_layer_config_validation(kwargs, error, match):
    fields = {"layer_names": "fc1", "params": {"k": [1]}, **kwargs}
    with pytest.raises(error, match=match):
        LayerConfig(**fields)


def test_layer_config_equality_repr_and_copy():
    a = make("fc1", k=[1, 2])
    assert a == make("fc1", k=Categorical([1, 2]))
    assert a != make("fc2", k=[1, 2]) and a != make("fc1", k=[1, 3])
    assert repr(a) == (
        "LayerConfig(layer_names='fc1', params={'k': Categorical([1, 2])}, separate=True, copy_weights=True)"
    )
    b = a.copy(layer_names=["fc3"], separate=False)
    assert (b.layer_names, b.separate, b.params) == (["fc3"], False, a.params) and a.layer_names == "fc1"
    with pytest.raises(TypeError, match="no fields"):
        a.copy(sparate=False)


def test_layer_config_dict_round_trip_through_json():
    config = LayerConfig(
        {"pattern": "encoder.*", "type": "Linear", "range": [0, 4]},
        {"num_terms": Categorical([1, 2]), "low_rank": Int(8, 64, step=8), "p": Float(0.0, 1.0)},
        separate=False,
    )
    data = json.loads(json.dumps(config.to_dict()))
    assert data["params"]["low_rank"] == {"type": "int", "low": 8, "high": 64, "step": 8}
    assert LayerConfig.from_dict(data) == config


def test_layer_config_from_plain_dict_accepts_lists_spec_dicts_and_auto():
    config = LayerConfig.from_dict(
        {"layer_names": ["fc1"],
         "params": {"num_terms": [1, 2], "low_rank": {"type": "int", "low": 8, "high": 16, "step": 8}}}
    )
    assert config.params == {"num_terms": Categorical([1, 2]), "low_rank": Int(8, 16, step=8)}
    assert LayerConfig.from_dict({"layer_names": "fc1", "params": "auto"}).is_auto
    with pytest.raises(ValueError, match="unknown LayerConfig keys"):
        LayerConfig.from_dict({"layer_names": "fc1", "params": "auto", "seperate": True})
    with pytest.raises(ValueError, match="missing"):
        LayerConfig.from_dict({"layer_names": "fc1"})


def test_tuning_configs_container_protocol():
    configs = TuningConfigs([make("encoder.*"), make("decoder.*")])
    assert len(configs) == 2
    assert configs[0].layer_names == "encoder.*"
    assert [c.layer_names for c in configs] == ["encoder.*", "decoder.*"]
    assert configs[-1:] == TuningConfigs([make("decoder.*")])


def test_edits_return_new_collections_and_leave_original_alone():
    original = TuningConfigs([make("a"), make("b")])
    added = original.add(make("c"))
    removed = original.remove(0)
    replaced = original.replace(1, make("z"))
    assert [c.layer_names for c in original] == ["a", "b"]
    assert [c.layer_names for c in added] == ["a", "b", "c"]
    assert [c.layer_names for c in removed] == ["b"]
    assert [c.layer_names for c in replaced] == ["a", "z"]
    with pytest.raises(IndexError):
        original.remove(2)
    with pytest.raises(TypeError):
        original.add({"layer_names": "x"})


def test_clone_is_deep():
    original = TuningConfigs([make("a", k=[1, 2])])
    clone = original.clone()
    assert clone == original
    clone[0].params["k"] = Categorical([9])
    clone[0].layer_names = "b"
    assert original[0] == make("a", k=[1, 2])


def test_merge_filter_map():
    left, right = TuningConfigs([make("a")]), TuningConfigs([make("b"), make("c")])
    merged = left.merge(right)
    assert [c.layer_names for c in merged] == ["a", "b", "c"]
    assert [c.layer_names for c in merged.filter(lambda c: c.layer_names != "b")] == ["a", "c"]
    joint = merged.map(lambda c: c.copy(separate=False))
    assert [c.separate for c in joint] == [False] * 3 and all(c.separate for c in merged)
    with pytest.raises(TypeError, match="transform result 0"):
        merged.map(lambda c: c.to_dict())
    with pytest.raises(TypeError):
        left.merge([make("b")])


def test_element_types_are_checked():
    with pytest.raises(TypeError, match=r"configs\[1\]"):
        TuningConfigs([make("a"), {"layer_names": "b", "params": "auto"}])
    with pytest.raises(TypeError):
        TuningConfigs(make("a"))


def test_coerce_and_dict_round_trip():
    single = make("a")
    expected = TuningConfigs([single])
    assert TuningConfigs.coerce(expected) is expected
    assert TuningConfigs.coerce(single) == expected
    assert TuningConfigs.coerce([single]) == expected
    assert TuningConfigs.coerce([single.to_dict()]) == expected
    assert TuningConfigs.coerce(single.to_dict()) == expected
    both = TuningConfigs([single, make("b", k=Int(1, 3))])
    assert TuningConfigs.from_dict(json.loads(json.dumps(both.to_dict()))) == both
    assert TuningConfigs.coerce(both.to_dict()) == both
    assert TuningConfigs.from_list(both.to_list()) == both
    with pytest.raises(TypeError):
        TuningConfigs.coerce("fc1")
    with pytest.raises(ValueError):
        TuningConfigs.from_dict({"configs": [], "extra": 1})


def test_repr_lists_configs():
    text = repr(TuningConfigs([make("a"), make("b")]))
    assert text.startswith("TuningConfigs([") and "layer_names='a'" in text and "layer_names='b'" in text


def test_original_panther_import_paths():
    from panther.tuner import ParamsResolver as CurrentParamsResolver
    from panther.tuner.selectors import LayerNameResolver as CurrentResolver
    from panther.tuner.SkAutoTuner import LayerConfig as LegacyLayerConfig
    from panther.tuner.SkAutoTuner.Configs import LayerNameResolver, ParamsResolver

    assert ParamsResolver is CurrentParamsResolver and LayerNameResolver is CurrentResolver
    assert LegacyLayerConfig is LayerConfig
