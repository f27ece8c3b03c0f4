"""The examples of docs/spec ``autotuner_api.rst``, run as written against small, fast set-ups.

Each test puts what the example assumes (``model``, ``accuracy_eval_func``, ``tuning_configs``,
``val_loader``) in its namespace and executes the example's code verbatim. Only trial counts
above what a unit test can afford are capped, by patching ``OptunaSearch``'s default.
"""

import textwrap

import pytest
import torch

from panther.nn import SKLinear
from panther.tuner import Categorical, Int, LayerConfig, OptunaSearch, TuningConfigs
from panther.tuner.search import optuna_search


def run(code, namespace):
    exec(compile(textwrap.dedent(code), "<spec example>", "exec"), namespace)
    return namespace


@pytest.fixture
def namespace(digits_model, accuracy_fn):
    configs = TuningConfigs([LayerConfig(["fc1", "fc2"], {"num_terms": Categorical([1, 2, 3]),
                                                          "low_rank": Int(8, 64, step=8)})])
    return {"model": digits_model, "accuracy_eval_func": accuracy_fn, "tuning_configs": configs}


@pytest.fixture
def capped_trials(monkeypatch):
    """Cap OptunaSearch at ``n`` trials per group (examples asking for 200-1000 trials)."""
    def cap(n):
        original = optuna_search.OptunaSearch.__init__

        def init(self, n_trials=100, *args, **kwargs):
            original(self, min(n_trials, n), *args, **kwargs)

        monkeypatch.setattr(optuna_search.OptunaSearch, "__init__", init)
    return cap


def test_public_exports():
    run("""
    from panther.tuner import (
        # Core tuner
        SKAutoTuner,
        # Configuration
        LayerConfig,
        TuningConfigs,
        # Parameter specification types
        Categorical,
        Int,
        Float,
        # Search algorithms
        SearchAlgorithm,
        OptunaSearch,
        # Visualization (optional)
        ModelVisualizer,
    )
    from panther.tuner.SkAutoTuner.Configs import LayerNameResolver, ParamsResolver
    """, {})


BASIC_MODEL = """
import torch
import torch.nn as nn
from panther.tuner import (
    SKAutoTuner, LayerConfig, TuningConfigs,
    Categorical, Int, OptunaSearch
)

# Define model
class SimpleModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 512)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(512, 256)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(256, 10)

    def forward(self, x):
        x = x.view(-1, 784)
        x = self.relu1(self.fc1(x))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)

model = SimpleModel()
"""

BASIC_REST = """
# Define evaluation functions
def accuracy_eval_func(model):
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for data, target in val_loader:
            output = model(data)
            _, predicted = torch.max(output, 1)
            total += target.size(0)
            correct += (predicted == target).sum().item()
    return correct / total

def speed_eval_func(model):
    # Measure throughput (higher is better)
    import time
    model.eval()
    x = torch.randn(128, 784)
    start = time.time()
    for _ in range(100):
        with torch.no_grad():
            model(x)
    elapsed = time.time() - start
    return 100 * 128 / elapsed  # samples per second

# Configure layers to tune
config = LayerConfig(
    layer_names=["fc1", "fc2"],
    params={
        "num_terms": Categorical([1, 2, 3]),
        "low_rank": Int(16, 128, step=16)
    },
    separate=True,
    copy_weights=True
)

tuning_configs = TuningConfigs([config])

# Create tuner with constraint-based optimization
tuner = SKAutoTuner(
    model=model,
    configs=tuning_configs,
    accuracy_eval_func=accuracy_eval_func,
    accuracy_threshold=0.90,              # Must maintain 90% accuracy
    optmization_eval_func=speed_eval_func,  # Maximize speed
    search_algorithm=OptunaSearch(n_trials=50, seed=42),
    verbose=True
)

# Run tuning
tuner.tune()

# Apply best parameters
optimized_model = tuner.apply_best_params()

# Analyze results
results_df = tuner.get_results_dataframe()
print(results_df[["layer_name", "num_terms", "low_rank", "accuracy", "speed", "score"]])
"""

VISUALIZE = """
# Visualize with Optuna (see External Tools section)
import optuna
study = tuner.search_algorithm.study
optuna.visualization.plot_optimization_history(study).show()
"""


def test_basic_tuning_with_accuracy_threshold(capsys, capped_trials):
    """As written, the example allocates (a plain OptunaSearch names no algorithm); the model is
    untrained, so (as on a real first run) even the dense model misses 90%: nothing is evaluated or
    installed, the user is warned, and the example's own DataFrame code still runs."""
    namespace = run(BASIC_MODEL, {})
    namespace["val_loader"] = [(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))) for _ in range(2)]
    with pytest.warns(UserWarning, match="already below accuracy_threshold"):
        run(BASIC_REST, namespace)
    assert namespace["tuner"].allocates
    df = namespace["results_df"]
    assert df.empty and {"layer_name", "num_terms", "low_rank", "accuracy", "speed", "score"} <= set(df.columns)
    assert not isinstance(namespace["optimized_model"].fc1, SKLinear)
    assert "dense (no trial met the threshold)" in capsys.readouterr().out


def test_basic_tuning_with_accuracy_threshold_searching(capsys, capped_trials):
    capped_trials(12)
    # With strategy="search": every trial is recorded with its real accuracy, no speed is
    # measured, nothing is installed.
    namespace = run(BASIC_MODEL, {})
    namespace["val_loader"] = [(torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))) for _ in range(2)]
    with pytest.warns(UserWarning):
        run(BASIC_REST.replace("verbose=True\n", "verbose=True, strategy='search'\n"), namespace)
    assert not namespace["tuner"].allocates
    df = namespace["results_df"]
    assert set(df["layer_name"]) == {"fc1", "fc2"} and df["accuracy"].between(0, 1).all()
    assert df["speed"].isna().all()
    assert not isinstance(namespace["optimized_model"].fc1, SKLinear)
    assert "[fc1] trial" in capsys.readouterr().out


def test_visualization_on_the_study(namespace):
    pytest.importorskip("plotly")  # Optuna's plots need plotly
    run("""
    from panther.tuner import SKAutoTuner, OptunaSearch
    tuner = SKAutoTuner(model=model, configs=tuning_configs, accuracy_eval_func=accuracy_eval_func,
                        search_algorithm=OptunaSearch(n_trials=2, seed=0))
    tuner.tune()
    """, namespace)
    run(VISUALIZE.replace(".show()", ""), namespace)  # .show() would open a browser


def test_using_automatic_parameters(namespace):
    run("""
    from panther.tuner import SKAutoTuner, LayerConfig, TuningConfigs

    # Auto-generate parameter spaces based on layer dimensions
    config = LayerConfig(
        layer_names={"type": "Linear"},  # All Linear layers
        params="auto",                    # Automatic parameter generation
        separate=True
    )

    tuner = SKAutoTuner(
        model=model,
        configs=TuningConfigs([config]),
        accuracy_eval_func=accuracy_eval_func,
        verbose=True
    )

    tuner.tune()
    """, namespace)
    assert set(namespace["tuner"].get_best_params()) == {"fc1", "fc2", "fc3"}


CUSTOM_SEARCH = '''
from panther.tuner import SearchAlgorithm
from typing import Any, Dict, Optional
import random

class MyCustomSearch(SearchAlgorithm):
    def __init__(self, n_trials=50):
        self.n_trials = n_trials
        self._param_space = {}
        self._trial_count = 0
        self._best_params = None
        self._best_score = float("-inf")

    def initialize(self, param_space: Dict[str, Any]):
        self._param_space = param_space
        self._trial_count = 0
        self._best_params = None
        self._best_score = float("-inf")

    def get_next_params(self) -> Optional[Dict[str, Any]]:
        if self.is_finished():
            return None
        self._trial_count += 1
        # Custom sampling logic
        params = {}
        for name, choices in self._param_space.items():
            if isinstance(choices, list):
                params[name] = random.choice(choices)
        return params

    def update(self, params: Dict[str, Any], score: float):
        if score > self._best_score:
            self._best_score = score
            self._best_params = params.copy()

    def get_best_params(self) -> Optional[Dict[str, Any]]:
        return self._best_params

    def get_best_score(self) -> Optional[float]:
        return self._best_score

    def is_finished(self) -> bool:
        return self._trial_count >= self.n_trials

    def reset(self):
        self._trial_count = 0
        self._best_params = None
        self._best_score = float("-inf")

    def save_state(self, filepath: str):
        import pickle
        with open(filepath, "wb") as f:
            pickle.dump({
                "trial_count": self._trial_count,
                "best_params": self._best_params,
                "best_score": self._best_score,
            }, f)

    def load_state(self, filepath: str):
        import pickle
        with open(filepath, "rb") as f:
            state = pickle.load(f)
        self._trial_count = state["trial_count"]
        self._best_params = state["best_params"]
        self._best_score = state["best_score"]

# Use custom search
tuner = SKAutoTuner(
    model=model,
    configs=tuning_configs,
    accuracy_eval_func=accuracy_eval_func,
    search_algorithm=MyCustomSearch(n_trials=100),
)
'''


def test_custom_search_algorithm(namespace):
    namespace["SKAutoTuner"] = __import__("panther.tuner", fromlist=["SKAutoTuner"]).SKAutoTuner
    run(CUSTOM_SEARCH, namespace)
    tuner = namespace["tuner"]
    best = tuner.tune()
    assert set(best) == {"fc1", "fc2"}
    # random choices on the finite lists it was given: each combination is evaluated at most once
    # (duplicates answered from earlier results), and a layer whose 3 x 8 combinations are all
    # known is not asked again before its budget of 100 runs out
    combos = {layer: {(r.params["num_terms"], r.params["low_rank"]) for r in tuner.results.records
                      if r.group == layer} for layer in ("fc1", "fc2")}
    assert len(tuner.results.records) == sum(len(c) for c in combos.values())
    last = combos["fc2"]  # the search's counter is that of the last group
    assert (len(last) == 3 * 8 and tuner.search_algorithm._trial_count < 100) or \
        tuner.search_algorithm._trial_count == 100


@pytest.mark.parametrize("example", ["tpe", "random", "grid", "cmaes"])
def test_search_sampler_examples(namespace, capped_trials, example):
    capped_trials(12)
    if example == "cmaes":
        pytest.importorskip("cmaes")  # Optuna's CmaEsSampler needs the optional `cmaes` package
    code = {
        "tpe": """
        from panther.tuner import SKAutoTuner, OptunaSearch

        tuner = SKAutoTuner(
            model=model,
            configs=tuning_configs,
            accuracy_eval_func=accuracy_eval_func,
            search_algorithm=OptunaSearch(n_trials=100, seed=42),
        )
        """,
        "random": """
        from panther.tuner import SKAutoTuner, OptunaSearch
        from optuna.samplers import RandomSampler

        tuner = SKAutoTuner(
            model=model,
            configs=tuning_configs,
            accuracy_eval_func=accuracy_eval_func,
            search_algorithm=OptunaSearch(
                n_trials=50,
                sampler=RandomSampler(seed=42)
            ),
        )
        """,
        "grid": """
        from panther.tuner import SKAutoTuner, OptunaSearch
        from optuna.samplers import GridSampler

        # Define the full search space for GridSampler
        search_space = {
            "num_terms": [1, 2, 3],
            "low_rank": [8, 16, 32, 64],
        }

        tuner = SKAutoTuner(
            model=model,
            configs=tuning_configs,
            accuracy_eval_func=accuracy_eval_func,
            search_algorithm=OptunaSearch(
                sampler=GridSampler(search_space)
            ),
        )
        """,
        "cmaes": """
        from panther.tuner import SKAutoTuner, OptunaSearch
        from optuna.samplers import CmaEsSampler

        tuner = SKAutoTuner(
            model=model,
            configs=tuning_configs,
            accuracy_eval_func=accuracy_eval_func,
            search_algorithm=OptunaSearch(
                n_trials=200,
                sampler=CmaEsSampler(seed=42)
            ),
        )
        """,
    }[example]
    tuner = run(code, namespace)["tuner"]
    best = tuner.tune()
    assert set(best) == {"fc1", "fc2"}
    for layer_params in best.values():
        assert layer_params["num_terms"] in (1, 2, 3) and layer_params["low_rank"] % 8 == 0
    if example == "grid":
        assert {(r.params["num_terms"], r.params["low_rank"]) for r in tuner.results.records} \
            <= {(t, k) for t in (1, 2, 3) for k in (8, 16, 32, 64)}


def test_study_persistence(namespace, capped_trials, tmp_path, monkeypatch):
    capped_trials(4)
    monkeypatch.chdir(tmp_path)
    namespace["tuning_configs"] = TuningConfigs([LayerConfig("fc2", {"low_rank": [4, 8, 16, 32]})])
    code = """
    from panther.tuner import SKAutoTuner, OptunaSearch

    # Create tuner with SQLite persistence
    tuner = SKAutoTuner(
        model=model,
        configs=tuning_configs,
        accuracy_eval_func=accuracy_eval_func,
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
    first = run(code, dict(namespace))
    assert (tmp_path / "tuning_results.db").exists() and len(first["trials_df"]) == 4
    again = run(code, dict(namespace))  # resumes: the study is complete, nothing is evaluated again
    assert len(again["trials_df"]) == 4
    assert all(r.phase == "storage" for r in again["tuner"].results.records)
    assert again["tuner"].get_best_params() == first["tuner"].get_best_params()


def test_joint_vs_separate(namespace, capped_trials):
    capped_trials(3)
    run("""
    from panther.tuner import LayerConfig, TuningConfigs, Categorical

    # Separate tuning: each layer gets its own optimal parameters
    separate_config = LayerConfig(
        layer_names=["fc1", "fc2", "fc3"],
        params={"num_terms": Categorical([1, 2, 3])},
        separate=True  # Each layer tuned independently
    )

    # Joint tuning: all layers share the same parameters
    joint_config = LayerConfig(
        layer_names=["fc1", "fc2", "fc3"],
        params={"num_terms": Categorical([1, 2, 3])},
        separate=False  # All layers use same parameter values
    )
    """, namespace)
    from panther.tuner import SKAutoTuner

    separate = SKAutoTuner(namespace["model"], TuningConfigs([namespace["separate_config"]]),
                           namespace["accuracy_eval_func"], search_algorithm=OptunaSearch(n_trials=3, seed=0))
    joint = SKAutoTuner(namespace["model"], TuningConfigs([namespace["joint_config"]]),
                        namespace["accuracy_eval_func"], search_algorithm=OptunaSearch(n_trials=3, seed=0))
    assert set(separate.tune()) == {"fc1", "fc2", "fc3"}
    assert set(separate.search_algorithm.studies) == {"fc1", "fc2", "fc3"}
    joint_best = joint.tune()
    assert set(joint.search_algorithm.studies) == {"fc1+fc2+fc3"}
    assert len({tuple(p.items()) for p in joint_best.values()}) == 1


def test_results_dataframe_columns_and_persistence_methods(namespace, tmp_path):
    from panther.tuner import SKAutoTuner

    tuner = SKAutoTuner(namespace["model"], namespace["tuning_configs"], namespace["accuracy_eval_func"],
                        search_algorithm=OptunaSearch(n_trials=2, seed=0))
    tuner.tune()
    results_df = tuner.get_results_dataframe()
    print(results_df[["layer_name", "num_terms", "low_rank", "accuracy", "speed", "score"]])
    tuner.save_tuning_results(str(tmp_path / "results.pkl"))
    tuner.load_tuning_results(str(tmp_path / "results.pkl"))
    assert tuner.get_results_dataframe().equals(results_df)
    with pytest.raises(FileNotFoundError):
        tuner.load_tuning_results(str(tmp_path / "nope.pkl"))
