"""Three tuner processes on one real PostgreSQL database split the trials and agree on the result.

The server is started by the ``postgres`` fixture (a temp folder, Unix socket only) and the test
is skipped where PostgreSQL is not installed. Each worker is ``tuning_worker.py``, the same script
with the same seed, as on several machines.
"""

import optuna
from optuna.trial import TrialState
from tuning_worker import RANKS, STUDY, THRESHOLD, finish, start, wait_for


def expected_plan(results: dict) -> dict:
    """The smallest rank whose accuracy meets the threshold, as a plan (the tuner's objective)."""
    rank = min(int(r) for r, accuracy in results.items() if accuracy >= THRESHOLD)
    return {"0": {"type": "SKLinear", "params": {"low_rank": rank}}}


def test_three_workers_on_postgres_split_the_trials_and_agree(postgres, tmp_path):
    shared, alone = postgres.create_database(), postgres.create_database()
    go = tmp_path / "go"
    outs = [tmp_path / f"worker{i}.json" for i in range(3)]
    workers = [start(shared, out, "--go", str(go)) for out in outs]
    reference = start(alone, tmp_path / "alone.json")  # one process, same seed and budget
    for out in outs:
        wait_for(out.with_name(out.name + ".ready"), workers)
    go.touch()  # all three start tuning together

    results = [finish(worker, out) for worker, out in zip(workers, outs, strict=True)]
    single = finish(reference, tmp_path / "alone.json")

    evaluated = [r["evaluated"] for r in results]
    assert sorted(sum(evaluated, [])) == RANKS  # every rank evaluated once, by one worker
    assert all(evaluated), evaluated  # the trials were split: each worker did some
    assert sorted(single["evaluated"]) == RANKS
    for result in results:  # every worker ends with the whole study, as one process finds it
        assert result["results"] == single["results"]
        assert result["best"] == single["best"] == expected_plan(single["results"])

    study = optuna.load_study(study_name=f"{STUDY}::0", storage=shared)
    assert sorted(t.params["low_rank"] for t in study.trials) == RANKS
    assert {t.state for t in study.trials} == {TrialState.COMPLETE}
