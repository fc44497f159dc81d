#!/usr/bin/env bash
# End-to-end checks of `mamba-slm train`: prepare bytes of tinyshakespeare, train, resume.
# $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
data="${MSLM_DATA_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/data}/tinyshakespeare.txt"
if [ ! -f "$data" ]; then
    echo "skip: $data not found"
    exit 0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$(dirname "$0")/lib/check.sh"
check "prepare" 0 "train" -- "$bin" data prepare --source "$data:split=block" --tokenizer bytes --out "$tmp/data"
cat >"$tmp/train.json" <<JSON
{"model": {"preset": "tiny", "vocab_size": 257}, "data": "$tmp/data", "run_dir": "$tmp/run",
 "batch_size": 4, "seq_len": 64, "steps": 10, "eval_every": 5, "checkpoint_every": 5, "log_every": 5}
JSON
check "train --help" 0 "--resume" -- "$bin" train --help
check "train 10 steps" 0 "trained to step 10" -- "$bin" train --config "$tmp/train.json"
check "checkpoints, metrics and curve written" 0 "loss_curve.svg" -- ls "$tmp/run"
check "plot redraws the curve on demand" 0 "2 train and 2 validation points" -- \
    "$bin" plot "$tmp/run" --out "$tmp/curve.svg"
check "plot of a directory without metrics" 1 "no metrics.jsonl" -- "$bin" plot "$tmp"
check "a token budget sets the steps" 0 "trained to step 3" -- "$bin" train --config "$tmp/train.json" \
    --set tokens=700 --set run_dir="$tmp/tokens"
# Without a GPU (or without CUDA in the build) device cuda stops before any work, saying which.
if "$bin" info --preset tiny | grep -q "GPU none"; then
    check "device cuda is refused with the reason" 1 "no CUDA (support|device)" -- "$bin" train \
        --config "$tmp/train.json" --device cuda --set run_dir="$tmp/cuda"
else
    echo "skip device cuda refusal: this machine has a GPU"
fi
check "resume continues to 16" 0 "trained to step 16" -- "$bin" train --config "$tmp/train.json" --set steps=16 --resume
check "--save-init writes the starting model" 0 "wrote the initial model" -- \
    "$bin" train --config "$tmp/train.json" --save-init "$tmp/init"
check "eval scores a checkpoint" 0 "bpb" -- \
    "$bin" eval --model "$tmp/run/checkpoints/step_00000016" --data "$tmp/data" --seq-len 64
check "eval --json, first batches" 0 '"windows":8' -- \
    "$bin" eval --model "$tmp/init" --data "$tmp/data" --seq-len 64 --batch-size 4 --max-batches 2 --json
check "eval refuses a window longer than the model's" 1 "max_seq_len" -- \
    "$bin" eval --model "$tmp/init" --data "$tmp/data" --seq-len 100000
check "unknown --set key is named" 1 "learning_rat" -- "$bin" train --config "$tmp/train.json" --set learning_rat=1
check "sequence longer than the model's is refused before training" 1 "seq_len" -- \
    "$bin" train --config "$tmp/train.json" --set seq_len=100000 --set run_dir="$tmp/other"
[ "$fails" -eq 0 ]
