"""The allowed accuracy drop is shared between groups, and the composed model's spare margin is used."""

import copy

import pytest
from sketch_copies import with_sketches

from panther.tuner import Categorical, LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs, layer_bytes
from panther.tuner.results import TuningResults
from panther.tuner.tuner import group_thresholds


def test_group_thresholds_share_the_drop_by_weight():
    shares = group_thresholds(0.9, 0.8, {"small": 1, "large": 3})
    assert shares == pytest.approx({"small": 0.875, "large": 0.825})
    # the drops add up to the whole margin
    assert sum(0.9 - t for t in shares.values()) == pytest.approx(0.1)


def test_a_single_group_gets_exactly_the_threshold():
    # 0.97 - (0.97 - 0.1) * 1 is not 0.1 in floating point; a trial at exactly 0.1 must still pass
    assert group_thresholds(0.97, 0.1, {"only": 7}) == {"only": 0.1}


@pytest.mark.parametrize("baseline", [0.7, 0.8, float("nan")])
def test_without_a_margin_every_group_gets_the_threshold(baseline):
    assert group_thresholds(baseline, 0.8, {"a": 1, "b": 5}) == {"a": 0.8, "b": 0.8}


def test_share_accuracy_drop_must_be_a_bool(digits_model, accuracy_fn):
    with pytest.raises(TypeError, match="share_accuracy_drop"):
        SKAutoTuner(digits_model, TuningConfigs([LayerConfig(["fc1"], {"low_rank": [4]})]), accuracy_fn,
                    share_accuracy_drop="yes")


def test_groups_are_held_to_their_share_and_the_spare_margin_is_spent(digits_model, accuracy_fn, dense_accuracy,
                                                                     tmp_path):
    small, large = 4, 16
    fc2_small = accuracy_fn(with_sketches(digits_model, {"fc2": small}))
    threshold = fc2_small - 1e-3  # rank 4 in fc2 alone meets the whole-model threshold ...
    dense_bytes = {name: layer_bytes(getattr(digits_model, name)) for name in ("fc1", "fc2")}
    expected = {name: dense_accuracy - (dense_accuracy - threshold) * w / sum(dense_bytes.values())
                for name, w in dense_bytes.items()}
    assert fc2_small < expected["fc2"]  # ... but not its share of the drop
    both_large = accuracy_fn(with_sketches(digits_model, {"fc1": large, "fc2": large}))
    assert both_large >= threshold  # premise: there is a cheaper composed model than the shares allow

    configs = TuningConfigs([LayerConfig(["fc1"], {"num_terms": Categorical([1]), "low_rank": Categorical([large])}),
                             LayerConfig(["fc2"], {"num_terms": Categorical([1]),
                                                   "low_rank": Categorical([small, large])})])
    tuner = SKAutoTuner(copy.deepcopy(digits_model), configs, accuracy_fn, accuracy_threshold=threshold,
                        search_algorithm=OptunaSearch(n_trials=2, seed=0), strategy="search")
    best = tuner.tune()

    assert tuner.results.group_thresholds == pytest.approx(expected)
    for record in tuner.results.records:
        assert record.feasible == (record.accuracy >= expected[record.group])
    assert tuner.results.best_record("fc2").params["low_rank"] == large  # the share rules rank 4 out
    by_shares = sum(r.bytes if (r := tuner.results.best_record(g)) is not None else dense_bytes[g]
                    for g in dense_bytes)
    installed = tuner.apply_best_params()
    assert sum(layer_bytes(getattr(installed, name)) for name in dense_bytes) < by_shares  # margin spent
    chosen = {name: params["low_rank"] for name, params in best.items()}
    assert accuracy_fn(with_sketches(digits_model, chosen)) >= threshold  # the promise, checked independently
    assert tuner.results.composed_accuracy == pytest.approx(accuracy_fn(installed))
    assert "spare margin" in tuner.summary()
    # the shares and the choices survive a results file
    tuner.save_tuning_results(tmp_path / "results.pkl")
    restored = TuningResults.load(tmp_path / "results.pkl")
    assert restored.group_thresholds == tuner.results.group_thresholds and restored.chosen == tuner.results.chosen


@pytest.mark.parametrize("fewer_weights_are_faster", [True, False])
def test_with_a_speed_objective_the_margin_only_buys_measured_speed(digits_model, accuracy_fn,
                                                                    fewer_weights_are_faster):
    def stored(model):
        return sum(layer_bytes(getattr(model, name)) for name in ("fc1", "fc2"))

    def speed(model):  # a stand-in for throughput that either rewards or punishes smaller layers
        return 1e6 / stored(model) if fewer_weights_are_faster else float(stored(model))

    small, large = 4, 16
    threshold = accuracy_fn(with_sketches(digits_model, {"fc2": small})) - 1e-3
    assert accuracy_fn(with_sketches(digits_model, {"fc1": large, "fc2": large})) >= threshold  # premise
    configs = TuningConfigs([LayerConfig(["fc1"], {"num_terms": Categorical([1]), "low_rank": Categorical([large])}),
                             LayerConfig(["fc2"], {"num_terms": Categorical([1]),
                                                   "low_rank": Categorical([small, large])})])
    tuner = SKAutoTuner(copy.deepcopy(digits_model), configs, accuracy_fn, accuracy_threshold=threshold,
                        optmization_eval_func=speed, search_algorithm=OptunaSearch(n_trials=2, seed=0),
                        strategy="search")
    best = tuner.tune()
    by_shares = {g: r.params for g in ("fc1", "fc2") if (r := tuner.results.best_record(g)) is not None}
    installed = tuner.apply_best_params()
    if fewer_weights_are_faster:
        assert best != by_shares and speed(installed) > speed(with_sketches(
            digits_model, {g: p["low_rank"] for g, p in by_shares.items()}))
    else:
        assert best == by_shares  # every cheaper candidate measured slower: nothing changes
    assert accuracy_fn(installed) >= threshold
