#!/usr/bin/env bash
# Builds mamba-slm and runs every test (CTest: unit, parity and end-to-end). CUDA tests skip
# visibly on a machine without a GPU. Usage: scripts/test.sh [preset]
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-}"
scripts/setup.sh $preset
if [ -z "$preset" ]; then
    if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then preset=cuda; else preset=cpu; fi
fi
ctest --preset "$preset" -j "${MSLM_TEST_JOBS:-$(nproc)}"
