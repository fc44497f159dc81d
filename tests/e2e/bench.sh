#!/usr/bin/env bash
# `mamba-slm bench` as a user runs it: the tables of the tiny preset on the CPU (few steps), the
# JSON document, the errors; the CUDA path where a GPU is present, else a visible skip.
# $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
source "$(dirname "$0")/lib/check.sh"
quick=(--preset tiny --seq 32 --batch 2 --steps 1 --warmup 0 --decode-batch 1,4 --decode-tokens 2)
check "bench --help" 0 "--decode-batch" -- "$bin" bench --help
check "bench tables on the CPU" 0 "## train.*" -- "$bin" bench "${quick[@]}"
out="$("$bin" bench "${quick[@]}" 2>/dev/null)"
for h in "## train" "## prefill" "## decode" "## memory" "\| 2x32 \|" "\| 4 \| [0-9]+ \|" "model FLOPs/token"; do
    if grep -qE -- "$h" <<<"$out"; then echo "ok   bench markdown has $h"; else
        echo "FAIL bench markdown lacks $h"; echo "$out" | head -30; fails=$((fails + 1)); fi
done
check "bench progress on stderr" 0 "bench: decode at batch 4" -- bash -c "\"$bin\" bench ${quick[*]} 2>&1 >/dev/null"
if command -v python3 >/dev/null; then
    check "bench --json parses, numbers positive" 0 "^ok$" -- bash -c "\"$bin\" bench ${quick[*]} --json 2>/dev/null | python3 -c '
import json, sys
j = json.load(sys.stdin)
t = j[\"train\"]
assert t[\"batch\"] == 2 and t[\"seq\"] == 32, t
assert t[\"tokens_per_s\"] > 0 and t[\"step_ms\"] > 0 and t[\"flops_per_token\"] > 0, t
assert t[\"mfu\"] is None  # CPU
assert j[\"prefill\"][\"tokens\"] == 32 and j[\"prefill\"][\"tokens_per_s\"] > 0
rows = j[\"decode\"][\"rows\"]
assert [r[\"batch\"] for r in rows] == [1, 4] and all(r[\"tokens_per_s\"] > 0 for r in rows), rows
assert all(m[\"planned_bytes\"] or m[\"measured_bytes\"] for m in j[\"memory\"])
assert all(v > 0 for m in j[\"memory\"] for v in (m[\"planned_bytes\"], m[\"measured_bytes\"]) if v is not None)
print(\"ok\")
'"
else
    echo "skip bench --json parse: python3 not found"
fi
check "bench only the asked tables" 0 "^[^#]*## decode" -- bash -c "\"$bin\" bench ${quick[*]} --tables decode 2>/dev/null | grep -v '^# ' | grep -v '^$' | grep -v '^prefill and decode weights:' | head -1"
# bf16 states on the CPU take the AVX2 kernel (ops::ssd_update_bf16_state_supported); without it, f32.
want_states=f32
grep -q avx2 /proc/cpuinfo 2>/dev/null && want_states=bf16
check "bench names the SSM states it decodes with" 0 "SSM states: $want_states\$" -- "$bin" bench "${quick[@]}" \
    --tables decode --state-dtype bf16
check "bench's default SSM states" 0 "SSM states: f32\$" -- "$bin" bench "${quick[@]}" --tables decode
check "bench unknown table" 1 "unknown table \"speed\"" -- "$bin" bench --preset tiny --tables train,speed
check "bench bad decode batch" 1 "--decode-batch: \"0\"" -- "$bin" bench --preset tiny --decode-batch 1,0
check "bench needs a model" 106 "--preset, --model or --onnx is required" -- "$bin" bench
check "bench --json with --profile" 1 "--json is for the tables" -- "$bin" bench --preset tiny --profile --json
gpu_out="$("$bin" bench --preset tiny --device cuda --seq 32 --batch 2 --steps 1 --warmup 0 --decode-batch 1 --decode-tokens 2 2>&1)"
if grep -qE "built without CUDA|no CUDA device" <<<"$gpu_out" && ! grep -q "## train" <<<"$gpu_out"; then
    echo "skip bench --device cuda: $(head -1 <<<"$gpu_out")"
    check "bench --profile without a GPU is one error" 1 "bench --profile: --device cuda" -- "$bin" bench --preset tiny --profile
else
    check "bench --device cuda tables" 0 "MFU vs 790" -- "$bin" bench --preset tiny --device cuda --seq 32 --batch 2 --steps 1 \
        --warmup 0 --decode-batch 1 --decode-tokens 2
    check "bench --profile" 0 "next bottleneck: " -- "$bin" bench --preset tiny --profile --seq 64 --batch 2 --steps 2 --warmup 1
fi
[ "$fails" -eq 0 ]
