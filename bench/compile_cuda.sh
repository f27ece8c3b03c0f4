#!/usr/bin/env bash
# Compile every panther CUDA source without a GPU, to catch build breaks in CI.
#   bash bench/compile_cuda.sh            # .cu files for sm_90 and sm_75 (+ binding syntax check)
#   ARCH=sm_80 bash bench/compile_cuda.sh  # or any space-separated list of architectures
# Warnings in the project's sources are errors (-Werror): sm_75 compiles no tensor-core body, so it
# catches code that only the sm_80+ branch uses. nvcc's notice that an architecture is deprecated is
# about the toolkit, not the project, and is silenced.
# The .cu files include only CUDA toolkit headers. The binding (.cpp) needs torch's C++ headers; a
# CPU-only torch wheel lacks c10/cuda/impl/cuda_cmake_macros.h, so a one-line stand-in is generated
# for the syntax check only (nothing is linked). Set SKIP_BINDING=1 to skip that check.
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC="${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}"
ARCH="${ARCH:-sm_90 sm_75}"
SRC=panther/ops/csrc
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
[ -x "$NVCC" ] || { echo "compile_cuda.sh: nvcc not found" >&2; exit 2; }
"$NVCC" --version | tail -1
for arch in $ARCH; do
  for cu in "$SRC"/*.cu; do
    echo "nvcc -std=c++17 -c -arch=$arch $cu"
    "$NVCC" -std=c++17 -c -arch="$arch" -O3 -Werror all-warnings -Wno-deprecated-gpu-targets "$cu" \
      -o "$OUT/$arch-$(basename "$cu").o"
  done
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
