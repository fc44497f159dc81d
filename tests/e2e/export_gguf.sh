#!/usr/bin/env bash
# `mamba-slm export --format gguf`: the small trained HF fixture (Bamba → granitehybrid) at every
# type, read back by our own loader and, when the `gguf` Python package is installed, by llama.cpp's
# gguf-py; the HF Mamba-1 and Jamba fixtures; and one-line refusals. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
fixtures="$(cd "$(dirname "$0")/.." && pwd)/parity/fixtures"
source "$(dirname "$0")/lib/check.sh"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
romeo="82 79 77 69 79 58 10"

check "--help lists the types" 0 "q8_0" -- "$bin" export --help
for t in f32 f16 q8_0 q4_0; do
    check "trained model, $t" 0 "llama.cpp arch granitehybrid" -- "$bin" export --format gguf --type "$t" \
        --model "$fixtures/trained" --out "$tmp/trained-$t.gguf"
    check "the $t file loads and generates" 0 "^[0-9 ]+$" -- "$bin" generate --model "$tmp/trained-$t.gguf" \
        --prompt-ids "$romeo" --max-new-tokens 8
done
check "q8_0 keeps rows of 48 in F16 and says so" 0 "kept in F16: its rows hold 48 values" -- "$bin" export \
    --format gguf --type q8_0 --model "$fixtures/trained" --out "$tmp/trained-q8_0.gguf"
check "same greedy tokens from the f32 file as from the HF directory" 0 "" -- bash -c "[ \"\$('$bin' generate \
    --model '$tmp/trained-f32.gguf' --prompt-ids '$romeo' 2>/dev/null)\" = \"\$('$bin' generate --model '$fixtures/trained' \
    --prompt-ids '$romeo' 2>/dev/null)\" ]"
check "HF Mamba-1 fixture" 0 "arch mamba," -- "$bin" export --format gguf --model "$fixtures/mamba1" --out "$tmp/m1.gguf"
check "HF Jamba fixture" 0 "arch jamba," -- "$bin" export --format gguf --model "$fixtures/jamba" --out "$tmp/j.gguf"
check "Mamba-2 with a dt clamp is refused" 1 "mamba.dt_limit = \[0, 0.1\].*llama.cpp has no architecture" -- \
    "$bin" export --format gguf --model "$fixtures/mamba2" --out "$tmp/m2.gguf"
check "an unknown --type is refused" 105 "type" -- "$bin" export --format gguf --type q5_k --model \
    "$fixtures/trained" --out "$tmp/x.gguf"
check "a missing model is named" 1 "nowhere" -- "$bin" export --format gguf --model /nowhere --out "$tmp/x.gguf"
printf 'GGUF\3\0\0\0' > "$tmp/short.gguf"
check "a truncated file is refused in one line" 1 "short.gguf: truncated" -- "$bin" generate --model "$tmp/short.gguf" \
    --prompt-ids 1

if python3 -c 'import gguf' 2>/dev/null; then
    for f in "$tmp"/trained-*.gguf "$tmp/m1.gguf" "$tmp/j.gguf"; do
        check "gguf-py reads $(basename "$f")" 0 "^ok" -- python3 -c "
import sys, gguf
r = gguf.GGUFReader(sys.argv[1])
arch = r.fields['general.architecture'].contents()
assert arch in ('granitehybrid', 'mamba', 'jamba'), arch
names = {t.name for t in r.tensors}
assert 'token_embd.weight' in names and 'output_norm.weight' in names, names
for t in r.tensors:
    assert t.n_bytes == len(t.data.tobytes()), t.name
print('ok', arch, len(names))" "$f"
    done
else
    echo "skip: the gguf Python package is not installed (gguf-py cross-check)"
fi
[ "$fails" -eq 0 ]
