#!/usr/bin/env bash
# End-to-end checks of `mamba-slm tokenizer train`. $1 = path to the mamba-slm binary.
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
check "help names the options" 0 "--vocab-size" -- "$bin" tokenizer train --help
check "trains" 0 "wrote .*tok.json: 600 tokens" -- \
    "$bin" tokenizer train --input "$data" --vocab-size 600 --special-tokens "<|endoftext|>" --out "$tmp/tok.json"
check "progress lines when stderr is not a terminal" 0 "reading: 100% 1\.1/1\.1 MB" -- \
    "$bin" tokenizer train --input "$data" --vocab-size 300 --out "$tmp/tok2.json"
check "llama3 style" 0 "\"type\": \"NFC\"" -- \
    bash -c "'$bin' tokenizer train --quiet --input '$data' --vocab-size 300 --pretokenizer llama3 \
             --out '$tmp/tok3.json' && cat '$tmp/tok3.json'"
check "same file for 1 and 2 threads" 0 "^same$" -- \
    bash -c "'$bin' --threads 1 tokenizer train --quiet --input '$data' --vocab-size 500 --out '$tmp/t1.json' &&
             '$bin' --threads 2 tokenizer train --quiet --input '$data' --vocab-size 500 --out '$tmp/t2.json' &&
             cmp '$tmp/t1.json' '$tmp/t2.json' && echo same"
check "missing input named" 1 "error: $tmp/none.txt: cannot open" -- \
    "$bin" tokenizer train --input "$data" "$tmp/none.txt" --out "$tmp/x.json"
check "vocab below 256 + specials" 1 "vocab size 256 is below the 256 byte symbols plus 1 special token" -- \
    "$bin" tokenizer train --input "$data" --vocab-size 256 --special-tokens "<s>" --out "$tmp/x.json"
check "unwritable output" 1 "error: $tmp/no/dir/x.json: cannot write" -- \
    "$bin" tokenizer train --input "$data" --out "$tmp/no/dir/x.json"
check "unknown pretokenizer" 105 "--pretokenizer" -- \
    "$bin" tokenizer train --input "$data" --pretokenizer bert
if python3 -c 'import tokenizers' 2>/dev/null; then
    check "HF tokenizers loads and round-trips" 0 "^ok$" -- python3 -c "
from tokenizers import Tokenizer
tok = Tokenizer.from_file('$tmp/tok.json')
text = 'Thou art more lovely and more temperate: 123 \u00e9\u00e8 \u4e2d\u6587\n'
ids = tok.encode(text).ids
assert tok.decode(ids) == text and tok.get_vocab_size() == 600 and tok.token_to_id('<|endoftext|>') == 0
print('ok')"
fi
[ "$fails" -eq 0 ]
