#!/usr/bin/env bash
# One entry point for newcomers and CI: sets up .venv on first use, then runs a job.
#   bash run.sh tune    # the main job: train a digits MLP, auto-tune its sketched layers, print the result
#   bash run.sh test    # the test-suite
#   bash run.sh python ARGS...   # any Python command inside the environment
# PANTHER_TORCH overrides the torch requirement (default: the CPU build torch==2.13.0).
set -euo pipefail
cd "$(dirname "$0")"

VENV=${PANTHER_VENV:-.venv}
STAMP="$VENV/.panther-installed"

setup() {
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
            "$VENV/bin/python" -m pip install --quiet "${PANTHER_TORCH:-torch==2.13.0}"
        fi
        "$VENV/bin/python" -m pip install --quiet -e ".[test]"
        touch "$STAMP"
    fi
}

job=${1:-}
[ $# -gt 0 ] && shift
case "$job" in
    tune) setup; exec "$VENV/bin/python" examples/tune_digits.py "$@" ;;
    test) setup; exec "$VENV/bin/python" -m pytest -q "$@" ;;
    python) setup; exec "$VENV/bin/python" "$@" ;;
    *) echo "usage: bash run.sh {tune|test|python ARGS...}" >&2; exit 2 ;;
esac
