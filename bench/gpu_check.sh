#!/usr/bin/env bash
# The one command for a lent GPU machine (H100/H200, CUDA torch in its image, no network), in one device
# `run` of at most 8 minutes:
#   run(command="bash bench/gpu_check.sh", carry=[".gpu_wheels"], timeout_s=540)
#   bash bench/gpu_check.sh --dry-run     # here, on the CPU: every step's Python at toy size (~20 s)
# Steps, in order of value, each with its own timeout inside the whole budget (GPU_CHECK_BUDGET_S, default
# 470 s); a failed step never stops the next:
#   1. install the carried wheels the image lacks (Optuna's chain; bench/fetch_gpu_wheels.sh fetched them)
#   2. JIT build of the extension, 16 jobs, sm_90            (dry-run: skipped, needs nvcc and a GPU)
#   3. tests/ops on the device (the nvcc compile test is CI's) (dry-run: collected only; CI runs them)
#   4. kernel benchmark, fp32 then bf16: fused vs cuBLAS two-GEMM vs nn.Linear, forward and
#      forward+backward, the dispatch rule's choice, fraction of the HBM roofline (bench_cuda_paths.py)
#   5. end to end: a transformer LM trained ~1 min in bf16-mixed, SketchTuneCallback on val_loss, speed-ups
#      with the kernels on and off (gpu_e2e.py), on whatever time is left
# Everything lands in $OUT as it goes (a killed run keeps what it had), at most 8 files:
#   gpu_check.log (all output), steps.json (each step's status and seconds), tests_ops.xml,
#   paths_fp32.json, paths_bf16.json, e2e.json. Exit status: non-zero if any step failed.
# E2E_ARGS adds arguments to gpu_e2e.py, e.g. E2E_ARGS="--strategy search" (see README's GPU section).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
case "${1:-}" in
  --dry-run) DRY=1 ;;
  "") ;;
  *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
PY="${PYTHON:-python3}"
RESULTS="${OUT:-$PWD/.gpu_check_out}"
SITE="${GPU_CHECK_SITE:-/tmp/panther_site}"
BUDGET="${GPU_CHECK_BUDGET_S:-470}"
mkdir -p "$RESULTS"
exec > >(tee -a "$RESULTS/gpu_check.log") 2>&1

export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export PANTHER_EXTENSIONS_DIR="${PANTHER_EXTENSIONS_DIR:-$PWD/.panther_build}"
export PANTHER_VERBOSE_BUILD=1
export PANTHER_CUDA_KERNELS=1  # the kernels are opt-in until this script has validated them
export MAX_JOBS="${MAX_JOBS:-16}" TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
if [ "$DRY" = 1 ]; then DEVICE=(--device cpu --dry-run); else DEVICE=(--device cuda); fi
status=0
STEPS=()

# step NAME CAP_S COMMAND...: run COMMAND with timeout min(CAP_S, budget left); record status and time.
step() {
  local name=$1 cap=$2; shift 2
  local left=$((BUDGET - SECONDS)) start=$SECONDS rc
  local limit=$((cap < left ? cap : left))
  echo; echo "=== $name (at ${SECONDS}s, limit ${limit}s, $(date +%T))"
  if [ "$limit" -lt 5 ]; then
    echo "skipped: the budget is spent"; rc=skipped
  else
    timeout --kill-after=10 "$limit" "$@"; rc=$?
    [ "$rc" = 124 ] && echo "=== $name: timed out after ${limit}s"
    [ "$rc" != 0 ] && status=1
  fi
  STEPS+=("{\"step\": \"$name\", \"rc\": \"$rc\", \"seconds\": $((SECONDS - start))}")
  local IFS=,
  printf '{"dry_run": %s, "status": %s, "steps": [%s]}\n' "$DRY" "$status" "${STEPS[*]}" > "$RESULTS/steps.json"
}
skip() { echo; echo "=== $1: skipped in the dry-run ($2)"; STEPS+=("{\"step\": \"$1\", \"rc\": \"dry-run\"}"); }

echo "=== environment ($(date -u +%FT%TZ)), dry-run $DRY, budget ${BUDGET}s, results in $RESULTS"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda",
torch.version.cuda, "available", torch.cuda.is_available())'
command -v nvcc >/dev/null && nvcc --version | tail -1

if [ -d .gpu_wheels ] || [ "$DRY" = 1 ]; then
  step wheels 60 "$PY" bench/install_gpu_wheels.py .gpu_wheels --target "$SITE" $([ "$DRY" = 1 ] && echo --dry-run)
else
  echo "no .gpu_wheels folder: run bash bench/fetch_gpu_wheels.sh here and carry .gpu_wheels"
fi

if [ "$DRY" = 1 ]; then
  skip build "nvcc JIT for a GPU"
  step tests_ops 60 "$PY" -m pytest -q -p no:cacheprovider --collect-only -qq tests/ops --ignore=tests/ops/test_nvcc_build.py
else
  step build 240 "$PY" - <<'PY'
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
  step tests_ops 150 "$PY" -m pytest -q -p no:cacheprovider -ra tests/ops --ignore=tests/ops/test_nvcc_build.py \
    --junitxml="$RESULTS/tests_ops.xml"
fi

for dtype in float32 bfloat16; do
  short=$([ "$dtype" = float32 ] && echo fp32 || echo bf16)
  step "paths_$short" 75 "$PY" bench/bench_cuda_paths.py "${DEVICE[@]}" --dtype "$dtype" \
    --json "$RESULTS/paths_$short.json"
done

# The end-to-end check gets what is left: about a third for training, a quarter for tuning (their defaults
# when the budget allows), the rest for start-up, evaluation and the timed steps.
left=$((BUDGET - SECONDS - 10))
train_s=$((left * 35 / 100 < 60 ? left * 35 / 100 : 60))
tune_s=$((left * 25 / 100 < 120 ? left * 25 / 100 : 120))
step e2e "$left" "$PY" bench/gpu_e2e.py "${DEVICE[@]}" --train-seconds "$((train_s > 1 ? train_s : 1))" \
  --tune-budget-s "$((tune_s > 1 ? tune_s : 1))" --json "$RESULTS/e2e.json" --log-dir "$PWD/.gpu_e2e_logs" ${E2E_ARGS:-}

echo; echo "=== done: status $status after ${SECONDS}s ($(date +%T))"
exit $status
