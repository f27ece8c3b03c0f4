#!/usr/bin/env bash
# One-shot check on a lent GPU machine (H100/H200 with a CUDA torch already installed), ~8 minutes:
# compiles the .cu files, builds the extension (JIT, cached), runs the CUDA tests and the GPU benchmark.
#   bash bench/gpu_check.sh            # everything is printed; exit status is non-zero on any failure
set -uo pipefail
cd "$(dirname "$0")/.."
export PANTHER_EXTENSIONS_DIR="${PANTHER_EXTENSIONS_DIR:-$PWD/.panther_build}"
export PANTHER_VERBOSE_BUILD=1
export PANTHER_CUDA_KERNELS=1  # the kernels are opt-in until this script has validated them
export MAX_JOBS="${MAX_JOBS:-16}"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
python3 -m pip install -e . --no-deps -q 2>&1 | tail -2 || true

step "nvcc compile check (sm_90)"
SKIP_BINDING=1 timeout 120 bash bench/compile_cuda.sh || status=1

step "JIT build of the extension"
timeout 300 python3 - <<'PY' || status=1
import time, warnings
warnings.simplefilter("error")  # a failed build must fail this step, not fall back quietly
t = time.time()
from panther.ops import _cuda_ext
ext = _cuda_ext.cuda_extension()
print("built/loaded", ext, "in %.1fs" % (time.time() - t), "cache", _cuda_ext.cache_dir())
PY

step "CUDA + CPU op tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/ops -ra || status=1

step "GPU benchmark: target point (fp32, d=8192, B=8192, T=1, k=16)"
timeout 150 python3 bench/bench_layers.py --device cuda --quick --modes fwd fwdbwd --min-run-time 0.3 --rounds 2 \
  --json "${OUT:-.}/gpu_bench_target.json" || status=1

step "GPU benchmark: grid subset (fp32 and bf16, forward)"
timeout 120 python3 bench/bench_layers.py --device cuda --d 4096 8192 --batch 512 4096 --terms 1x16,1x64,3x128 \
  --modes fwd --min-run-time 0.2 --rounds 1 || status=1
timeout 60 python3 bench/bench_layers.py --device cuda --dtype bfloat16 --d 8192 --batch 8192 --terms 1x16,3x128 \
  --modes fwd fwdbwd --min-run-time 0.2 --rounds 1 || status=1

step "done: status $status"
exit $status
