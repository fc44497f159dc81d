#!/usr/bin/env bash
# Reference training curves (docs/PERFORMANCE.md, "Reference training curves"): trains the tiny
# and 30m presets on tinyshakespeare with `mamba-slm train` and with the PyTorch reference
# bench/reference/torch_train.py from the same initial weights and the same batches, one after
# the other, plus two yardsticks for "within noise": mamba-slm from the same weights moved by one
# ulp, and (tiny) PyTorch from its own initialisation. Then compares the curves and scores the
# final models on the held-out tail and on WikiText-2.
#
#   scripts/reference_curves.sh [PRESET ...]      (default: tiny 30m)
#
# Environment: WORK (default /tmp/mslm_curves), MSLM_DATA_DIR (default ../shared/data),
# PYTHON (default ~/.cache/mamba-slm/venv/bin/python, with torch), THREADS (default 2),
# NICE (default 10). Needs a built build/cpu/mamba-slm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/cpu/mamba-slm"
data="${MSLM_DATA_DIR:-$root/../shared/data}"
py="${PYTHON:-$HOME/.cache/mamba-slm/venv/bin/python}"
work="${WORK:-/tmp/mslm_curves}"
threads="${THREADS:-2}"
run="nice -n ${NICE:-10}"
presets=("$@")
[ ${#presets[@]} -eq 0 ] && presets=(tiny 30m)
mkdir -p "$work"

# Data. Validation is the held-out tail of tinyshakespeare: the lines after the first blank line
# at or past 90 % of the lines (a cut between two speeches). The BPE tokenizer is trained on the
# head only. Each text is one document (split=file): one EOT, then the text, as one stream.
text="$data/tinyshakespeare.txt"
cut=$(awk -v from=$(( $(wc -l <"$text") * 9 / 10 )) 'NR >= from && /^$/ {print NR; exit}' "$text")
head -n $((cut - 1)) "$text" >"$work/ts_head.txt"
tail -n +$((cut + 1)) "$text" >"$work/ts_tail.txt"
[ -f "$work/tok.json" ] || "$bin" tokenizer train --input "$work/ts_head.txt" --vocab-size 2048 \
    --special-tokens "<|endoftext|>" --pretokenizer gpt2 --out "$work/tok.json" --quiet
prepare() {  # SOURCE OUT VAL_FRACTION
    "$bin" data prepare --source "$1" --tokenizer "$work/tok.json" --out "$work/$2" --val-fraction "$3"
}
prepare "$work/ts_head.txt" ts_train 0
prepare "$work/ts_tail.txt" ts_val 1
prepare "$data/wikitext2-valid.txt" wt2_valid 1
prepare "$data/wikitext2-test.txt" wt2_test 1

# One run config per preset; both trainers read it. Same seed: same initial weights (written by
# --save-init for the PyTorch side) and the same shuffled batch order.
config() {  # PRESET STEPS LR MIN_LR WARMUP EVAL_EVERY EVAL_BATCHES LOG_EVERY
    cat >"$work/$1.json" <<JSON
{"model": {"preset": "$1", "vocab_size": 2048}, "data": "$work/ts_train", "val_data": "$work/ts_val",
 "run_dir": "$work/$1_ours", "batch_size": 8, "seq_len": 256, "steps": $2,
 "lr_schedule": "cosine", "lr": $3, "min_lr": $4, "warmup": $5, "weight_decay": 0.1,
 "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "grad_clip": 1.0,
 "eval_every": $6, "eval_batches": $7, "log_every": $8, "checkpoint_every": 0, "keep_last": 1, "seed": 1}
JSON
}
# Sized for ~60 minutes of training on two shared cores. tiny evaluates the whole tail (148
# windows); 30m its first 48 windows (12,288 tokens), as the PyTorch forward of 30m is slow here.
config tiny 600 2e-3 2e-4 30 50 20 10
config 30m 60 1e-3 1e-4 6 20 6 2

# mamba-slm from ${p}_init with every weight one float32 ulp larger, same batches: how far two
# runs drift apart from a rounding-sized difference, the yardstick for the PyTorch difference.
# Uses the loop's $p and $cfg.
ulp() {
    "$py" - "$work/${p}_init" "$work/${p}_init_ulp" <<'PY'
import shutil, sys
import numpy as np
from safetensors.numpy import load_file, save_file
src, dst = sys.argv[1:]
shutil.copytree(src, dst, dirs_exist_ok=True)
w = load_file(f"{src}/model.safetensors")
save_file({k: np.nextafter(v, np.float32(np.inf)) for k, v in w.items()}, f"{dst}/model.safetensors")
PY
    /usr/bin/time -f "%e s wall" $run "$bin" --threads "$threads" train --config "$cfg" \
        --set model.preset= --set model.vocab_size=0 --set model.init_from="$work/${p}_init_ulp" \
        --set run_dir="$work/${p}_ours_ulp"
}

for p in "${presets[@]}"; do
    cfg="$work/$p.json"
    rm -rf "$work/${p}_ours" "$work/${p}_torch" "$work/${p}_torch_reinit" "$work/${p}_init" "$work/${p}_init_ulp" \
        "$work/${p}_ours_ulp"
    "$bin" train --config "$cfg" --save-init "$work/${p}_init"
    echo "== $p: initial loss on the first batch (mamba-slm weights in PyTorch)"
    "$py" "$root/bench/reference/torch_train.py" --config "$cfg" --init "$work/${p}_init" --check
    echo "== $p: mamba-slm"
    /usr/bin/time -f "%e s wall" $run "$bin" --threads "$threads" train --config "$cfg"
    echo "== $p: PyTorch, same initial weights"
    /usr/bin/time -f "%e s wall" $run "$py" "$root/bench/reference/torch_train.py" --config "$cfg" \
        --init "$work/${p}_init" --out "$work/${p}_torch" --threads "$threads"
    echo "== $p: mamba-slm again, every initial weight moved up by one ulp (the divergence rounding alone causes)"
    ulp
    if [ "$p" = tiny ]; then
        echo "== $p: PyTorch, its own initialisation (same scheme, torch's generator, seed 2)"
        /usr/bin/time -f "%e s wall" $run "$py" "$root/bench/reference/torch_train.py" --config "$cfg" \
            --init "$work/${p}_init" --reinit 2 --out "$work/${p}_torch_reinit" --threads "$threads"
    fi
done

for p in "${presets[@]}"; do
    echo "== $p: curves"
    files=("$work/${p}_ours/metrics.jsonl" "$work/${p}_torch/metrics.jsonl")
    labels="mamba-slm,torch"
    if [ -f "$work/${p}_ours_ulp/metrics.jsonl" ]; then
        files+=("$work/${p}_ours_ulp/metrics.jsonl")
        labels+=",mamba-slm (init +1 ulp)"
    fi
    if [ -f "$work/${p}_torch_reinit/metrics.jsonl" ]; then
        files+=("$work/${p}_torch_reinit/metrics.jsonl")
        labels+=",torch (own init)"
    fi
    "$py" "$root/bench/reference/compare_curves.py" "${files[@]}" --labels "$labels" --every 5 \
        --svg "$work/${p}_curves.svg" --title "$p preset on tinyshakespeare: mamba-slm vs PyTorch"
    # 30m scores the first 16 batches (32,768 tokens) of each WikiText-2 file: all of them would
    # take ~5 minutes per file and model on two cores.
    wt_batches=0
    [ "$p" = 30m ] && wt_batches=16
    echo "== $p: final models on the held-out tail and WikiText-2 (windows of 256 tokens)"
    ours=$(ls -d "$work/${p}_ours"/checkpoints/step_* | tail -1)
    for model in "$ours" "$work/${p}_torch/final"; do
        $run "$bin" --threads "$threads" eval --model "$model" --data "$work/ts_val" --seq-len 256 --json
        for set in wt2_valid wt2_test; do
            $run "$bin" --threads "$threads" eval --model "$model" --data "$work/$set" --seq-len 256 \
                --max-batches "$wt_batches" --json
        done
    done
done
