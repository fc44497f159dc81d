#!/usr/bin/env bash
# QAT against post-training quantization (issue 8 must 6): the tiny preset on tinyshakespeare bytes.
# A base model trained for 400 steps; then 200 more steps from it three ways (no QAT, --qat int4,
# --qat nf4), and every model scored in fp32 and after int4 / NF4 / int8 quantization on the held-out
# tail and WikiText-2 valid. Usage: scripts/qat_vs_ptq.sh [WORK_DIR]. Needs build/cpu/mamba-slm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="$root/build/cpu/mamba-slm"
data="${MSLM_DATA_DIR:-/work/shared/data}"
work="${1:-/tmp/qat_work}"
run="nice -n ${NICE:-19}"
mkdir -p "$work"
cd "$work"

# Held-out tail of tinyshakespeare as in scripts/reference_curves.sh, byte tokens.
text="$data/tinyshakespeare.txt"
cut=$(awk -v from=$(( $(wc -l <"$text") * 9 / 10 )) 'NR >= from && /^$/ {print NR; exit}' "$text")
head -n $((cut - 1)) "$text" >ts_head.txt
tail -n +$((cut + 1)) "$text" >ts_tail.txt
$run "$bin" data prepare --source ts_head.txt --tokenizer bytes --out ts_train --val-fraction 0
$run "$bin" data prepare --source ts_tail.txt --tokenizer bytes --out ts_val --val-fraction 1
$run "$bin" data prepare --source "$data/wikitext2-valid.txt" --tokenizer bytes --out wt2_valid --val-fraction 1

cat >base.json <<JSON
{"model": {"preset": "tiny", "vocab_size": 257}, "data": "$work/ts_train", "val_data": "$work/ts_val",
 "run_dir": "$work/base", "batch_size": 8, "seq_len": 128, "steps": 400,
 "lr_schedule": "cosine", "lr": 3e-3, "min_lr": 3e-4, "warmup": 20, "weight_decay": 0.1, "grad_clip": 1.0,
 "eval_every": 0, "eval_batches": 20, "log_every": 50, "checkpoint_every": 0, "keep_last": 1, "seed": 1}
JSON
$run "$bin" train --config base.json
base="$work/base/$(ls base | grep step_ | tail -1)"

# The continuation: same data stream position is not kept (a fresh run from init_from), same
# schedule for all three, so the only difference is --qat.
for q in none int4 nf4; do
    args=(--set model.preset= --set "model.init_from=$base" --set model.vocab_size=0 --set steps=200 --set warmup=0
          --set lr=1e-3 --set min_lr=1e-4 --set seed=2 --run-dir "$work/cont_$q")
    [ "$q" != none ] && args+=(--qat "$q")
    $run "$bin" train --config base.json "${args[@]}"
done

score() {  # MODEL_DIR LABEL
    for set in ts_val wt2_valid; do
        max=0; [ $set = wt2_valid ] && max=16
        for fq in "" int8 int4 nf4; do
            echo -n "$2 $set ${fq:-fp32} "
            $run "$bin" eval --model "$1" --data "$set" --seq-len 128 --batch-size 8 --max-batches $max \
                ${fq:+--fake-quant $fq} --json
        done
    done
}
score "$base" base
for q in none int4 nf4; do score "$work/cont_$q/$(ls cont_$q | grep step_ | tail -1)" "cont_$q"; done
# NF4 through the bitsandbytes-format directory gives the same numbers as --fake-quant nf4
# (test Qat.FakeQuantizedWeightsAreThoseOfAQuantizedModelDirectory): one check of it here.
$run "$bin" quantize --model "$work/cont_nf4/$(ls cont_nf4 | grep step_ | tail -1)" --out "$work/cont_nf4_bnb" --type nf4
$run "$bin" eval --model "$work/cont_nf4_bnb" --data ts_val --seq-len 128 --batch-size 8 --json
