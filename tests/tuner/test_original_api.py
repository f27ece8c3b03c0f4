"""Surfaces of the original Panther's tuner API that this package accepts as well."""

import pickle

import pytest
from torch import nn

from panther.tuner import Categorical, LayerConfig, SKAutoTuner, TuningConfigs
from panther.tuner.selectors import LayerNameResolver


def _model() -> nn.Sequential:
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.Linear(4, 2))


def test_layer_name_resolver_takes_a_layer_map():
    model = _model()
    assert LayerNameResolver(model, None).resolve({"type": "Linear"}) == ["0", "2", "3"]
    only = {"2": model[2], "3": model[3]}
    resolver = LayerNameResolver(model, layer_map=only)
    assert resolver.layer_map == only
    assert resolver.resolve({"type": "Linear"}) == ["2", "3"]  # "0" is outside the map
    assert resolver.resolve({"type": "Linear", "indices": [0]}) == ["2"]
    with pytest.raises(KeyError, match="'9'"):
        LayerNameResolver(model, layer_map={"9": nn.Linear(1, 1)})


def test_categorical_choices_is_a_list():
    spec = Categorical((1, 2, 3))
    assert spec.choices == [1, 2, 3] and isinstance(spec.choices, list)
    assert spec == Categorical([1, 2, 3]) and hash(spec) == hash(Categorical([1, 2, 3]))
    assert spec.to_optuna().choices == (1, 2, 3)


def test_original_import_paths():
    from panther.tuner import Float, Int, OptunaSearch, SearchAlgorithm
    from panther.tuner.params import ParamSpec
    from panther.tuner.SkAutoTuner import Configs, Searching

    assert (Configs.Categorical, Configs.Int, Configs.Float, Configs.ParamSpec) == (Categorical, Int, Float,
                                                                                  ParamSpec)
    assert (Searching.OptunaSearch, Searching.SearchAlgorithm) == (OptunaSearch, SearchAlgorithm)
    assert {"OptunaSearch", "SearchAlgorithm"} <= set(dir(Searching))


@pytest.mark.parametrize("selector, legacy_error", [
    ({"type": "Linear", "indices": [3]}, IndexError),
    ({"type": "Linear", "indices": [-4]}, IndexError),
    ({"type": "Linear", "indices": [0.5]}, TypeError),
    ({"type": "Linear", "range": [0, 1.5]}, TypeError),
    ({"type": "Linear", "range": ["0", 2]}, TypeError),
])
def test_selector_index_errors_are_value_errors(selector, legacy_error):
    resolver = LayerNameResolver(_model())
    with pytest.raises(ValueError):
        resolver.resolve(selector)
    with pytest.raises(legacy_error):  # code catching the earlier exception types still works
        resolver.resolve(selector)


def test_save_tuning_results_creates_missing_folders(tmp_path):
    model = _model()
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("0", {"low_rank": [1, 2], "num_terms": [1]})]),
                        lambda m: 1.0)
    tuner.tune()
    path = tmp_path / "runs" / "today" / "results.pkl"
    tuner.save_tuning_results(str(path))
    with open(path, "rb") as handle:
        saved = pickle.load(handle)
    assert sorted(r["params"]["low_rank"] for r in saved["records"]) == [1, 2]
    tuner.load_tuning_results(path)
    assert [r.params for r in tuner.results.records] == [r["params"] for r in saved["records"]]
