#!/usr/bin/env python3
"""Tokenizer parity fixtures, made with Hugging Face `tokenizers` only.

    python3 tests/parity/make_tokenizer_fixtures.py            # writes tests/parity/fixtures/tokenizers/
    python3 tests/parity/make_tokenizer_fixtures.py encode TOKENIZER_JSON INPUT OUT [--special]
    python3 tests/parity/make_tokenizer_fixtures.py batch TOKENIZER_JSON TEXTS_JSON OUT_JSON

Writes gpt2.json (ByteLevel pre-tokenizer, vocab 4096) and llama3.json (NFC, Llama-3 Split regex then
ByteLevel without regex, vocab 6000), both trained with BpeTrainer on tinyshakespeare +
wikitext2-valid; edge_cases.txt (bytes, with invalid UTF-8 on purpose); and expected.json with, for
each tokenizer x corpus, the id count, SHA-256 of the ids as little-endian uint32 and the first 64
ids. Inputs are read as bytes and decoded with errors='replace' (the way the C++ tokenizer treats
invalid UTF-8), then encoded with add_special_tokens=False.

The `encode` / `batch` modes serve the C++ tests' live comparison: ids and text travel
as files (uint32 little-endian ids; raw bytes; `batch` reads a JSON list of texts and writes, per
text, the ids without and with special tokens and both decodes).
"""
import hashlib
import json
import os
import re
import struct
import sys

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
OUT_DIR = os.path.join(HERE, "fixtures", "tokenizers")
# The corpora live next to the checkout (../shared/data), as for the C++ tests; MSLM_DATA_DIR overrides.
DATA_DIR = os.environ.get("MSLM_DATA_DIR", os.path.join(HERE, "..", "..", "..", "shared", "data"))

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CORPORA = ["tinyshakespeare.txt", "wikitext2-test.txt", "wikitext2-valid.txt", "edge_cases.txt"]
N_FIRST = 64


def read_text(path):
    with open(path, "rb") as f:
        return f.read().decode("utf-8", errors="replace")


def ids_digest(ids):
    return hashlib.sha256(struct.pack(f"<{len(ids)}I", *ids)).hexdigest()


def train_gpt2(files):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    return tok


def train_llama3(files):
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=6000, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train(files, trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", bos)])
    return tok


def edge_cases():
    """Bytes that exercise scripts, emoji, normalization, whitespace and invalid UTF-8."""
    lines = [
        "Hello, World! HELLO WORLD. hello world.",
        "IT'S THEY'LL WE'VE I'M YOU'D SHE'S DON'T it's they'll we've i'm you'd",
        "Chinese: 我爱自然语言处理。日本語のテキスト、カタカナとひらがな。한국어 문장입니다.",
        "Arabic: مرحبا بالعالم، كيف حالك؟ Hindi: नमस्ते दुनिया, आप कैसे हैं? Thai: สวัสดีชาวโลก",
        "Cyrillic: Привет, мир! ЁЖИК в тумане. Greek: Καλημέρα κόσμε.",
        "Emoji: 😀😃😄 👍🏽👍🏿 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 ❤️ 🧑🏻‍💻",
        # Decomposed e + combining acute (NFC composes it), precomposed for contrast, and a stack.
        "Combining: cafe\u0301 caf\u00e9 A\u030a \u212b n\u0303o\u0301 e\u0323\u0302 \u1e9b\u0323",
        "CRLF line\r\nnext\r\n\r\nafter blank\rlone CR",
        "Tabs:\tone\t\ttwo\t \t three",
        "Spaces:" + " " * 40 + "end   \n   \n" + " " * 7 + "indented",
        "Unicode spaces:\u00a0nbsp\u3000ideographic\u2003em\u2028line-sep\u0085nel\u200bzwsp",
        "Digits: 1234567 12345678901234567890 3.14159 1,000,000 ١٢٣٤ ०१२३",
        "Long digits: " + "9876543210" * 30,
        "Long word: " + "supercalifragilistic" * 25,
        "Code: def f(x):\n    return x**2 + 1  # comment\nint main() { return a->b[i] != 0 && c <= d; }",
        "JSON: {\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
        "Specials: <|endoftext|> text<|endoftext|>more <|begin_of_text|>x<|end_of_text|> <|endoftext|<|",
        "Punctuation runs: !!!??? ... --- *** ''' \"\"\" ''s ’s ‘quoted’ «guillemets»",
        "Mixed: naïve résumé Ünïcödé ﬁ ligature Ⅻ ½ ² ℌ",
    ]
    text = ("\n".join(lines) + "\n").encode("utf-8")
    invalid = (b"Invalid: lone \xff byte, truncated \xe2\x82 3-byte, overlong \xc0\xaf and \xe0\x80\xaf,"
               b" surrogate \xed\xa0\x80, too big \xf4\x90\x80\x80, stray \x80\x80 continuation,"
               b" truncated 4-byte \xf0\x9f\x98 end\n")
    return text + invalid + "Tail: last line without newline 😀".encode("utf-8") + b"\xf0\x9f"


def make():
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "edge_cases.txt"), "wb") as f:
        f.write(edge_cases())
    files = [os.path.join(DATA_DIR, "tinyshakespeare.txt"), os.path.join(DATA_DIR, "wikitext2-valid.txt")]
    toks = {"gpt2": train_gpt2(files), "llama3": train_llama3(files)}
    expected = {}
    for name, tok in toks.items():
        tok.save(os.path.join(OUT_DIR, f"{name}.json"))
        tok = Tokenizer.from_file(os.path.join(OUT_DIR, f"{name}.json"))
        entry = {}
        for corpus in CORPORA:
            path = os.path.join(OUT_DIR if corpus == "edge_cases.txt" else DATA_DIR, corpus)
            text = read_text(path)
            ids = tok.encode(text, add_special_tokens=False).ids
            entry[corpus] = {"count": len(ids), "sha256": ids_digest(ids), "first": ids[:N_FIRST]}
            if corpus == "edge_cases.txt":
                decoded = tok.decode(ids, skip_special_tokens=False).encode("utf-8")
                entry[corpus]["decoded_sha256"] = hashlib.sha256(decoded).hexdigest()
                entry[corpus]["decoded_bytes"] = len(decoded)
                entry[corpus]["decoded_equals_input"] = decoded == text.encode("utf-8")
                entry[corpus]["with_special_first"] = tok.encode(text, add_special_tokens=True).ids[:N_FIRST]
        expected[name] = entry
    text = json.dumps(expected, indent=1)
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)  # id lists on one line
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        f.write(text + "\n")


def main():
    if len(sys.argv) == 1:
        make()
    elif sys.argv[1] == "encode":
        tok = Tokenizer.from_file(sys.argv[2])
        ids = tok.encode(read_text(sys.argv[3]), add_special_tokens="--special" in sys.argv).ids
        with open(sys.argv[4], "wb") as f:
            f.write(struct.pack(f"<{len(ids)}I", *ids))
    elif sys.argv[1] == "batch":
        tok = Tokenizer.from_file(sys.argv[2])
        with open(sys.argv[3], encoding="utf-8") as f:
            texts = json.load(f)
        results = []
        for text in texts:
            ids = tok.encode(text, add_special_tokens=False).ids
            results.append({"ids": ids, "ids_special": tok.encode(text, add_special_tokens=True).ids,
                            "decoded": tok.decode(ids, skip_special_tokens=False),
                            "decoded_skip": tok.decode(ids, skip_special_tokens=True)})
        with open(sys.argv[4], "w", encoding="utf-8") as f:
            json.dump(results, f)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
