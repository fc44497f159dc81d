#!/usr/bin/env bash
# `mamba-slm quantize` on the small trained HF fixture model: bitsandbytes formats, the size report,
# loading the result (info, generate), and refusals. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
fixtures="$(cd "$(dirname "$0")/../parity/fixtures" && pwd)"
model="$fixtures/trained"
source "$(dirname "$0")/lib/check.sh"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
romeo="82 79 77 69 79 58 10"  # "ROMEO:\n"
check "--help lists the options" 0 "--double-quant" -- "$bin" quantize --help
check "nf4 + double quant, with the size report" 0 "total .* bits/param" -- "$bin" quantize --model "$model" \
    --out "$out/nf4" --type nf4 --double-quant
check "info names the quantization" 0 "bitsandbytes nf4 \+ double quant" -- "$bin" info --model "$out/nf4"
check "generate from nf4 weights" 0 "^[0-9 ]+$" -- "$bin" generate --model "$out/nf4" --prompt-ids "$romeo" \
    --max-new-tokens 8
check "fp4, blocksize 128, bf16 compute, a skipped layer" 0 "kept unquantized" -- "$bin" quantize \
    --model "$model" --out "$out/fp4" --type fp4 --blocksize 128 --compute-dtype bf16 --skip "model.layers.1"
check "int8" 0 "linear weights \(int8\)" -- "$bin" quantize --model "$model" --out "$out/int8" --type int8
check "generate from int8 weights, packed int8 kernels" 0 "^[0-9 ]+$" -- "$bin" generate --model "$out/int8" \
    --prompt-ids "$romeo" --max-new-tokens 8 --dtype int8
check "loads transformers' own directory" 0 "^[0-9 ]+$" -- "$bin" generate \
    --model "$fixtures/bnb_models/hybrid_nf4_dq" --prompt-ids "1 2 3" --max-new-tokens 4
check "a bad blocksize is refused" 1 "blocksize 100 is not one of" -- "$bin" quantize --model "$model" \
    --out "$out/bad" --type nf4 --blocksize 100
check "an unknown type is refused" 105 "--type" -- "$bin" quantize --model "$model" --out "$out/bad" --type int4
check "a quantized model is refused" 1 "already quantized" -- "$bin" quantize --model "$out/nf4" \
    --out "$out/bad" --type nf4
check "double quant is 4-bit only" 1 "--double-quant applies to nf4 and fp4 only" -- "$bin" quantize \
    --model "$model" --out "$out/bad" --type int8 --double-quant
[ "$fails" -eq 0 ]
