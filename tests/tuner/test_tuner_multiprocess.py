"""Two processes tune one model through a shared Optuna journal file, splitting the trials."""

import json
import multiprocessing
import time

import torch
from torch import nn

RANKS = [1, 2, 3, 4, 5, 6, 7, 8]


def _worker(storage_path: str, out_path: str, barrier) -> None:
    """Runs in a spawned process: tune a tiny deterministic model, write what it evaluated."""
    from optuna.samplers import GridSampler

    from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(64, 16)
    target = model(x).argmax(dim=1)

    def accuracy(m: nn.Module) -> float:
        time.sleep(0.1)  # a validation pass long enough for the workers to overlap
        with torch.no_grad():
            return (m(x).argmax(dim=1) == target).float().mean().item()

    search = OptunaSearch(n_trials=len(RANKS), sampler=GridSampler({"low_rank": RANKS}), study_name="shared",
                          storage=OptunaSearch.journal_storage(storage_path), load_if_exists=True)
    tuner = SKAutoTuner(model, TuningConfigs([LayerConfig("0", {"low_rank": RANKS})]), accuracy,
                        search_algorithm=search)
    barrier.wait()
    tuner.tune()
    evaluated = [r.params["low_rank"] for r in tuner.results.records if r.phase == "search"]
    with open(out_path, "w") as handle:
        json.dump({"evaluated": evaluated, "best": tuner.get_best_params()}, handle)


def test_two_workers_split_the_trials_without_duplicates(tmp_path):
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    outputs = [tmp_path / f"worker{i}.json" for i in range(2)]
    workers = [context.Process(target=_worker, args=(str(tmp_path / "study.log"), str(out), barrier))
               for out in outputs]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    results = [json.loads(out.read_text()) for out in outputs]
    evaluated = [r["evaluated"] for r in results]
    assert sorted(evaluated[0] + evaluated[1]) == RANKS  # every grid point once, none twice
    assert evaluated[0] and evaluated[1]  # both did part of the work
