"""SKAutoTuner: configuration, validation, installing, persistence and the supported layer types."""

import logging

import pytest
import torch
from torch import nn

from panther.nn import RandMultiHeadAttention, SKConv2d, SKLinear
from panther.plans import apply_plan, load_plan
from panther.tuner import Categorical, Float, Int, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

RANKS = {"num_terms": Categorical([1]), "low_rank": Categorical([4, 8])}


def snapshot(model):
    return [(name, module) for name, module in model.named_modules()]


def config(names=("fc1",), params=None, **kwargs):
    return TuningConfigs([LayerConfig(list(names), params or RANKS, **kwargs)])


# -- validation: before the model is touched ------------------------------------------------------
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(configs=config(["nope"])), ValueError, "nope"),
    (dict(configs=config(["fc1"], {"low_rank": [4], "rank": [2]})), ValueError, "rank"),
    (dict(configs=TuningConfigs([LayerConfig("fc1", RANKS), LayerConfig({"type": "Linear"}, RANKS)])), ValueError,
     "configs\\[0\\] and configs\\[1\\]"),
    (dict(accuracy_eval_func="acc"), TypeError, "accuracy_eval_func"),
    (dict(optmization_eval_func=42, accuracy_threshold=0.5), TypeError, "optmization_eval_func"),
    (dict(optmization_eval_func=lambda m: 1.0), ValueError, "accuracy_threshold"),
    (dict(num_runs_per_param=0), ValueError, "num_runs_per_param"),
    (dict(accuracy_threshold=float("nan")), ValueError, "accuracy_threshold"),
    (dict(max_total_trials=0), ValueError, "max_total_trials"),
    (dict(search_algorithm=OptunaSearch(direction="minimize")), ValueError, "maximize"),
    (dict(search_algorithm=object()), TypeError, "SearchAlgorithm"),
    (dict(optmization_eval_func=lambda m: 1.0, optimization_eval_func=lambda m: 2.0, accuracy_threshold=0.5),
     ValueError, "not two"),
])
def test_bad_arguments_fail_before_the_model_is_touched(digits_model, accuracy_fn, kwargs, error, match):
    before = snapshot(digits_model)
    arguments = dict(model=digits_model, configs=config(), accuracy_eval_func=accuracy_fn)
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        SKAutoTuner(**arguments)
    assert snapshot(digits_model) == before


def test_continuous_spec_with_a_finite_only_search_is_rejected(digits_model, accuracy_fn, scripted_search):
    configs = config(["fc1"], {"low_rank": Float(2.0, 8.0)})
    with pytest.raises(ValueError, match="continuous"):
        SKAutoTuner(digits_model, configs, accuracy_fn, search_algorithm=scripted_search([]))


def test_selector_of_only_unsupported_layers_names_it(accuracy_fn):
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
    with pytest.raises(ValueError, match="'1'.*LayerNorm"):
        with pytest.warns(UserWarning, match="LayerNorm"):
            SKAutoTuner(model, config(["1"]), accuracy_fn)


def test_optimization_spelling_is_accepted(digits_model, accuracy_fn):
    speed = lambda m: 1.0  # noqa: E731
    tuner = SKAutoTuner(digits_model, config(), accuracy_fn, accuracy_threshold=0.5, optimization_eval_func=speed)
    assert tuner.optmization_eval_func is speed and tuner.optimization_eval_func is speed


# -- configuration accessors --------------------------------------------------------------------
def test_get_configs_is_resolved_and_set_configs_re_resolves(digits_model, accuracy_fn):
    tuner = SKAutoTuner(digits_model, TuningConfigs([LayerConfig({"type": "Linear"}, "auto")]), accuracy_fn)
    resolved = tuner.getConfigs()
    names = [name for c in resolved for name in c.layer_names]
    assert names == ["fc1", "fc2", "fc3"]
    for c in resolved:
        assert set(c.params) == {"num_terms", "low_rank", "init"}
        assert c.params["low_rank"].values() == sorted(c.params["low_rank"].values())
    tuner.setConfigs(TuningConfigs([LayerConfig("fc2", {"low_rank": [4]})]))
    assert [c.layer_names for c in tuner.getConfigs()] == [["fc2"]]
    assert tuner.getResolver().module("fc2") is digits_model.fc2


def test_joint_config_is_one_group_with_shared_params(digits_model, accuracy_fn, scripted_search):
    search = scripted_search([{"num_terms": 1, "low_rank": 8}])
    tuner = SKAutoTuner(digits_model, config(["fc1", "fc2"], RANKS, separate=False), accuracy_fn,
                        search_algorithm=search)
    best = tuner.tune()
    assert search.groups == ["fc1+fc2"]
    assert best == {"fc1": {"num_terms": 1, "low_rank": 8}, "fc2": {"num_terms": 1, "low_rank": 8}}
    assert search.spaces[0] == {"num_terms": [1], "low_rank": [4, 8]}  # finite lists for a plain search


# -- installing and exporting -------------------------------------------------------------------
def test_apply_best_params_and_plan_rebuild_the_same_model(digits_model, trained_digits, accuracy_fn, tmp_path,
                                                           digits, digits_mlp_class):
    tuner = SKAutoTuner(digits_model, config(["fc1", "fc2"]), accuracy_fn,
                        search_algorithm=OptunaSearch(n_trials=2, seed=0))
    best = tuner.tune()
    assert isinstance(digits_model.fc1, nn.Linear)  # tune() installs nothing
    model = tuner.apply_best_params()
    for name, params in best.items():
        layer = getattr(model, name)
        assert isinstance(layer, SKLinear) and layer.low_rank == params["low_rank"]
    tuner.save_plan(tmp_path / "plan.json")
    assert load_plan(tmp_path / "plan.json") == tuner.best_plan()
    fresh = digits_mlp_class()
    fresh.load_state_dict(trained_digits[0])
    apply_plan(fresh, load_plan(tmp_path / "plan.json"))
    x = digits[2][:50]
    torch.testing.assert_close(fresh(x), model(x))


def test_results_survive_save_and_load(digits_model, accuracy_fn, tmp_path, digits_mlp_class):
    tuner = SKAutoTuner(digits_model, config(["fc1", "fc2"]), accuracy_fn,
                        search_algorithm=OptunaSearch(n_trials=2, seed=0))
    best = tuner.tune()
    tuner.save_tuning_results(tmp_path / "results.pkl")
    other = SKAutoTuner(digits_mlp_class(), config(["fc1", "fc2"]), accuracy_fn)
    other.load_tuning_results(tmp_path / "results.pkl")
    assert other.get_best_params() == best
    assert other.get_results_dataframe().equals(tuner.get_results_dataframe())
    with pytest.raises(FileNotFoundError):
        other.load_tuning_results(tmp_path / "missing.pkl")
    mismatched = SKAutoTuner(digits_mlp_class(), config(["fc3"]), accuracy_fn)
    with pytest.raises(ValueError, match="fc1"):
        mismatched.load_tuning_results(tmp_path / "results.pkl")


# -- layer types ---------------------------------------------------------------------------------
class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 32, 3, padding=1)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        return self.head(self.conv(x).mean(dim=(2, 3)))


def test_conv_and_attention_layers_are_replaced():
    torch.manual_seed(0)
    model = nn.ModuleDict({"conv": ConvNet(), "attn": nn.MultiheadAttention(16, 2, batch_first=True)})
    x, q = torch.randn(4, 8, 6, 6), torch.randn(2, 5, 16)

    def score(m):
        with torch.no_grad():
            return float(m["conv"](x).sum() + m["attn"](q, q, q)[0].sum())

    configs = TuningConfigs([LayerConfig("conv.conv", "auto"),
                             LayerConfig("attn", {"num_random_features": [8]})])
    tuner = SKAutoTuner(model, configs, score, search_algorithm=OptunaSearch(n_trials=1, seed=0))
    tuner.tune()
    tuner.apply_best_params()
    assert isinstance(model["conv"].conv, SKConv2d) and isinstance(model["attn"], RandMultiHeadAttention)
    assert model["attn"].num_random_features == 8


def test_linear_inside_attention_is_skipped_with_a_warning(accuracy_fn):
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2), "fc": nn.Linear(16, 16)})
    with pytest.warns(UserWarning, match="attn.out_proj.*MultiheadAttention"):
        tuner = SKAutoTuner(model, TuningConfigs([LayerConfig({"type": "Linear"}, RANKS)]), lambda m: 1.0)
    assert [c.layer_names for c in tuner.getConfigs()] == [["fc"]]


def test_containers_matched_by_a_pattern_are_skipped_quietly(recwarn):
    model = nn.ModuleDict({"block": nn.Sequential(nn.Linear(8, 8))})
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig({"contains": "block"}, RANKS)]), lambda m: 1.0)
    assert [c.layer_names for c in tuner.getConfigs()] == [["block.0"]]
    assert not [w for w in recwarn if "skipping" in str(w.message)]


# -- progress output -----------------------------------------------------------------------------
def test_verbose_prints_one_line_per_trial_and_a_summary(digits_model, accuracy_fn, scripted_search, capsys,
                                                          caplog):
    proposals = [{"num_terms": 1, "low_rank": 4}, {"num_terms": 1, "low_rank": 8}]
    quiet = SKAutoTuner(digits_model, config(), accuracy_fn, search_algorithm=scripted_search(proposals))
    with caplog.at_level(logging.INFO, logger="panther.tuner"):
        quiet.tune()
    assert capsys.readouterr().out == ""
    assert sum("trial" in r.getMessage() for r in caplog.records) == 2
    loud = SKAutoTuner(digits_model, config(), accuracy_fn, search_algorithm=scripted_search(proposals),
                       verbose=True)
    loud.tune()
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if line.startswith("[fc1] trial")] and out.count("[fc1] trial") == 2
    assert loud.summary() in out and "low_rank=8" in loud.summary()


def test_train_flags_restored_and_resource_passed(digits_model, scripted_search, accuracy_fn):
    digits_model.train()
    seen = []

    class ResourceSearch(scripted_search):
        def get_resource(self):
            return 7

    def acc(model, resource=None):
        seen.append(resource)
        return accuracy_fn(model)  # calls model.eval()

    search = ResourceSearch([{"num_terms": 1, "low_rank": 4}])
    SKAutoTuner(digits_model, config(), acc, search_algorithm=search).tune()
    assert seen == [7]
    assert all(m.training for m in digits_model.modules())


def test_int_spec_is_sampled_within_its_grid(digits_model, accuracy_fn):
    tuner = SKAutoTuner(digits_model, config(["fc2"], {"num_terms": [1], "low_rank": Int(4, 16, step=4)}),
                        accuracy_fn, search_algorithm=OptunaSearch(n_trials=4, seed=1))
    tuner.tune()
    df = tuner.get_results_dataframe()
    assert set(df["low_rank"]) <= {4, 8, 12, 16}
