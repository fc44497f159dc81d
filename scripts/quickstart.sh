#!/usr/bin/env bash
# The main job, start to finish: install (Debian packages, including the `fortunes` corpus) and
# build, show the model, then `mamba-slm quickstart`: train a BPE tokenizer and a small hybrid
# Mamba-2 + attention model on the fortunes, with evaluation on held-out text, and print samples.
# Extra arguments go to `mamba-slm quickstart` (e.g. --data FILE, --steps N).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh cpu
build/cpu/mamba-slm info --preset tiny --seq-len 128
build/cpu/mamba-slm quickstart "$@"
