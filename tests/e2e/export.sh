#!/usr/bin/env bash
# End-to-end checks of `mamba-slm export`. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
source "$(dirname "$0")/lib/check.sh"
fixtures="$(cd "$(dirname "$0")/../parity/fixtures" && pwd)"
native="$fixtures/hf_export/bamba/native"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# check_one_line NAME STATUS PATTERN -- COMMAND...: like check, and the output is exactly one line.
check_one_line() {
    local name="$1" want="$2" pattern="$3"
    shift 4
    local out status
    out="$("$@" 2>&1)"
    status=$?
    if [ "$status" -ne "$want" ] || ! grep -qE -- "$pattern" <<<"$out" || [ "$(wc -l <<<"$out")" -ne 1 ]; then
        echo "FAIL $name: status $status (want $want, one line matching '$pattern'), output:"
        echo "$out" | head -20
        fails=$((fails + 1))
    else
        echo "ok   $name"
    fi
}

check "export --help" 0 "--format.*hf" -- "$bin" export --help
check "help lists export" 0 "export" -- "$bin" --help
check "export a native hybrid" 0 "as BambaForCausalLM to .*model.safetensors.*tokenizer_config.json" -- \
    "$bin" export --format hf --model "$native" --out "$tmp/hf"
for f in config.json model.safetensors tokenizer_config.json generation_config.json; do
    check "export wrote $f" 0 "" -- test -s "$tmp/hf/$f"
done
check "the export loads as an HF Bamba" 0 "\(bamba\)" -- "$bin" info --model "$tmp/hf"
# Greedy decoding on the export gives the native model's tokens.
want="$("$bin" generate --model "$native" --prompt-ids "5 17 33" --max-new-tokens 8 2>/dev/null)"
check "the export generates the native model's tokens" 0 "^${want}$" -- \
    "$bin" generate --model "$tmp/hf" --prompt-ids "5 17 33" --max-new-tokens 8
check "export --dtype bf16" 0 "\(BF16\)" -- \
    "$bin" export --format hf --model "$native" --out "$tmp/bf16" --dtype bf16
check "an HF model re-exports" 0 "as JambaForCausalLM" -- \
    "$bin" export --format hf --model "$fixtures/jamba" --out "$tmp/jamba"
check "re-exported weights are the original file" 0 "" -- \
    cmp "$fixtures/jamba/model.safetensors" "$tmp/jamba/model.safetensors"

check_one_line "missing model dir" 1 "/nonexistent/dir.*cannot open" -- \
    "$bin" export --format hf --model /nonexistent/dir --out "$tmp/none"
check_one_line "non-empty output dir" 1 "exists and is not empty.*--force" -- \
    "$bin" export --format hf --model "$native" --out "$tmp/hf"
check "--force replaces it" 0 "BambaForCausalLM" -- \
    "$bin" export --format hf --model "$native" --out "$tmp/hf" --force
check "unknown format" 105 "--format: xyz not in" -- "$bin" export --format xyz --model "$native" --out "$tmp/x"
check "bad dtype" 105 "--dtype: f8 not in" -- "$bin" export --format hf --model "$native" --out "$tmp/x" --dtype f8
check "--model is required" 106 "--model is required" -- "$bin" export --format hf --out "$tmp/x"

# A configuration no transformers class expresses: ALiBi attention.
mkdir -p "$tmp/alibi"
sed 's/"position": "rope"/"position": "alibi"/' "$native/config.json" >"$tmp/alibi/config.json"
cp "$native/model.safetensors" "$tmp/alibi/"
check_one_line "unsupported config (ALiBi)" 1 \
    "alibi/config.json: cannot export to transformers: attention.position alibi" -- \
    "$bin" export --format hf --model "$tmp/alibi" --out "$tmp/alibi_hf"
check "nothing written for a refused export" 1 "" -- test -e "$tmp/alibi_hf"

# ONNX (export/onnx.h; built when libonnx-dev is found). onnxruntime parity is OnnxExportParity.*.
if "$bin" export --format onnx --model "$native" --out "$tmp/onnx" >"$tmp/onnx.log" 2>&1; then
    echo "ok   export --format onnx"
    for f in model.onnx model_prefill.onnx genai_config.json; do
        check "onnx export wrote $f" 0 "" -- test -s "$tmp/onnx/$f"
    done
    # ALiBi, which transformers cannot express, exports to ONNX (OnnxExportParity checks its numbers).
    check "onnx: ALiBi exports" 0 "exported .* as ONNX" -- \
        "$bin" export --format onnx --model "$tmp/alibi" --out "$tmp/alibi_onnx"
    check_one_line "onnx: a GGUF type is refused" 1 "--type q8_0" -- \
        "$bin" export --format onnx --type q8_0 --model "$native" --out "$tmp/onnx_q8"
elif grep -q "not built: ONNX export needs libonnx-dev" "$tmp/onnx.log"; then
    echo "skip export --format onnx: $(cat "$tmp/onnx.log")"
else
    echo "FAIL export --format onnx:"; cat "$tmp/onnx.log"; fails=$((fails + 1))
fi
[ "$fails" -eq 0 ]
