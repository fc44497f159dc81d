#!/usr/bin/env bash
# `mamba-slm chat` through a pseudo-terminal (tests/e2e/lib/chat_session.py), on a small model
# that the quickstart trains for a few steps. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
data="${MSLM_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/tinyshakespeare.txt"
if [ ! -f "$data" ]; then
    echo "skip: $data not found"
    exit 0
fi
if ! command -v python3 >/dev/null; then
    echo "skip: python3 (the pseudo-terminal driver) not found"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
# The 30m preset decodes slowly enough on a CPU for a Ctrl-C to land inside a 200-token reply.
"$bin" quickstart --data "$data" --out "$tmp/qs" --preset 30m --vocab-size 512 --steps 2 --batch 2 \
    --seq-len 64 --samples 0 >"$tmp/qs.log" 2>&1 || { cat "$tmp/qs.log"; exit 1; }
python3 "$(dirname "$0")/lib/chat_session.py" "$bin" "$tmp/qs/model" "$tmp"
