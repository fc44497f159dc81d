#!/usr/bin/env bash
# The main job, start to finish: install and build, show the model, then train a byte-level
# `tiny` hybrid model on tinyshakespeare and report the held-out loss before and after.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu
data="${MSLM_DATA:-../shared/data/tinyshakespeare.txt}"
build/cpu/mamba-slm info --preset tiny --seq-len 256
build/cpu/mamba-slm quickstart --data "$data" --steps "${STEPS:-200}" "$@"
