#!/usr/bin/env bash
# Training throughput of `mamba-slm train` and bench/reference/torch_train.py on the run configs
# that scripts/reference_curves.sh wrote, as tokens per CPU-second on one thread: on a machine
# shared with other work, wall-clock tokens/s swing with the load, while the CPU time a
# single-threaded process needs for a step barely does. Each trainer runs N and 2N steps; the
# difference of the two runs' user + system time is N training steps without start-up, the
# final eval or the checkpoint.
#
#   scripts/reference_throughput.sh [PRESET ...]   (default: tiny 30m; run reference_curves.sh first)
#
# Environment as reference_curves.sh (WORK, PYTHON, NICE).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/cpu/mamba-slm"
py="${PYTHON:-$HOME/.cache/mamba-slm/venv/bin/python}"
work="${WORK:-/tmp/mslm_curves}"
run="nice -n ${NICE:-10}"
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(tiny 30m)

cpu_seconds() {  # OUT_FILE COMMAND...: runs COMMAND, writes its user + system seconds to OUT_FILE
    local out="$1"
    shift
    /usr/bin/time -f "%U %S" -o "$out.time" "$@" >/dev/null 2>&1
    awk '{print $1 + $2}' "$out.time" >"$out"
}

echo "| preset | steps timed | mamba-slm tok per CPU-s | PyTorch tok per CPU-s | ratio |"
echo "|---|---:|---:|---:|---:|"
for p in "${presets[@]}"; do
    n=30
    [ "$p" = 30m ] && n=3
    for steps in $n $((2 * n)); do
        set_args=(--set steps=$steps --set warmup=1 --set log_every=$n --set eval_every=0 --set eval_batches=1)
        rm -rf "$work/tput_${p}_ours_$steps" "$work/tput_${p}_torch_$steps"
        cpu_seconds "$work/tput_${p}_ours_$steps.cpu" $run "$bin" --threads 1 train --config "$work/$p.json" \
            "${set_args[@]}" --set run_dir="$work/tput_${p}_ours_$steps"
        cpu_seconds "$work/tput_${p}_torch_$steps.cpu" $run "$py" "$root/bench/reference/torch_train.py" \
            --config "$work/$p.json" --init "$work/${p}_init" "${set_args[@]}" --out "$work/tput_${p}_torch_$steps" \
            --threads 1
    done
    tokens=$((n * 8 * 256))
    awk -v p="$p" -v n="$n" -v tokens="$tokens" \
        -v o1="$(cat "$work/tput_${p}_ours_$n.cpu")" -v o2="$(cat "$work/tput_${p}_ours_$((2 * n)).cpu")" \
        -v t1="$(cat "$work/tput_${p}_torch_$n.cpu")" -v t2="$(cat "$work/tput_${p}_torch_$((2 * n)).cpu")" \
        'BEGIN { a = tokens / (o2 - o1); b = tokens / (t2 - t1);
                 printf "| %s | %d | %.0f | %.0f | %.2f× |\n", p, n, a, b, a / b }'
done
