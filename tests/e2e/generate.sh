#!/usr/bin/env bash
# `mamba-slm generate` on the small trained HF fixture model (byte ids, no tokenizer): strategies,
# JSON output, and errors. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
model="$(cd "$(dirname "$0")/.." && pwd)/parity/fixtures/trained"
source "$(dirname "$0")/lib/check.sh"
romeo="82 79 77 69 79 58 10"  # "ROMEO:\n"
check "--help lists the decoding flags" 0 "--num-beams" -- "$bin" generate --help
check "greedy" 0 "^[0-9 ]+$" -- "$bin" generate --model "$model" --prompt-ids "$romeo" --max-new-tokens 8
check "beam search, two sequences" 0 "sequence 1" -- "$bin" generate --model "$model" --prompt-ids "$romeo" \
    --num-beams 4 --num-return-sequences 2 --max-new-tokens 8
check "seeded sampling in JSON" 0 '"strategy": "sample"' -- "$bin" generate --model "$model" \
    --prompt-ids "$romeo" --sample --seed 5 --top-p 0.9 --temperature 0.7 --json
check "contrastive search" 0 "contrastive" -- "$bin" generate --model "$model" --prompt-ids "$romeo" \
    --penalty-alpha 0.6 --top-k 4 --max-new-tokens 8 --json
check "same seed, same output" 0 "" -- bash -c "[ \"\$('$bin' generate --model '$model' --prompt-ids '$romeo' \
    --sample --seed 9 2>/dev/null)\" = \"\$('$bin' generate --model '$model' --prompt-ids '$romeo' --sample --seed 9 \
    2>/dev/null)\" ]"
check "bf16 inference weights" 0 "^[0-9 ]+$" -- "$bin" generate --model "$model" --prompt-ids "$romeo" \
    --max-new-tokens 8 --dtype bf16
check "int8 inference weights, beam search" 0 "sequence 1" -- "$bin" generate --model "$model" \
    --prompt-ids "$romeo" --max-new-tokens 6 --num-beams 2 --num-return-sequences 2 --dtype int8
check "bf16 SSM states" 0 "^[0-9 ]+$" -- "$bin" generate --model "$model" --prompt-ids "$romeo" \
    --max-new-tokens 8 --state-dtype bf16
check "an unknown --state-dtype is refused" 105 "state-dtype" -- "$bin" generate --model "$model" --prompt-ids 1 \
    --state-dtype f16
check "an unknown --dtype is refused" 105 "dtype" -- "$bin" generate --model "$model" --prompt-ids 1 --dtype fp8
check "a bad value is refused" 1 "top_p" -- "$bin" generate --model "$model" --prompt-ids 1 --top-p 2
check "a bad id is refused" 1 "not a token id" -- "$bin" generate --model "$model" --prompt-ids "1 x"
check "text needs a tokenizer" 1 "no tokenizer.json" -- "$bin" generate --model "$model" --prompt "hi"
check "unknown --set key" 1 "unknown" -- "$bin" generate --model "$model" --prompt-ids 1 --set nonsense=1
check "missing model" 1 "nowhere" -- "$bin" generate --model /nowhere --prompt-ids 1
[ "$fails" -eq 0 ]
