"""Workers racing for the last slots of one PostgreSQL study create exactly ``n_trials`` trials.

Each thread is a worker with a search (and database connections) of its own, as a process on
another machine would be; all ask at once for a study with fewer slots than workers. The server
is the ``postgres`` fixture's; the test is skipped where PostgreSQL is not installed.
"""

import threading

import optuna
from optuna.trial import TrialState

from panther.tuner import Int, OptunaSearch

N_TRIALS, WORKERS = 3, 8


def test_workers_racing_for_the_last_slots_create_no_trial_beyond_the_budget(postgres):
    url = postgres.create_database()
    searches = [OptunaSearch(n_trials=N_TRIALS, study_name="race", storage=url, load_if_exists=True, seed=i)
                for i in range(WORKERS)]
    for search in searches:
        search.start_group("g", {"x": Int(0, 1000)})
    barrier = threading.Barrier(WORKERS)
    proposals: list = []

    def ask(search: OptunaSearch) -> None:
        barrier.wait(timeout=60)
        proposals.append(search.get_next_params())

    threads = [threading.Thread(target=ask, args=(search,)) for search in searches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert len(proposals) == WORKERS
    assert sum(p is not None for p in proposals) == N_TRIALS  # every slot handed out, once
    trials = optuna.load_study(study_name="race::g", storage=url).trials
    assert [t.state for t in trials] == [TrialState.RUNNING] * N_TRIALS  # and no surplus proposal failed
