#!/usr/bin/env bash
# llama.cpp's CPU prefill and decode on GGUFs that *our* exporter wrote (`mamba-slm export --format
# gguf`), beside bench_decode on the same preset, interleaved round by round; prints the raw lines
# and the medians. docs/PERFORMANCE.md, "llama.cpp on our GGUF exports (issue 9)".
#
#   scripts/bench_gguf_export.sh        # ROUNDS (3), THREADS (2), PRESET (130m), TYPES ("f32 q8_0")
#
# Needs build/cpu (mamba-slm, bench_decode), llama-bench from scripts/bench_decode_anchors.sh setup
# ($WORK/llama-build, same llama-cpp-python sdist) and the random HF model of the preset from its
# `models` step ($WORK/hf/$PRESET).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${WORK:-/tmp/mslm-anchors}")
ROUNDS=${ROUNDS:-3}
THREADS=${THREADS:-2}
PRESET=${PRESET:-130m}
TYPES=${TYPES:-f32 q8_0}
OUT=${OUT:-$WORK/gguf-export-bench}
mkdir -p "$OUT"
for t in $TYPES; do
    "$ROOT/build/cpu/mamba-slm" export --format gguf --type "$t" --model "$WORK/hf/$PRESET" --out "$OUT/$PRESET-$t.gguf"
done
{ date -u +%FT%TZ; git -C "$ROOT" rev-parse --short HEAD; lscpu | grep -E "Model name|^CPU\(s\)"; } > "$OUT/machine.txt"
for r in $(seq 1 "$ROUNDS"); do
    echo "round $r: $(uptime)" >> "$OUT/machine.txt"
    "$ROOT/build/cpu/bench_decode" --presets "$PRESET" --threads "$THREADS" --prompt 512 --steps 64 --dtype f32,bf16,int8 \
        > "$OUT/ours-$r.md"
    for t in $TYPES; do
        # Prefill: 512 tokens from an empty state; decode: 64 tokens after a 512-token prompt (-d), as
        # bench_decode measures. 3 repetitions each after llama-bench's warm-up.
        "$WORK/llama-build/bin/llama-bench" -m "$OUT/$PRESET-$t.gguf" -t "$THREADS" -p 512 -n 0 -r 3 -o jsonl \
            > "$OUT/llama-pp-$t-$r.jsonl"
        "$WORK/llama-build/bin/llama-bench" -m "$OUT/$PRESET-$t.gguf" -t "$THREADS" -p 0 -n 64 -d 512 -r 3 -o jsonl \
            > "$OUT/llama-tg-$t-$r.jsonl"
    done
done
cat "$OUT"/ours-*.md
python3 - "$OUT" "$TYPES" <<'PY'
import glob, json, statistics, sys
out, types = sys.argv[1], sys.argv[2].split()
for t in types:
    for kind in ("pp", "tg"):
        v = [json.loads(l)["avg_ts"] for f in sorted(glob.glob(f"{out}/llama-{kind}-{t}-*.jsonl")) for l in open(f) if l.startswith("{")]
        print(f"llama.cpp {t} {'prefill' if kind == 'pp' else 'decode'}: rounds {[round(x, 1) for x in v]} median {statistics.median(v):.1f} tok/s")
PY
