#!/usr/bin/env bash
# Training tokens/s of `mamba-slm train` and bench/reference/torch_train.py on the run configs
# that scripts/reference_curves.sh wrote, in short runs that alternate (ours, torch, ours, ...)
# so that both trainers see the same load on a shared machine. Each run's figure is the median
# of its log windows after the first (which holds the one-time start-up work).
#
#   scripts/reference_throughput.sh [PRESET ...]   (default: tiny 30m; run reference_curves.sh first)
#
# Environment as reference_curves.sh (WORK, PYTHON, THREADS, NICE), plus ROUNDS (default 3).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/cpu/mamba-slm"
py="${PYTHON:-$HOME/.cache/mamba-slm/venv/bin/python}"
work="${WORK:-/tmp/mslm_curves}"
threads="${THREADS:-2}"
run="nice -n ${NICE:-10}"
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(tiny 30m)

echo "| preset | round | mamba-slm tok/s | PyTorch tok/s | ratio |"
echo "|---|---:|---:|---:|---:|"
for p in "${presets[@]}"; do
    steps=40 log=10
    [ "$p" = 30m ] && steps=8 log=2
    set_args=(--set steps=$steps --set warmup=1 --set log_every=$log --set eval_every=0 --set eval_batches=1)
    for r in $(seq "${ROUNDS:-3}"); do
        rm -rf "$work/tput_${p}_ours_$r" "$work/tput_${p}_torch_$r"
        $run "$bin" --threads "$threads" train --config "$work/$p.json" "${set_args[@]}" \
            --set run_dir="$work/tput_${p}_ours_$r" >/dev/null 2>&1
        $run "$py" "$root/bench/reference/torch_train.py" --config "$work/$p.json" --init "$work/${p}_init" \
            "${set_args[@]}" --out "$work/tput_${p}_torch_$r" --threads "$threads" >/dev/null
    done
    "$py" - "$work" "$p" "${ROUNDS:-3}" <<'PY'
import json, statistics, sys
work, p, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
def tok_s(path):
    rates = [r["tokens_per_s"] for r in map(json.loads, open(path)) if r["type"] == "train"]
    return statistics.median(rates[1:])
rows = [(tok_s(f"{work}/tput_{p}_ours_{r}/metrics.jsonl"), tok_s(f"{work}/tput_{p}_torch_{r}/metrics.jsonl"))
        for r in range(1, rounds + 1)]
for r, (a, b) in enumerate(rows, 1):
    print(f"| {p} | {r} | {a:.0f} | {b:.0f} | {a / b:.2f}× |")
a, b = statistics.median(x for x, _ in rows), statistics.median(y for _, y in rows)
print(f"| {p} | median | {a:.0f} | {b:.0f} | {a / b:.2f}× |")
PY
done
