"""The tuner uses nothing of a search but what ``SearchAlgorithm`` declares (one file holds the contract)."""

from __future__ import annotations

import inspect
from typing import Any

from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs
from panther.tuner.search.base import DuckTypedSearch, KnownResult, SearchAlgorithm

DECLARED = {name for name, _ in inspect.getmembers(SearchAlgorithm)} | {"accepts_param_specs", "direction"}


class RecordingOptunaSearch(OptunaSearch):
    """OptunaSearch that notes every attribute the tuner reads from outside the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "seen", set())
        super().__init__(*args, **kwargs)

    def __getattribute__(self, name: str) -> Any:
        caller = inspect.currentframe().f_back  # type: ignore[union-attr]
        module = caller.f_globals.get("__name__", "") if caller is not None else ""
        if module.startswith("panther.tuner") and not module.startswith("panther.tuner.search"):
            object.__getattribute__(self, "seen").add(name)
        return object.__getattribute__(self, name)


def test_tuning_runs_read_only_declared_hooks(digits_model, accuracy_fn):
    seen = set()
    for budget in (None, 6):  # the search phase alone, then budget probes the search hears of (add_known)
        search = RecordingOptunaSearch(n_trials=3, seed=0)
        configs = TuningConfigs([LayerConfig(["fc1", "fc2"], {"num_terms": [1], "low_rank": [2, 4, 8, 16, 32]})])
        SKAutoTuner(digits_model, configs, accuracy_fn, search_algorithm=search, accuracy_threshold=0.5,
                    max_total_trials=budget).tune()
        assert search.seen <= DECLARED, search.seen - DECLARED
        seen |= search.seen
    assert {"start_group", "get_next_params", "update", "is_finished", "known_result", "publish",
            "stored_results", "add_known", "planned_trials", "accepts_param_specs"} <= seen


def test_defaults_do_what_their_docs_say(scripted_search):
    search = scripted_search([{"a": 1}])
    search.start_group("g", {"a": [1]})
    assert search.spaces == [{"a": [1]}]  # start_group -> initialize
    search.add_known({"a": 1}, 0.5, {"accuracy": 0.9})
    assert search.told == [({"a": 1}, 0.5)]  # add_known -> update
    assert search.known_result({"a": 1}) is None and search.stored_results() == []
    assert search.publish({"accuracy": 1.0}) is None and search.planned_trials() is None


def test_optuna_search_keeps_and_returns_the_tuners_record(digits_model, accuracy_fn):
    search = OptunaSearch(n_trials=2, seed=0)
    SKAutoTuner(digits_model, TuningConfigs([LayerConfig("fc1", {"num_terms": [1], "low_rank": [4, 8]})]),
                accuracy_fn, search_algorithm=search).tune()
    stored = search.stored_results()
    assert {r.params["low_rank"] for r in stored} == {4, 8}
    for result in stored:
        assert isinstance(result, KnownResult) and result.record["status"] == "ok"
        assert result.score == result.record["accuracy"]  # no threshold: the score is the accuracy


def test_a_duck_typed_search_is_wrapped_with_the_spec_contract_only():
    class Duck:
        direction = "maximize"

        def __init__(self) -> None:
            self.calls: list = []

        def initialize(self, space):
            self.calls.append(("initialize", space))

        def get_next_params(self):
            return None

        def update(self, params, score): ...

        def is_finished(self):
            return True

        def get_resource(self):
            return 3

    duck = Duck()
    wrapped = DuckTypedSearch(duck)
    wrapped.start_group("g", {"a": [1]})
    assert duck.calls == [("initialize", {"a": [1]})]
    assert wrapped.resource_aware and wrapped.get_resource() == 3
    assert not wrapped.accepts_param_specs and wrapped.known_result({"a": 1}) is None
