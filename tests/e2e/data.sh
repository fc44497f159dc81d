#!/usr/bin/env bash
# End-to-end checks of `mamba-slm data prepare`. $1 = path to the mamba-slm binary.
set -uo pipefail
bin="$1"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
source "$(dirname "$0")/lib/check.sh"
mkdir -p "$tmp/corpus"
printf 'first document' >"$tmp/corpus/a.txt"
printf 'second' >"$tmp/corpus/b.txt"
printf 'third one' >"$tmp/corpus/c.txt"
prepare=("$bin" data prepare --source "$tmp/corpus" --tokenizer bytes --out "$tmp/shards" --val-fraction 0)
# One document per file: 3 EOTs + 14 + 6 + 9 bytes = 32 tokens, in one uint16 shard.
check "prepare bytes" 0 "train +3 documents +32 tokens +29 text bytes" -- "${prepare[@]}"
check "shard and manifest written" 0 "train_000000.bin" -- ls "$tmp/shards"
check "shard size: 1024 + 2 x 32 bytes" 0 "^1088$" -- stat -c %s "$tmp/shards/train_000000.bin"
check "re-run reuses" 0 "reused the shards" -- "${prepare[@]}"
touch "$tmp/corpus/b.txt"
check "a newer mtime alone still reuses" 0 "reused the shards" -- "${prepare[@]}"
printf 'changed' >"$tmp/corpus/b.txt"
check "a changed file rebuilds" 0 "rebuilt: inputs changed" -- "${prepare[@]}"
check "--force rebuilds" 0 "rebuilt: --force" -- "${prepare[@]}" --force
fixtures="$(cd "$(dirname "$0")/../parity/fixtures/tokenizers" && pwd)"
check "prepare with a tokenizer.json" 0 "train +3 documents" -- \
    "$bin" data prepare --source "$tmp/corpus" --tokenizer "$fixtures/gpt2.json" --out "$tmp/bpe" --val-fraction 0
check "a missing tokenizer.json is named" 1 "nope.json" -- \
    "$bin" data prepare --source "$tmp/corpus" --tokenizer "$tmp/nope.json" --out "$tmp/other"
check "bad --stopping" 105 "stopping" -- "${prepare[@]}" --stopping sometimes
check "data prepare --help" 0 "--val-fraction" -- "$bin" data prepare --help
[ "$fails" -eq 0 ] && echo "all passed" || echo "$fails failed"
exit $((fails > 0))
