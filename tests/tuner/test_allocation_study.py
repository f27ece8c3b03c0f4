"""Every plan an allocating tune evaluates is a trial of the search's Optuna study (the spec's tools work).

Expectations are computed independently of the recording: bytes saved from the built layers,
feasibility from the plan's measured accuracy against the threshold, labels from the params.
"""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState
from test_tuner_allocation import RANKS, SENSITIVITY, FourLayers, KnownAccuracy

from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs, layer_bytes
from panther.tuner._plan_trials import option_labels

THRESHOLD = 0.97


def default_tuner(model, accuracy, threshold=THRESHOLD, **kwargs) -> SKAutoTuner:
    configs = TuningConfigs([LayerConfig(list(SENSITIVITY), {"num_terms": [1], "low_rank": RANKS, "init": ["svd"]},
                                         separate=True)])
    return SKAutoTuner(model, configs, accuracy, accuracy_threshold=threshold, **kwargs)


def test_option_labels_name_what_differs_between_options():
    linear = [{"num_terms": 1, "low_rank": 64, "init": "data_svd"},
              {"num_terms": 1, "low_rank": 64, "init": "data_svd", "quantize": True},
              {"low_rank": None, "quantize": True}]
    assert option_labels(linear) == ["low_rank=64", "low_rank=64+quantize", "quantize"]
    assert option_labels([{"k": 2, "m": "a"}, {"k": 4, "m": "a"}]) == ["k=2", "k=4"]
    # a single option, or labels that would read the same, spell out every parameter
    assert option_labels([{"k": 2}]) == ["k=2"]
    assert option_labels([{"k": None, "f": False}, {"k": None}]) == ["k=None,f=False", "k=None"]


@pytest.fixture(scope="module")
def tuned():
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    tuner = default_tuner(model, accuracy)
    assert tuner.allocates
    tuner.tune()
    return tuner, accuracy


def test_every_evaluated_plan_is_a_trial_with_its_measurements(tuned):
    tuner, accuracy = tuned
    study = tuner.search_algorithm.study
    plans = tuner.results.plans
    assert study is not None and len(study.trials) == len(plans) >= 3
    dense_total = sum(layer_bytes(accuracy.dense[n]) for n in SENSITIVITY)
    for trial, plan in zip(study.trials, plans, strict=True):
        assert trial.user_attrs["plan"] == plan.number and trial.user_attrs["phase"] == plan.phase
        assert trial.user_attrs["accuracy"] == pytest.approx(plan.accuracy)
        assert set(trial.params) == set(SENSITIVITY)  # one parameter per tuned layer
        for layer, label in trial.params.items():
            expected = f"low_rank={plan.choices[layer]['low_rank']}" if layer in plan.choices else "dense"
            assert label == expected
        built = {n: tuner._layers.build(n, plan.choices[n], True) if n in plan.choices else accuracy.dense[n]
                 for n in SENSITIVITY}
        feasible = accuracy.of_modules(built) >= THRESHOLD
        if plan.phase == "sensitivity":
            assert trial.state == TrialState.PRUNED
        elif feasible:
            saved = dense_total - sum(layer_bytes(m) for m in built.values())
            assert trial.state == TrialState.COMPLETE and trial.value == pytest.approx(saved / dense_total)
        else:
            assert trial.value < 0 and trial.user_attrs["feasible"] is False


def test_the_studys_best_is_the_chosen_plan_and_never_an_infeasible_one(tuned):
    tuner, _ = tuned
    study = tuner.search_algorithm.study
    best = tuner.get_best_params()
    assert study.best_params == {n: f"low_rank={best[n]['low_rank']}" if n in best else "dense" for n in SENSITIVITY}
    assert study.best_trial.user_attrs["plan"] == tuner.results.chosen_plan == study.user_attrs["chosen_plan"]
    assert study.best_trial.user_attrs["feasible"] is True
    infeasible = [t.value for t in study.trials if t.state == TrialState.COMPLETE and not t.user_attrs["feasible"]]
    assert all(v < study.best_value for v in infeasible)
    assert tuner.search_algorithm.get_best_params() == study.best_params


def test_the_specs_visualisation_code_runs_after_an_allocating_tune(tuned):
    """The spec's "External Tools" section, verbatim but for .show()."""
    pytest.importorskip("plotly")
    tuner, _ = tuned
    study = tuner.search_algorithm.study
    figures = [optuna.visualization.plot_optimization_history(study),
               optuna.visualization.plot_param_importances(study),
               optuna.visualization.plot_parallel_coordinate(study),
               optuna.visualization.plot_slice(study)]
    assert all(figure.data for figure in figures)
    frame = tuner.search_algorithm.get_trials_dataframe()
    assert len(frame) == len(tuner.results.plans) and "user_attrs_accuracy" in frame
    assert {f"params_{n}" for n in SENSITIVITY} <= set(frame.columns)
    pytest.importorskip("matplotlib")
    from optuna.visualization.matplotlib import plot_optimization_history

    assert plot_optimization_history(study) is not None


def test_a_given_storage_holds_the_plans(tmp_path):
    model = FourLayers()
    storage = f"sqlite:///{tmp_path / 'plans.db'}"
    tuner = default_tuner(model, KnownAccuracy(model), strategy="allocate",
                          search_algorithm=OptunaSearch(study_name="alloc", storage=storage))
    tuner.tune()
    stored = optuna.load_study(study_name="alloc::allocation@0.97", storage=storage)
    assert [t.user_attrs["plan"] for t in stored.trials] == [p.number for p in tuner.results.plans]
    assert not any(t.value is not None and math.isnan(t.value) for t in stored.trials)


def test_a_plain_optuna_search_allocates_within_its_n_trials():
    """The rule: a given OptunaSearch without a sampler allocates, its n_trials bounding the plans."""
    model = FourLayers()
    tuner = default_tuner(model, KnownAccuracy(model), search_algorithm=OptunaSearch(n_trials=3, seed=0))
    assert tuner.allocates
    tuner.tune()
    assert len(tuner.results.plans) == len(tuner.search_algorithm.study.trials) == 3


def test_the_specs_study_persistence_example_with_a_threshold_allocates(tmp_path, monkeypatch):
    """The spec's "Study Persistence" example, with accuracy_threshold added, run as written."""
    monkeypatch.chdir(tmp_path)  # the example writes sqlite:///tuning_results.db
    model = FourLayers()
    accuracy = KnownAccuracy(model)
    namespace = {"model": model, "accuracy_eval_func": accuracy, "tuning_configs": default_tuner(
        model, accuracy).getConfigs()}
    code = """
from panther.tuner import SKAutoTuner, OptunaSearch

# Create tuner with SQLite persistence
tuner = SKAutoTuner(
    model=model,
    configs=tuning_configs,
    accuracy_eval_func=accuracy_eval_func,
    accuracy_threshold=0.97,
    search_algorithm=OptunaSearch(
        n_trials=1000,
        study_name="my_tuning_study",
        storage="sqlite:///tuning_results.db",
        load_if_exists=True  # Resume if study exists
    ),
)

# Run tuning (can be interrupted and resumed)
tuner.tune()

# Access study for advanced analysis
study = tuner.search_algorithm.study
print(study.best_params)
print(study.best_value)

# Get trials as DataFrame
trials_df = tuner.search_algorithm.get_trials_dataframe()
"""
    exec(compile(code, "<spec example>", "exec"), namespace)
    tuner, study = namespace["tuner"], namespace["study"]
    assert tuner.allocates and study.study_name == "my_tuning_study::allocation@0.97"
    best = tuner.get_best_params()
    assert study.best_params == {n: f"low_rank={best[n]['low_rank']}" if n in best else "dense" for n in SENSITIVITY}
    assert len(namespace["trials_df"]) == len(tuner.results.plans) > 0
    stored = optuna.load_study(study_name="my_tuning_study::allocation@0.97",
                               storage="sqlite:///tuning_results.db")
    assert len(stored.trials) == len(tuner.results.plans)
