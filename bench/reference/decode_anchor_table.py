#!/usr/bin/env python3
"""Joins the raw outputs of scripts/bench_decode_anchors.sh run (bench_decode, llama-bench,
llama-batched-bench and hf_generate_speed.py, RUNS rounds of each) into the markdown table of
docs/PERFORMANCE.md: every cell is the median over the rounds.

    python bench/reference/decode_anchor_table.py /tmp/mslm-anchors/results

Rows pair the same precision: our f32 weights with llama.cpp's F32, our bf16 with its BF16 and F16
(16-bit weights, the same bytes per token), our int8 (per-row absmax weights, per-token int8
activations) with its Q8_0 (per-32 block scales on weights and activations).
"""
import glob
import json
import os
import re
import statistics
import sys
from collections import defaultdict

# (our dtype, llama.cpp precision) pairs, in table order.
PAIRS = [("f32", "f32"), ("bf16", "bf16"), ("bf16", "f16"), ("int8", "q8_0")]


def md_rows(path):
    for line in open(path):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        # ours: | preset | params | dtype | threads | ...; hf: | model | params | threads | ...
        if len(cells) > 4 and re.fullmatch(r"\d+", cells[3]) and cells[2] in ("f32", "bf16", "int8"):
            yield cells
        elif len(cells) > 4 and re.fullmatch(r"\d+", cells[2]):
            yield cells[:2] + ["f32"] + cells[2:]


def jsonl(path):
    return [json.loads(line) for line in open(path) if line.startswith("{")]


def main():
    root = sys.argv[1]
    runs = sorted(glob.glob(os.path.join(root, "run*")))
    cells = defaultdict(list)  # (source, model, precision, threads, what) -> values over rounds
    params = {}
    loads = defaultdict(list)  # "start" (each preset's start) / "during" (sampled every 30 s) -> 1-min loads
    for run in runs:
        for name, what in (("machine.txt", "start"), ("load.txt", "during")):
            path = os.path.join(run, name)
            for line in open(path) if os.path.exists(path) else []:
                m = re.search(r"load average: ([\d.]+)", line)
                if m and (what == "during" or " start:" in line):
                    loads[what].append(float(m.group(1)))
        for c in md_rows(os.path.join(run, "ours.md")):
            key = (c[0], c[2], int(c[3]))
            params[c[0]] = c[1]
            for what, v in zip(("pp", "b1", "b8"), c[5:8]):
                cells[("ours", *key, what)].append(float(v))
        if os.path.exists(os.path.join(run, "hf.md")):
            for c in md_rows(os.path.join(run, "hf.md")):
                key = (c[0].split(" ")[0], "f32", int(c[3]))
                for what, v in zip(("pp", "b1", "b8"), c[5:8]):
                    cells[("hf", *key, what)].append(float(v))
        for path in glob.glob(os.path.join(run, "llama-*.jsonl")):
            m = re.fullmatch(r"llama-(pp|tg|b8)-(.+)-(f32|f16|bf16|q8_0)(?:-t\d+)?\.jsonl", os.path.basename(path))
            kind, model, prec = m.groups()
            for r in jsonl(path):
                if kind == "b8":
                    cells[("llama", model, prec, r["n_threads"], "b8")].append(r["speed_tg"])
                else:
                    cells[("llama", model, prec, r["n_threads"], "pp" if kind == "pp" else "b1")].append(r["avg_ts"])

    def med(*key):
        v = cells.get(key)
        return statistics.median(v) if v else None

    def fmt(x):
        return "—" if x is None else (f"{x:.0f}" if x >= 100 else f"{x:.1f}")

    def ratio(a, b):
        return "—" if a is None or b is None else f"{a / b:.2f}×"

    models = list(dict.fromkeys(k[1] for k in cells))
    threads = sorted({k[3] for k in cells})
    # A round shorter than 30 s (one small preset) has no sample during it.
    during = (f"median {statistics.median(loads['during']):.2f}, max {max(loads['during']):.2f}"
              if loads["during"] else "none (the rounds were shorter than 30 s)")
    print(f"Rounds: {len(runs)}. Load average (1 min) when a preset's block started: "
          f"{min(loads['start']):.2f}–{max(loads['start']):.2f}; sampled every 30 s during the rounds: "
          f"{during}.\n")
    print("| model | params | threads | ours / llama.cpp precision | ours prefill | ours decode b=1 | ours decode b=8 | "
          "llama.cpp prefill | llama.cpp decode b=1 | llama.cpp decode b=8 | HF prefill | HF decode b=1 | "
          "HF decode b=8 | ours / llama.cpp prefill | ours / llama.cpp decode b=1 | ours / llama.cpp decode b=8 |")
    print("|---|---|---|---|" + "---:|" * 12)
    for model in models:
        for th in threads:
            hf = [med("hf", model, "f32", th, w) for w in ("pp", "b1", "b8")]
            first = True
            for mine, prec in PAIRS:
                ours = [med("ours", model, mine, th, w) for w in ("pp", "b1", "b8")]
                llama = [med("llama", model, prec, th, w) for w in ("pp", "b1", "b8")]
                if all(x is None for x in llama + ours):
                    continue
                row = [model if first else "", params.get(model, "") if first else "", str(th) if first else "",
                       f"{mine} / {prec.upper()}"]
                row += [fmt(x) for x in ours]
                row += [fmt(x) for x in llama]
                row += [fmt(x) if first else "" for x in hf]
                row += [ratio(a, b) for a, b in zip(ours, llama)]
                print("| " + " | ".join(row) + " |")
                first = False

    # How much the rounds disagree: the largest (max - min) / median of any cell of each source.
    spread = defaultdict(float)
    for key, v in cells.items():
        if len(v) > 1:
            spread[key[0]] = max(spread[key[0]], (max(v) - min(v)) / statistics.median(v))
    print("\nLargest spread of a cell over the rounds ((max - min) / median): " +
          ", ".join(f"{s} {100 * x:.0f} %" for s, x in sorted(spread.items())))


if __name__ == "__main__":
    main()
