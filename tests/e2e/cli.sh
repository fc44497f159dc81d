#!/usr/bin/env bash
# End-to-end checks of the command line a user runs. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
data="$(cd "$(dirname "$0")/../.." && pwd)/../shared/data/tinyshakespeare.txt"
source "$(dirname "$0")/lib/check.sh"
check "help lists subcommands" 0 "info" -- "$bin" --help
check "info --help" 0 "--preset" -- "$bin" info --help
check "info tiny" 0 "parameters" -- "$bin" info --preset tiny
if grep -q avx2 /proc/cpuinfo 2>/dev/null; then  # the CPU's bf16-state kernel needs AVX2
    check "info plans bf16 SSM states" 0 "bf16 SSM states" -- "$bin" info --preset tiny --state-dtype bf16
fi
check "info 130m counts ~120M" 0 "parameters +1[0-9]{2}\.[0-9]M" -- "$bin" info --preset 130m --seq-len 1024
fixtures="$(cd "$(dirname "$0")/../parity/fixtures" && pwd)"
check "info on an HF Bamba dir" 0 "\(bamba\)" -- "$bin" info --model "$fixtures/hybrid"
check "info on an HF Jamba dir" 0 "MAMA" -- "$bin" info --model "$fixtures/jamba"
tok="$fixtures/tokenizers/gpt2.json"
check "tokenizer encode" 0 "^[0-9]+( [0-9]+)+$" -- "$bin" tokenizer encode --tokenizer "$tok" --text "Hello world"
ids="$("$bin" tokenizer encode --tokenizer "$tok" --text "Hello world, héllo 🙂" 2>/dev/null)"
# shellcheck disable=SC2086
check "tokenizer decode inverts encode" 0 "^Hello world, héllo 🙂$" -- "$bin" tokenizer decode --tokenizer "$tok" $ids
check "tokenizer of an unsupported type" 1 "wordpiece.json" -- \
    bash -c "printf '{\"model\": {\"type\": \"WordPiece\", \"vocab\": {}}}' > /tmp/wordpiece.json && \"$bin\" tokenizer encode --tokenizer /tmp/wordpiece.json --text hi"
check "unknown preset" 1 "unknown preset \"nope\"" -- "$bin" info --preset nope
check "missing model dir" 1 "cannot open" -- "$bin" info --model /nonexistent/dir
check "no subcommand" 106 "subcommand" -- "$bin"
check "bad threads" 105 "threads" -- "$bin" --threads 0 info --preset tiny
if [ -f "$data" ]; then
    # --data: the quickstart on another corpus (tests/e2e/quickstart.sh runs the default one).
    qs="$(mktemp -d)"
    out="$("$bin" --threads 2 quickstart --data "$data" --out "$qs" --vocab-size 512 --steps 30 --batch 4 \
        --seq-len 64 --samples 1 --sample-tokens 10 2>&1)"
    status=$?
    final=$(sed -n 's/.*held-out loss \([0-9.]*\) nats.*/\1/p' <<<"$out")
    rm -rf "$qs"
    # 30 AdamW steps must take the held-out loss clearly below the untrained ln(512) = 6.24: 0.5 nats
    # is far outside run-to-run noise and far above what 30 steps give.
    if [ "$status" -eq 0 ] && [ -n "$final" ] && grep -q -- "--- sample 1" <<<"$out" &&
        awk -v a="$final" 'BEGIN { exit !(a < 6.24 - 0.5) }'; then
        echo "ok   quickstart --data trains on tinyshakespeare (held-out loss $final) and samples"
    else
        echo "FAIL quickstart --data: status $status, held-out loss '$final'"
        echo "$out" | tail -5
        fails=$((fails + 1))
    fi
else
    echo "skip quickstart: $data not found"
fi
[ "$fails" -eq 0 ]
