#!/usr/bin/env bash
# Fetch, on a machine with network, the wheels a lent GPU machine lacks into .gpu_wheels/ (git-ignored),
# which the device `run` call carries and bench/gpu_check.sh installs offline
# (pip install --no-index --find-links .gpu_wheels).
#   bash bench/fetch_gpu_wheels.sh              # Python 3.10-3.13, manylinux x86_64
#   PYTHONS="3.12" bash bench/fetch_gpu_wheels.sh  # fewer versions, smaller folder
# The GPU image (see the device notes) has CUDA torch, numpy, lightning, torchmetrics, pandas, tqdm,
# PyYAML and MarkupSafe, but no Optuna. So Optuna and its whole chain come first; lightning and its
# pure-Python chain come too, as a fallback in case an image lacks them (pip installs from the folder
# only what is missing). pandas is left out: panther imports it only for results.to_dataframe().
# Wheels are fetched one by one with --no-deps (never torch, whose CUDA wheels are gigabytes), for each
# Python version in PYTHONS where a package is compiled; pure-Python wheels are shared by all versions.
# Fallback if the GPU's Python is outside PYTHONS: rerun with PYTHONS set to it (gpu_check.sh prints it).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${DEST:-.gpu_wheels}"
PY="${PY:-$(command -v python3 || command -v python)}"
PYTHONS="${PYTHONS:-3.10 3.11 3.12 3.13}"
# Same versions as the development venv (pyproject's ranges), so what was tested here is what runs there.
PURE=(optuna==5.1.0 alembic==1.20.1 sqlalchemy==2.1.9 colorlog==6.12.0 mako==1.4.3 tqdm typing-extensions packaging tomli
      lightning==2.6.6 pytorch-lightning==2.6.6 lightning-utilities==0.15.3 torchmetrics==1.9.0 fsspec)
COMPILED=(pyyaml markupsafe)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
mkdir -p "$DEST"
pip_download() { "$PY" -m pip download -q --no-deps --only-binary=:all: --disable-pip-version-check -d "$DEST" "$@"; }
for spec in "${PURE[@]}"; do
  # A pure wheel if there is one (sqlalchemy publishes py3-none-any), else one per Python version.
  pip_download --python-version 3.12 --implementation py --abi none --platform any "$spec" 2>/dev/null || {
    for v in $PYTHONS; do pip_download --python-version "$v" --implementation cp "${PLATFORMS[@]}" "$spec"; done; }
done
for spec in "${COMPILED[@]}"; do
  for v in $PYTHONS; do pip_download --python-version "$v" --implementation cp "${PLATFORMS[@]}" "$spec"; done
done
ls "$DEST"
echo "fetch_gpu_wheels.sh: $(ls "$DEST" | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST"
