#!/usr/bin/env bash
# The one command for a lent GPU machine (H100/H200 with a CUDA torch already installed), ~8 minutes:
# compiles the .cu files, builds the extension (JIT, cached), runs tests/ops (the CUDA kernel tests run
# there on the real device; the CPU emulation in tests/cuda_emulation is not needed), then the GPU
# benchmark: fused kernels vs the cuBLAS two-GEMM path vs nn.Linear, fp32 and bf16, d=8192,
# B in {1, 32, 8192}, k in {16, 64}, forward and forward+backward, with the HBM roofline fraction.
#   bash bench/gpu_check.sh            # everything is printed; exit status is non-zero on any failure
# Only the project's own problems fail a step: compiler warnings in torch/CUDA headers and Python
# warnings from the build machinery are printed, never counted.
set -uo pipefail
cd "$(dirname "$0")/.."
export PANTHER_EXTENSIONS_DIR="${PANTHER_EXTENSIONS_DIR:-$PWD/.panther_build}"
export PANTHER_VERBOSE_BUILD=1
export PANTHER_CUDA_KERNELS=1  # the kernels are opt-in until this script has validated them
export MAX_JOBS="${MAX_JOBS:-16}"
RESULTS="${OUT:-.}"
status=0
step() { echo; echo "=== $* ($(date +%T))"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
python3 -m pip install -e . --no-deps -q 2>&1 | tail -2 || true

step "nvcc compile check (sm_90, sm_75; -Werror on the project's sources)"
SKIP_BINDING=1 timeout 120 bash bench/compile_cuda.sh || status=1

step "JIT build of the extension"
timeout 300 python3 - <<'PY' || status=1
import sys, time, warnings
t = time.time()
from panther.ops import _cuda_ext
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ext = _cuda_ext.cuda_extension()
for w in caught:  # printed, not fatal: only a failed build (ext is None) fails this step
    print(f"warning ({w.category.__name__}): {w.message}")
print("built/loaded", ext, "in %.1fs" % (time.time() - t), "cache", _cuda_ext.cache_dir())
sys.exit(0 if ext is not None else 1)
PY

step "CUDA + CPU op tests (tests/ops)"
timeout 300 python3 -m pytest -q -p no:cacheprovider tests/ops -ra || status=1

step "GPU benchmark: fused vs 2-GEMM vs nn.Linear (fp32)"
timeout 150 python3 bench/bench_cuda_paths.py --dtype float32 --json "$RESULTS/gpu_paths_fp32.json" || status=1

step "GPU benchmark: fused vs 2-GEMM vs nn.Linear (bf16)"
timeout 150 python3 bench/bench_cuda_paths.py --dtype bfloat16 --json "$RESULTS/gpu_paths_bf16.json" || status=1

step "GPU benchmark: SKLinear vs nn.Linear vs the per-term loop (fp32 target point)"
timeout 120 python3 bench/bench_layers.py --device cuda --quick --modes fwd fwdbwd --min-run-time 0.3 --rounds 2 \
  --json "$RESULTS/gpu_bench_target.json" || status=1

step "done: status $status"
exit $status
