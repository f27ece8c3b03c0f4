"""Wall time of one allocation with 1 and with 3 worker processes on one SQLite storage.

The accuracy function is padded with a sleep (``--eval-s``), standing for an expensive user
evaluation, so the workers' evaluations overlap even on a 2-core machine. Prints the wall time of
each run, the evaluations each worker made, and the ratio (1 worker / 3 workers).

    python bench/tune_workers.py [--eval-s 1.0] [--workers 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_WORKER = """
import json, sys, time
import torch
from torch import nn
from panther.tuner import LayerConfig, OptunaSearch, SKAutoTuner, TuningConfigs

storage, out, eval_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
torch.manual_seed(0)
dims = [64, 72, 80, 88, 96, 104, 64]  # distinct shapes: each layer its own role (one probe each)
model = nn.Sequential(*[nn.Linear(a, b) for a, b in zip(dims, dims[1:])])
for layer in model:  # a decaying spectrum, as trained layers have
    u, _, vh = torch.linalg.svd(torch.randn(layer.out_features, layer.in_features), full_matrices=False)
    layer.weight.data = u @ torch.diag(0.85 ** torch.arange(min(layer.weight.shape)).float()) @ vh
x = torch.randn(256, 64)
with torch.no_grad():
    reference = model(x)
calls = 0

def accuracy(m):
    global calls
    calls += 1
    time.sleep(eval_s)
    with torch.no_grad():
        return 1.0 - float((m(x) - reference).norm() / reference.norm())

configs = TuningConfigs([LayerConfig([str(i) for i in range(len(dims) - 1)],
                                     {"num_terms": [1], "low_rank": [4, 8, 12, 16, 24, 32, 48], "init": ["svd"]},
                                     separate=True)])
tuner = SKAutoTuner(model, configs, accuracy, accuracy_threshold=0.97,
                    search_algorithm=OptunaSearch(study_name="bench", storage=storage, load_if_exists=True))
tuner.tune()
json.dump({"calls": calls - 1, "best": tuner.get_best_params()}, open(out, "w"))
"""


def run(workers: int, eval_s: float, folder: Path) -> tuple[float, list[dict]]:
    """Wall time of ``workers`` processes tuning together on a fresh storage, and their outputs."""
    storage = f"sqlite:///{folder / f'w{workers}.db'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    outs = [folder / f"w{workers}-{i}.json" for i in range(workers)]
    started = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, storage, str(out), str(eval_s)], env=env)
             for out in outs]
    if [p.wait() for p in procs] != [0] * workers:
        raise SystemExit("a worker failed")
    return time.perf_counter() - started, [json.loads(out.read_text()) for out in outs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-s", type=float, default=1.0, help="seconds each accuracy evaluation sleeps")
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        one, (alone,) = run(1, args.eval_s, Path(tmp))
        many, outs = run(args.workers, args.eval_s, Path(tmp))
    same = all(o["best"] == alone["best"] for o in outs)
    print(f"1 worker: {one:.1f} s, {alone['calls']} evaluations")
    print(f"{args.workers} workers: {many:.1f} s, evaluations per worker {[o['calls'] for o in outs]}"
          f" (total {sum(o['calls'] for o in outs)}), same chosen plan: {same}")
    print(f"wall-time ratio 1/{args.workers} workers: {one / many:.2f}")


if __name__ == "__main__":
    main()
