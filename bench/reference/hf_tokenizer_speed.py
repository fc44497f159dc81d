#!/usr/bin/env python3
"""Anchor for bench_tokenizer: HF tokenizers' encode throughput in MB/s on the same text, split into
the same lines, one thread (encode_batch with TOKENIZERS_PARALLELISM=false, RAYON_NUM_THREADS=1)
and all threads (encode_batch on rayon's default pool). Prints rows in bench_tokenizer's table format.

    python3 bench/reference/hf_tokenizer_speed.py [TEXT_FILE] [--tokenizers a.json,b.json] [--min-seconds 2]
"""
import argparse
import os
import subprocess
import sys
import time


def time_per_call(fn, min_seconds):
    fn()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return elapsed / calls


def measure(args):
    """Runs in a child process: the thread settings must be in place before tokenizers starts."""
    from tokenizers import Tokenizer
    with open(args.text, "rb") as f:
        data = f.read()
    parts = data.decode("utf-8", errors="replace").split("\n")  # lines as bench_tokenizer cuts them
    lines = [p + "\n" for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    tok = Tokenizer.from_file(args.measure)
    seconds = time_per_call(lambda: tok.encode_batch(lines, add_special_tokens=False), args.min_seconds)
    print(len(data) / 1e6 / seconds)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("text", nargs="?", default="../shared/data/wikitext2-valid.txt")
    p.add_argument("--tokenizers",
                   default="tests/parity/fixtures/tokenizers/gpt2.json,tests/parity/fixtures/tokenizers/llama3.json")
    p.add_argument("--min-seconds", type=float, default=2.0)
    p.add_argument("--measure", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.measure:
        measure(args)
        return
    import tokenizers
    threads = os.cpu_count()
    print(f"text: {args.text}; tokenizers {tokenizers.__version__}; threads: {threads}\n")
    print(f"| tokenizer | implementation | 1 thread MB/s | {threads} threads MB/s | ids |")
    print("| --- | --- | ---: | ---: | ---: |")
    for path in args.tokenizers.split(","):
        rates = []
        for env in ({"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1"}, {"TOKENIZERS_PARALLELISM": "true"}):
            out = subprocess.run([sys.executable, __file__, args.text, "--measure", path, "--min-seconds",
                                  str(args.min_seconds)], env={**os.environ, **env}, check=True,
                                 capture_output=True, text=True).stdout
            rates.append(float(out))
        print(f"| {os.path.basename(path)} | HF tokenizers | {rates[0]:.1f} | {rates[1]:.1f} | |")


if __name__ == "__main__":
    main()
