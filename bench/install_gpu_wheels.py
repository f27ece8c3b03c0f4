"""Install, offline, what this machine's Python lacks of panther's run-time needs, from the carried wheels.

    python3 bench/install_gpu_wheels.py .gpu_wheels --target /tmp/site   # then PYTHONPATH=/tmp/site
    python3 bench/install_gpu_wheels.py .gpu_wheels --dry-run            # only say what would be installed

The folder is filled by ``bench/fetch_gpu_wheels.sh``. Only the missing distributions are installed,
with ``--no-deps`` (each one's needs are in the list too): a plain resolve would pull ``fsspec[http]``'s
aiohttp chain or ask to upgrade the image's packages, and must not touch its torch. They go to a
separate ``--target`` folder, so the machine's own environment is left as it was.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys

#: Import name -> distribution, in install order (needs first). Optuna's chain, then Lightning's.
NEEDED = {
    "typing_extensions": "typing-extensions", "packaging": "packaging", "yaml": "pyyaml", "tqdm": "tqdm",
    "markupsafe": "markupsafe", "mako": "mako", "sqlalchemy": "sqlalchemy", "alembic": "alembic",
    "colorlog": "colorlog", "optuna": "optuna", "fsspec": "fsspec", "lightning_utilities": "lightning-utilities",
    "torchmetrics": "torchmetrics", "pytorch_lightning": "pytorch-lightning", "lightning": "lightning",
}
if sys.version_info < (3, 11):  # alembic reads TOML with tomllib from 3.11 on, tomli before
    NEEDED = {"tomli": "tomli", **NEEDED}


def missing() -> list[str]:
    """Distributions of :data:`NEEDED` whose module this interpreter cannot find."""
    importlib.invalidate_caches()
    return [dist for module, dist in NEEDED.items() if importlib.util.find_spec(module) is None]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("wheels", help="folder of wheels (bench/fetch_gpu_wheels.sh)")
    parser.add_argument("--target", required=True, help="install here (put it on PYTHONPATH afterwards)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command, install nothing")
    args = parser.parse_args(argv)
    sys.path.insert(0, args.target)  # what an earlier call installed there counts as present
    todo = missing()
    print(f"python {sys.version.split()[0]}: missing {todo or 'nothing'}", flush=True)
    if not todo:
        return 0
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir",
           "--disable-pip-version-check", "--upgrade", "--target", args.target, "--find-links", args.wheels, *todo]
    print(" ".join(cmd), flush=True)
    if args.dry_run:
        return 0
    result = subprocess.run(cmd, check=False)
    still = missing()
    if result.returncode or still:
        print(f"install_gpu_wheels.py: pip exited {result.returncode}; still missing {still}. If no wheel matched "
              f"this Python, fetch for it: PYTHONS={sys.version_info.major}.{sys.version_info.minor} "
              "bash bench/fetch_gpu_wheels.sh", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
