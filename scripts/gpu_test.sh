#!/usr/bin/env bash
# Builds mamba-slm with CUDA and runs the whole GPU test suite (every GoogleTest suite named Cuda*:
# each CUDA kernel against the CPU reference), then prints a summary: passed, failed (by name) and
# skipped. Without a GPU every test skips and says why; the exit status is non-zero only on a failure.
#
#   scripts/gpu_test.sh                 # configure + build the cuda preset, run, summarise
#   TESTS=path/to/mslm_tests scripts/gpu_test.sh   # run a prebuilt binary (a GPU machine without
#                                                  # the build dependencies), no build
#   FILTER='CudaSsd*' scripts/gpu_test.sh          # a subset; LOG=file keeps the full output
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FILTER=${FILTER:-Cuda*}
if [ -z "${TESTS:-}" ]; then
    cd "$ROOT"
    if ! command -v nvcc >/dev/null 2>&1 && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH="/usr/local/cuda/bin:$PATH"; fi
    command -v nvcc >/dev/null 2>&1 || { echo "gpu_test.sh: nvcc not found (install the CUDA toolkit)" >&2; exit 2; }
    cmake --preset cuda >/dev/null
    cmake --build build/cuda -j"$(nproc)" --target mslm_tests
    TESTS=$ROOT/build/cuda/mslm_tests
fi
LOG=${LOG:-$(mktemp -t mslm-gpu-tests.XXXXXX.log)}
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
set +e
"$TESTS" --gtest_filter="$FILTER" 2>&1 | tee "$LOG" | grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|^\[==========\]' 
status=${PIPESTATUS[0]}
set -e
passed=$(grep -cE '^\[ +OK +\]' "$LOG" || true)
failed=$(grep -E '^\[ +FAILED +\] [A-Za-z]' "$LOG" | sed -E 's/^\[ +FAILED +\] //; s/[ ,].*//' | sort -u || true)
skipped=$(grep -cE '^\[ +SKIPPED +\] [A-Za-z].*\([0-9]+ ms\)$' "$LOG" || true)  # not the summary's list
echo
echo "GPU test suite ($FILTER): $passed passed, $(printf '%s' "$failed" | grep -c . || true) failed, $skipped skipped; full log: $LOG"
[ -n "$failed" ] && printf 'failed: %s\n' $failed  # one name a line (names have no spaces)
exit "$status"
