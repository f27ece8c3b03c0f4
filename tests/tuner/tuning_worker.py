"""One tuner worker, run as its own process (``python tuning_worker.py STORAGE OUT [options]``).

Every worker runs this same script on one storage, as workers on several machines would. The
model and objective are deterministic, so every process measures the same accuracy for the same
parameters: a fixed two-layer net, layer ``0`` sketched with SVD init (no randomness) at ranks
``RANKS``, accuracy ``1 - relative output error`` and the threshold ``THRESHOLD``, so the best
plan is the smallest rank reaching it. ``OUT`` receives JSON: the ranks this worker evaluated
itself, every result it ended with (``rank -> accuracy``), and its best plan.

``--hang-at K`` makes the worker write ``OUT.hang`` (the rank it is on) during its K-th trial and
then sleep: the test kills it there, in the middle of a trial. ``--host NAME`` makes the process
report ``NAME`` as its host name, so workers on one test machine act as if each had its own: the
others cannot check its pid, and only the heartbeat reveals its death. :func:`start` and
:func:`finish` are the tests' side.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RANKS = list(range(1, 13))
THRESHOLD = 0.9
STUDY = "shared"


def build_search(storage: str, heartbeat: bool):
    from optuna.samplers import GridSampler

    from panther.tuner import OptunaSearch

    # grace: a loaded 2-core CI machine can starve a live worker's heartbeat thread for seconds
    heartbeat_options = {"heartbeat_interval": 1, "grace_period": 5} if heartbeat else {}
    if storage.startswith("journal:"):
        storage = OptunaSearch.journal_storage(storage[len("journal:"):])  # type: ignore[assignment]
    return OptunaSearch(n_trials=len(RANKS), sampler=GridSampler({"low_rank": RANKS}, seed=0), study_name=STUDY,
                        storage=storage, load_if_exists=True, **heartbeat_options)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("storage", help="an RDB URL, or journal:PATH")
    parser.add_argument("out")
    parser.add_argument("--go", help="wait for this file before tuning (all workers start together)")
    parser.add_argument("--hang-at", type=int, default=0)
    parser.add_argument("--heartbeat", action="store_true")
    parser.add_argument("--pause", type=float, default=0.2, help="seconds per evaluation, so workers overlap")
    parser.add_argument("--host", help="host name to report (a stand-in for a machine of its own)")
    args = parser.parse_args()
    if args.host:
        socket.gethostname = lambda: args.host  # type: ignore[assignment]

    import torch
    from torch import nn

    from panther.tuner import Categorical, LayerConfig, SKAutoTuner, TuningConfigs

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 4))
    x = torch.randn(256, 24)
    with torch.no_grad():
        reference = model(x)
    evaluations = 0

    def accuracy(m: nn.Module) -> float:
        nonlocal evaluations
        sketched = hasattr(m[0], "low_rank")  # a trial, not the dense baseline
        evaluations += sketched
        if sketched and evaluations == args.hang_at:
            # atomically: the test reads the file as soon as it exists
            partial = Path(args.out + ".hang.partial")
            partial.write_text(json.dumps(m[0].low_rank))
            os.replace(partial, args.out + ".hang")
            time.sleep(600)
        time.sleep(args.pause)
        with torch.no_grad():
            return 1.0 - ((m(x) - reference).norm() / reference.norm()).item()

    configs = TuningConfigs([LayerConfig("0", {"low_rank": Categorical(RANKS)})])
    tuner = SKAutoTuner(model, configs, accuracy, search_algorithm=build_search(args.storage, args.heartbeat),
                        accuracy_threshold=THRESHOLD)
    Path(args.out + ".ready").touch()
    while args.go and not os.path.exists(args.go):
        time.sleep(0.05)
    tuner.tune()
    result = {
        "evaluated": [r.params["low_rank"] for r in tuner.results.records if r.phase == "search"],
        "results": {str(r.params["low_rank"]): r.accuracy for r in tuner.results.records},
        "best": tuner.best_plan(),
    }
    Path(args.out).write_text(json.dumps(result))


if __name__ == "__main__":
    main()


def start(storage: str, out: Path, *options: str) -> subprocess.Popen[bytes]:
    """Launch this script as a worker process (stdin closed, output kept for failure messages)."""
    return subprocess.Popen([sys.executable, __file__, storage, str(out), *options], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def wait_for(path: Path, workers: list[subprocess.Popen[bytes]], timeout: float = 120) -> None:
    """Wait until ``path`` exists; fail early with the output of a worker that died meanwhile."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        for worker in workers:
            if worker.poll() not in (None, 0):
                raise AssertionError(f"worker exited with {worker.returncode}:\n{worker.communicate()[0].decode()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def finish(worker: subprocess.Popen[bytes], out: Path, timeout: float = 180) -> dict[str, Any]:
    """Wait for a worker to exit cleanly and return what it wrote."""
    output, _ = worker.communicate(timeout=timeout)
    assert worker.returncode == 0, output.decode()
    return json.loads(out.read_text())
