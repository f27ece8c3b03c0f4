"""Trial records: DataFrame view, summary table, and results files that can never run code."""

import json
import math
import os
import pickle
import sys

import pytest

from panther.tuner.results import PlanRecord, TrialRecord, TuningResults, results_dataframe, summary_table


def sample_results() -> TuningResults:
    results = TuningResults(groups={"fc1": ["fc1"], "a+b": ["a", "b"]}, baseline_accuracy=0.97,
                            composed_accuracy=0.965, reused_trials={"fc1": 2})
    results.records = [
        TrialRecord("fc1", ["fc1"], 1, {"num_terms": 1, "low_rank": 4}, accuracy=0.90, accuracy_std=0.0,
                    score=-1e6 - 0.05, feasible=False, bytes=100, dense_bytes=1000),
        TrialRecord("fc1", ["fc1"], 2, {"num_terms": 1, "low_rank": 8}, accuracy=0.96, accuracy_std=0.01,
                    speed=123.0, speed_std=1.0, score=123.0, feasible=True, bytes=200, dense_bytes=1000),
        TrialRecord("a+b", ["a", "b"], 3, {"num_terms": 2, "low_rank": 4}, status="failed", error="ValueError: x",
                    dense_bytes=50),
    ]
    return results


def test_dataframe_has_one_row_per_layer_and_marks_the_best():
    df = results_dataframe(sample_results())
    assert list(df["layer_name"]) == ["fc1", "fc1", "a", "b"]
    for column in ("num_terms", "low_rank", "score", "accuracy", "speed", "feasible", "status", "best"):
        assert column in df.columns
    assert list(df["best"]) == [False, True, False, False]
    assert df["accuracy"].iloc[0] == 0.90  # the real accuracy of an infeasible trial, not -inf
    assert math.isnan(df["speed"].iloc[0])


def test_dataframe_without_pandas_raises_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        results_dataframe(sample_results())


def test_summary_lists_each_layer_with_its_outcome():
    text = summary_table(sample_results())
    lines = text.splitlines()
    fc1 = next(line for line in lines if line.startswith("fc1"))
    assert "low_rank=8" in fc1 and "0.9600" in fc1 and "200/1000 (20.0%)" in fc1 and "sketched" in fc1
    # layers a and b: their only trial failed, and the summary says with what
    assert sum("dense (every trial failed; last: ValueError: x)" in line for line in lines) == 2
    assert "duplicate proposals answered from earlier results: 2" in text


def test_save_and_load_round_trip(tmp_path):
    path = tmp_path / "results.pkl"
    results = sample_results()
    results.save(path)
    loaded = TuningResults.load(path)
    assert loaded == results
    assert loaded.best_record("fc1").trial == 2


def test_loading_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"format": "panther.tuner.results", "records": [Exploit()]}))
    with pytest.raises(ValueError, match="only plain data"):
        TuningResults.load(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [b"not a pickle", pickle.dumps([1, 2, 3]), pickle.dumps({"format": "other"}),
                                     pickle.dumps({"format": "panther.tuner.results", "version": 1})])
def test_loading_invalid_files_is_a_value_error(tmp_path, payload):
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    with pytest.raises(ValueError):
        TuningResults.load(path)


def test_a_format_1_file_says_why_it_cannot_be_read(tmp_path):
    path = tmp_path / "old.pkl"
    path.write_bytes(pickle.dumps({"format": "panther.tuner.results", "version": 1, "records": []}))
    with pytest.raises(ValueError, match="format 1.*counts bytes.*tune"):
        TuningResults.load(path)


def with_plans(results: TuningResults) -> TuningResults:
    results.plans = [
        PlanRecord(number=1, phase="bisect", choices={"fc1": {"num_terms": 1, "low_rank": 4}}, accuracy=0.97,
                   accuracy_std=0.0, feasible=True, bytes=100, dense_bytes=1000, predicted_error=0.01,
                   duration_s=0.5),
        PlanRecord(number=2, phase="sensitivity", role="fc#", choices={"fc1": {"num_terms": 1, "low_rank": 2}},
                   status="failed", error="RuntimeError: boom", dense_bytes=1000, bytes=50, reused=True),
    ]
    results.chosen_plan = 1
    return results


def test_plans_round_trip_through_the_file_and_json(tmp_path):
    results = with_plans(sample_results())
    path = tmp_path / "results.pkl"
    results.save(path)
    assert TuningResults.load(path) == results
    assert TuningResults.from_dict(json.loads(json.dumps(results.to_dict()))) == results
    assert results.to_dict()["version"] == 3 and results.to_dict()["plans"][1]["number"] == 2


def test_a_format_2_file_still_loads_its_plans_as_records(tmp_path):
    """Format 2 (before plan records) kept each plan as a dict numbered "plan", NaN for one that raised."""
    current = with_plans(sample_results()).to_dict()
    old_plans = [{"plan": 1, "phase": "bisect", "role": None, "choices": {"fc1": {"num_terms": 1, "low_rank": 4}},
                  "accuracy": 0.97, "speed": None, "feasible": True, "bytes": 100, "dense_bytes": 1000,
                  "predicted_error": 0.01, "duration_s": 0.5},
                 {"plan": 2, "phase": "sensitivity", "role": "fc#", "choices": {"fc1": {"num_terms": 1, "low_rank": 2}},
                  "accuracy": math.nan, "speed": None, "feasible": False, "bytes": 50, "dense_bytes": 1000,
                  "predicted_error": 0.0, "duration_s": 0.0, "reused": True}]
    path = tmp_path / "v2.pkl"
    path.write_bytes(pickle.dumps({**current, "version": 2, "plans": old_plans}))
    loaded = TuningResults.load(path)
    assert loaded.records == sample_results().records and loaded.chosen_plan == 1
    first, second = loaded.plans
    assert first == PlanRecord(number=1, phase="bisect", choices={"fc1": {"num_terms": 1, "low_rank": 4}},
                               accuracy=0.97, feasible=True, bytes=100, dense_bytes=1000, predicted_error=0.01,
                               duration_s=0.5)
    assert (second.number, second.status, second.role, second.reused, second.feasible) == (
        2, "failed", "fc#", True, False)
    assert math.isnan(second.accuracy)


@pytest.mark.parametrize("plan", [{"number": 1, "phase": "bisect"}, {"number": 1, "phase": "bisect", "choices": {},
                                                                     "unknown": 1},
                                  {"number": 1, "phase": "bisect", "choices": {}, "status": "odd"}])
def test_a_malformed_plan_is_refused(plan):
    data = {**sample_results().to_dict(), "plans": [plan]}
    with pytest.raises(ValueError, match="malformed"):
        TuningResults.from_dict(data)


def test_missing_file_and_unsaveable_values(tmp_path):
    with pytest.raises(FileNotFoundError):
        TuningResults.load(tmp_path / "missing.pkl")
    results = sample_results()
    results.records[0].params["activation"] = object()
    with pytest.raises(ValueError, match="plain data"):
        results.save(tmp_path / "x.pkl")


def test_best_record_prefers_score_then_fewer_weights():
    results = TuningResults(groups={"g": ["g"]})
    scores = [(0.5, 30), (0.7, 40), (0.7, 20)]
    results.records = [TrialRecord("g", ["g"], i, {"k": i}, score=s, feasible=True, bytes=w, dense_bytes=100)
                       for i, (s, w) in enumerate(scores)]
    assert results.best_record("g").trial == 2


def test_a_results_frame_has_the_record_columns_with_no_record():
    """The spec's example selects record columns; a run that evaluated nothing, or plans only, has them."""
    empty = results_dataframe(TuningResults(groups={"g": ["fc1"]}), ["low_rank"])
    assert empty.empty and {"layer_name", "low_rank", "accuracy", "speed", "score", "status"} <= set(empty.columns)
    plans = TuningResults(groups={"g": ["fc1"]}, plans=[
        PlanRecord(number=1, phase="bisect", choices={"g": {"low_rank": 4}}, accuracy=0.9, bytes=10, dense_bytes=20)])
    frame = results_dataframe(plans, ["low_rank"])
    assert list(frame["low_rank"]) == [4] and frame["score"].isna().all() and list(frame["plan"]) == [1]
