#!/usr/bin/env bash
# Compile every panther CUDA source without a GPU, to catch build breaks in CI.
#   bash bench/compile_cuda.sh            # .cu files with nvcc -arch=sm_90 (+ binding syntax check)
#   ARCH=sm_80 bash bench/compile_cuda.sh
# The .cu files include only CUDA toolkit headers. The binding (.cpp) needs torch's C++ headers; a
# CPU-only torch wheel lacks c10/cuda/impl/cuda_cmake_macros.h, so a one-line stand-in is generated
# for the syntax check only (nothing is linked). Set SKIP_BINDING=1 to skip that check.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCH="${ARCH:-sm_90}"
SRC=panther/ops/csrc
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
[ -x "$NVCC" ] || { echo "compile_cuda.sh: nvcc not found" >&2; exit 2; }
"$NVCC" --version | tail -1
for cu in "$SRC"/*.cu; do
  echo "nvcc -std=c++17 -c -arch=$ARCH $cu"
  "$NVCC" -std=c++17 -c -arch="$ARCH" -O3 -Werror all-warnings "$cu" -o "$OUT/$(basename "$cu").o"
done
if [ "${SKIP_BINDING:-0}" != 1 ] && PY="$(command -v python3 || command -v python)" \
   && TORCH_INC="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null)"; then
  mkdir -p "$OUT/stub/c10/cuda/impl"
  printf '#pragma once\n' > "$OUT/stub/c10/cuda/impl/cuda_cmake_macros.h"
  PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  CUDA_INC="${CUDA_HOME:-/usr/local/cuda}/include"
  INCS=(-I"$SRC" -I"$PYINC" -I"$CUDA_INC" -idirafter "$OUT/stub")
  for d in $TORCH_INC; do INCS+=(-isystem "$d"); done
  for cpp in "$SRC"/*.cpp; do
    echo "syntax check $cpp"
    "${CXX:-g++}" -std=c++17 -fsyntax-only -DTORCH_EXTENSION_NAME=panther_check "${INCS[@]}" "$cpp"
  done
fi
echo "compile_cuda.sh: OK"
