"""Search algorithms: the interface (incl. the spec's custom example) and OptunaSearch's behaviour."""

import inspect
import itertools
import json
import logging
import math
import multiprocessing
import random
import sys
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import GridSampler, RandomSampler
from optuna.trial import TrialState

from panther.tuner import Categorical, Float, Int, OptunaSearch, SearchAlgorithm
from panther.tuner.search import param_space_for
from panther.tuner.search.faults import WORKER_ATTR, worker_token


def drive(search: SearchAlgorithm, group: str, specs: dict[str, Any], objective) -> list[dict[str, Any]]:
    """What the tuner does per layer group: start it, then propose/evaluate/report until done."""
    search.start_group(group, param_space_for(search, specs))
    tried = []
    while not search.is_finished():
        params = search.get_next_params()
        if params is None:
            break
        search.update(params, objective(params))
        tried.append(params)
    return tried


def peak(params: dict[str, Any]) -> float:
    """Toy objective with a unique maximum at a=2, b=16."""
    return -((params["a"] - 2) ** 2) - abs(params["b"] - 16) / 8


SPACE = {"a": Categorical([1, 2, 3]), "b": Int(0, 40, step=8)}


# -- the interface ---------------------------------------------------------------------------------
class MyCustomSearch(SearchAlgorithm):
    """Copied verbatim from the spec's "Custom Search Algorithm" example."""

    def __init__(self, n_trials=50):
        self.n_trials = n_trials
        self._param_space = {}
        self._trial_count = 0
        self._best_params = None
        self._best_score = float("-inf")

    def initialize(self, param_space: dict[str, Any]):
        self._param_space = param_space
        self._trial_count = 0
        self._best_params = None
        self._best_score = float("-inf")

    def get_next_params(self) -> dict[str, Any] | None:
        if self.is_finished():
            return None
        self._trial_count += 1
        # Custom sampling logic
        params = {}
        for name, choices in self._param_space.items():
            if isinstance(choices, list):
                params[name] = random.choice(choices)
        return params

    def update(self, params: dict[str, Any], score: float):
        if score > self._best_score:
            self._best_score = score
            self._best_params = params.copy()

    def get_best_params(self) -> dict[str, Any] | None:
        return self._best_params

    def get_best_score(self) -> float | None:
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
            pickle.dump(
                {
                    "trial_count": self._trial_count,
                    "best_params": self._best_params,
                    "best_score": self._best_score,
                },
                f,
            )

    def load_state(self, filepath: str):
        import pickle

        with open(filepath, "rb") as f:
            state = pickle.load(f)
        self._trial_count = state["trial_count"]
        self._best_params = state["best_params"]
        self._best_score = state["best_score"]


def test_abstract_methods_are_exactly_the_spec_ones():
    expected = {"initialize", "get_next_params", "update", "save_state", "load_state",
                "get_best_params", "get_best_score", "reset", "is_finished"}
    assert SearchAlgorithm.__abstractmethods__ == expected
    # the spec's optional get_resource has a default, and only an override makes a search resource-aware
    assert not MyCustomSearch().resource_aware and MyCustomSearch().get_resource() is None


def test_spec_custom_search_runs_through_the_default_group_path():
    random.seed(0)
    search = MyCustomSearch(n_trials=25)
    assert search.accepts_param_specs is False
    assert param_space_for(search, SPACE) == {"a": [1, 2, 3], "b": [0, 8, 16, 24, 32, 40]}
    tried = drive(search, "fc1", SPACE, peak)
    assert len(tried) == 25 and all(SPACE["a"].contains(p["a"]) and SPACE["b"].contains(p["b"]) for p in tried)
    best = max(tried, key=peak)
    assert search.get_best_score() == peak(best) and peak(search.get_best_params()) == peak(best)
    search.record("accuracy", 0.9)  # default is a no-op
    drive(search, "fc2", SPACE, peak)  # start_group re-initialises
    assert search._trial_count == 25


def test_param_space_for_rejects_continuous_for_list_algorithms():
    with pytest.raises(ValueError, match="continuous"):
        param_space_for(MyCustomSearch(), {"lr": Float(0.0, 1.0)})
    assert param_space_for(OptunaSearch(), {"lr": Float(0.0, 1.0)}) == {"lr": Float(0.0, 1.0)}


# -- OptunaSearch: core ask/tell ------------------------------------------------------------------
def test_tpe_finds_the_optimum_of_a_small_grid():
    search = OptunaSearch(n_trials=30, seed=0)
    tried = drive(search, "g", SPACE, peak)
    assert len(tried) == 30
    assert search.get_best_params() == {"a": 2, "b": 16}
    assert search.get_best_score() == peak({"a": 2, "b": 16})


def test_grid_sampler_stops_when_grid_is_exhausted():
    grid = {"a": [1, 2, 3], "b": [0, 16]}
    search = OptunaSearch(n_trials=100, sampler=GridSampler(grid))
    tried = drive(search, "g", SPACE, peak)
    combos = [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]
    assert sorted(map(repr, tried)) == sorted(map(repr, combos))
    assert search.is_finished() and search.get_next_params() is None
    assert search.get_best_params() == max(combos, key=peak)
    # n_trials below the grid size still bounds the run, and the next group gets a fresh grid
    search = OptunaSearch(n_trials=4, sampler=GridSampler(grid))
    assert len(drive(search, "g1", SPACE, peak)) == 4
    assert len(drive(search, "g2", SPACE, peak)) == 4


def test_specs_become_the_matching_optuna_distributions():
    search = OptunaSearch(n_trials=1, seed=1)
    space = {"c": Categorical(["x", "y"]), "i": Int(8, 64, step=8), "f": Float(1e-4, 1e-1, log=True), "l": [3, 4]}
    drive(search, "g", space, lambda p: 0.0)
    assert search.study.trials[0].distributions == {
        "c": CategoricalDistribution(["x", "y"]),
        "i": IntDistribution(8, 64, step=8),
        "f": FloatDistribution(1e-4, 1e-1, log=True),
        "l": CategoricalDistribution([3, 4]),
    }


def test_non_native_categorical_choices_are_decoded():
    choices = [(1, 2), (3, 4)]
    search = OptunaSearch(n_trials=6, seed=0)
    tried = drive(search, "g", {"shape": Categorical(choices)}, lambda p: float(p["shape"][0]))
    assert all(p["shape"] in choices for p in tried)
    assert search.get_best_params() == {"shape": (3, 4)}


def test_nan_or_none_fails_the_trial_and_penalties_are_values():
    search = OptunaSearch(n_trials=3, seed=0)
    search.start_group("g", SPACE)
    for score in (math.nan, None, -1e9):
        search.update(search.get_next_params(), score)
    states = [t.state for t in search.study.trials]
    assert states == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert search.get_best_score() == -1e9 and search.is_finished()


def test_minimize_direction():
    search = OptunaSearch(n_trials=12, direction="minimize", seed=0)
    tried = drive(search, "g", SPACE, lambda p: -peak(p))
    assert search.get_best_score() == min(-peak(p) for p in tried)


def test_user_attrs_pruning_and_external_results():
    search = OptunaSearch(n_trials=5, seed=0, pruner=optuna.pruners.ThresholdPruner(lower=0.5))
    search.start_group("g", SPACE)
    params = search.get_next_params()
    search.record("accuracy", 0.75)
    search.report_intermediate(0.1, step=0)
    assert search.should_prune()
    search.prune()
    params = search.get_next_params()
    search.report_intermediate(0.9, step=0)
    assert not search.should_prune()
    search.update(params, 1.0)
    search.update({"a": 2, "b": 16}, 5.0)  # no pending trial: recorded as a known result
    trials = search.study.trials
    assert [t.state for t in trials] == [TrialState.PRUNED, TrialState.COMPLETE, TrialState.COMPLETE]
    assert trials[0].user_attrs == {"accuracy": 0.75}
    assert search.get_best_params() == {"a": 2, "b": 16}
    with pytest.warns(UserWarning, match="no pending trial"):
        search.record("speed", 1.0)
    with pytest.raises(RuntimeError, match="no pending trial"):
        search.set_user_attr("speed", 1.0)
    with pytest.raises(ValueError, match="inside the space"):
        search.update({"a": 7, "b": 16}, 1.0)


def test_update_must_match_the_pending_proposal():
    search = OptunaSearch(n_trials=3, seed=0)
    search.start_group("g", SPACE)
    params = search.get_next_params()
    with pytest.raises(ValueError, match="pending trial proposed"):
        search.update({**params, "a": params["a"] % 3 + 1}, 1.0)


def test_reset_fails_pending_trial_and_keeps_records():
    search = OptunaSearch(n_trials=3, seed=0)
    search.start_group("g", SPACE)
    search.get_next_params()
    search.reset()
    assert search.studies["g"].trials[0].state == TrialState.FAIL
    assert search.study is search.studies["g"] and search.get_best_params() is None
    with pytest.raises(RuntimeError, match="start_group"):
        search.get_next_params()


def test_dataframes():
    search = OptunaSearch(n_trials=3, seed=0)
    drive(search, "g1", SPACE, peak)
    drive(search, "g2", SPACE, peak)
    assert len(search.get_trials_dataframe()) == 3
    frame = search.get_trials_dataframe(all_groups=True)
    assert frame["group"].tolist() == ["g1"] * 3 + ["g2"] * 3


def test_dataframe_without_pandas_names_the_install(monkeypatch):
    search = OptunaSearch(n_trials=1, seed=0)
    drive(search, "g", SPACE, peak)
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        search.get_trials_dataframe()


@pytest.mark.parametrize(
    "kwargs, error",
    [({"direction": "max"}, ValueError), ({"n_trials": 0}, ValueError), ({"n_trials": True}, ValueError),
     ({"storage": 5}, TypeError), ({"sampler": "tpe"}, TypeError), ({"study_name": ""}, ValueError),
     ({"pruner": "median"}, TypeError)],
)
def test_constructor_validation(kwargs, error):
    with pytest.raises(error):
        OptunaSearch(**kwargs)


def test_seed_with_sampler_warns():
    with pytest.warns(UserWarning, match="seed is ignored"):
        OptunaSearch(sampler=RandomSampler(), seed=3)


def test_group_validation():
    search = OptunaSearch()
    with pytest.raises(RuntimeError, match="start_group"):
        search.get_next_params()
    assert search.is_finished() is False and search.get_best_params() is None
    with pytest.raises(ValueError, match="non-empty"):
        search.start_group("g", {})
    with pytest.raises(TypeError, match="list of choices"):
        search.start_group("g", {"a": 3})
    with pytest.raises(ValueError, match="group_name"):
        search.start_group("", SPACE)


# -- OptunaSearch: storage, groups, resume --------------------------------------------------------
def test_each_group_gets_its_own_persistent_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    search = OptunaSearch(n_trials=4, storage=url, study_name="exp", seed=0)
    drive(search, "fc1", SPACE, peak)
    drive(search, "fc2", SPACE, peak)
    search.initialize(SPACE)  # the plain path gets automatic, distinct group names
    assert set(search.studies) == {"fc1", "fc2", "group0"}
    assert sorted(optuna.get_all_study_names(url)) == ["exp::fc1", "exp::fc2", "exp::group0"]
    assert [len(search.studies[g].trials) for g in ("fc1", "fc2")] == [4, 4]
    assert search.study is search.studies["group0"]
    again = OptunaSearch(n_trials=4, storage=url, study_name="exp")
    with pytest.raises(optuna.exceptions.DuplicatedStudyError, match="load_if_exists=True"):
        again.start_group("fc1", SPACE)


def test_load_if_exists_resumes_up_to_n_trials_in_total(tmp_path):
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    first = OptunaSearch(n_trials=3, storage=url, study_name="res", seed=0)
    assert len(drive(first, "g", SPACE, peak)) == 3
    # an interrupted run leaves its in-flight trial RUNNING; a resumed run counts it
    first.start_group("h", SPACE)
    first.get_next_params()
    resumed = OptunaSearch(n_trials=5, storage=url, study_name="res", load_if_exists=True, seed=1)
    assert len(drive(resumed, "g", SPACE, peak)) == 2
    assert len(drive(resumed, "h", SPACE, peak)) == 4
    assert len(optuna.load_study(study_name="res::g", storage=url).trials) == 5
    finished = OptunaSearch(n_trials=5, storage=url, study_name="res", load_if_exists=True)
    assert drive(finished, "g", SPACE, peak) == []
    assert finished.get_best_score() == max(t.value for t in finished.study.trials)


def test_save_and_load_state_resume_without_pickle(tmp_path):
    path = tmp_path / "state.json"
    search = OptunaSearch(n_trials=3, seed=0)
    drive(search, "g", SPACE, peak)
    search.save_state(str(path))
    saved = json.loads(path.read_text())
    assert len(saved["groups"]["g"]["trials"]) == 3
    best = search.get_best_params()
    restored = OptunaSearch(n_trials=5, seed=1)
    restored.load_state(str(path))
    assert restored.get_best_params() == best and restored.get_best_score() == search.get_best_score()
    assert len(drive(restored, "g", SPACE, peak)) == 2
    assert len(restored.study.trials) == 5
    with pytest.raises(ValueError, match="maximize"):
        OptunaSearch(direction="minimize").load_state(str(path))
    path.write_text("{}")
    with pytest.raises(ValueError, match="not an OptunaSearch state"):
        OptunaSearch().load_state(str(path))


def _worker(path: str, n_trials: int, barrier: Any, results: Any) -> None:
    search = OptunaSearch(
        n_trials=n_trials,
        storage=OptunaSearch.journal_storage(path),
        study_name="shared",
        load_if_exists=True,
        sampler=RandomSampler(),
    )
    search.start_group("g", {"x": Int(0, 1000)})
    barrier.wait(timeout=60)
    numbers = []
    while (params := search.get_next_params()) is not None:
        numbers.append(search.pending_trial.number)
        search.update(params, float(params["x"]))
    results.put(numbers)


def test_two_processes_share_one_journal_storage_without_duplicates(tmp_path):
    path = str(tmp_path / "journal.log")
    n_trials = 16
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(path, n_trials, barrier, results)) for _ in range(2)]
    for worker in workers:
        worker.start()
    per_worker = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    evaluated = [n for numbers in per_worker for n in numbers]
    assert sorted(evaluated) == list(range(n_trials))
    study = optuna.load_study(study_name="shared::g", storage=OptunaSearch.journal_storage(path))
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.number for t in complete) == list(range(n_trials))
    surplus = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("panther_surplus") for t in surplus)


# -- logging ----------------------------------------------------------------------------------------
class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def optuna_records():
    previous = optuna.logging.get_verbosity()
    handler = _Records()
    logging.getLogger("optuna").addHandler(handler)
    yield handler
    logging.getLogger("optuna").removeHandler(handler)
    optuna.logging.set_verbosity(previous)


def test_optuna_info_logs_silenced_at_default_verbosity(optuna_records):
    optuna.logging.set_verbosity(optuna.logging.INFO)
    drive(OptunaSearch(n_trials=2, seed=0), "g", SPACE, peak)
    assert optuna_records.messages == []
    assert optuna.logging.get_verbosity() == optuna.logging.INFO


def test_user_chosen_optuna_verbosity_is_respected(optuna_records):
    optuna.logging.set_verbosity(optuna.logging.DEBUG)
    drive(OptunaSearch(n_trials=1, seed=0), "g", SPACE, peak)
    assert any("created" in message for message in optuna_records.messages)


def test_signature_matches_spec():
    params = list(inspect.signature(OptunaSearch).parameters.items())[:7]
    assert [(name, p.default) for name, p in params] == [
        ("n_trials", 100), ("sampler", None), ("direction", "maximize"), ("study_name", None),
        ("storage", None), ("load_if_exists", False), ("seed", None),
    ]


def test_a_spent_budget_creates_no_trial(monkeypatch):
    # is_finished() bypassed: the budget is counted again when the trial is asked for
    search = OptunaSearch(n_trials=2, seed=0)
    drive(search, "g", SPACE, peak)
    monkeypatch.setattr(search, "is_finished", lambda: False)
    assert search.get_next_params() is None and search.pending_trial is None
    assert [t.state for t in search.study.trials] == [TrialState.COMPLETE] * 2


def test_a_proposal_beyond_the_budget_is_failed_not_handed_out(monkeypatch):
    # Simulates losing the race for the last slot where no lock orders the workers: the budget
    # count passed, but another worker created its trial before this one's.
    search = OptunaSearch(n_trials=1, seed=0)
    search.start_group("g", SPACE)
    study, ask = search.study, search.study.ask

    def another_worker_first(*args, **kwargs):
        monkeypatch.setattr(study, "ask", ask)
        ask(*args, **kwargs).set_user_attr(WORKER_ATTR, worker_token("other"))  # running, not waited for here
        return ask(*args, **kwargs)

    monkeypatch.setattr(study, "ask", another_worker_first)
    assert search.get_next_params() is None and search.pending_trial is None
    extra = study.trials[-1]
    assert extra.number == 1 and extra.state == TrialState.FAIL and extra.user_attrs["panther_surplus"]
