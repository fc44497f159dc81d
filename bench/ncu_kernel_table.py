#!/usr/bin/env python3
"""Per-kernel time table from Nsight Compute's CSV (one metric: gpu__time_duration.sum).

    ncu --clock-control none --metrics gpu__time_duration.sum --csv <program> > ncu.csv
    python3 bench/ncu_kernel_table.py ncu.csv [--step-end REGEX] [--top N]

With --step-end, only the kernels of the last complete step count: those after the second-to-last
launch whose name matches REGEX, through the last one (e.g. --step-end adamw for a training step).
Without it, every profiled kernel counts. Kernels are grouped by their name without template
arguments and launch parameters; times are serialized (ncu runs one kernel at a time), so they add up
to more than a step with overlapped launches takes.
"""
import argparse
import csv
import re
import sys
from collections import defaultdict

UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3, "second": 1e6, "s": 1e6}


def short_name(name: str) -> str:
    name = re.sub(r"\(.*$", "", name)  # drop the argument list
    depth, out = 0, []
    for ch in name:  # drop template arguments
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    name = "".join(out).strip()
    name = re.sub(r"^(void|[\w:]+\s+)(?=[\w:]+$)", "", name)
    return name.split("::")[-1] or name


def read_rows(path: str):
    rows = []
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]  # ncu's own messages are not CSV
    for rec in csv.DictReader(lines):
        if rec.get("Metric Name") != "gpu__time_duration.sum":
            continue
        unit = rec.get("Metric Unit", "nsecond")
        if unit not in UNIT_US:
            sys.exit(f"{path}: unknown time unit {unit!r}")
        value = float(rec["Metric Value"].replace(",", ""))
        rows.append((int(rec["ID"]), rec["Kernel Name"], value * UNIT_US[unit], rec.get("Grid Size", ""),
                     rec.get("Block Size", "")))
    rows.sort(key=lambda r: r[0])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--step-end", help="regex of the kernel that ends a step")
    ap.add_argument("--top", type=int, default=40)
    ap.add_argument("--sequence", action="store_true", help="also list every kernel in launch order")
    args = ap.parse_args()
    rows = read_rows(args.csv)
    if not rows:
        sys.exit(f"{args.csv}: no gpu__time_duration.sum rows")
    if args.step_end:
        ends = [i for i, r in enumerate(rows) if re.search(args.step_end, r[1])]
        if len(ends) < 2:
            sys.exit(f"{args.csv}: fewer than two launches match --step-end {args.step_end!r}")
        rows = rows[ends[-2] + 1:ends[-1] + 1]
    total = sum(r[2] for r in rows)
    if args.sequence:
        print("| # | kernel | grid | block | us |")
        print("|---:|---|---|---|---:|")
        for i, (_, name, us, grid, block) in enumerate(rows):
            print(f"| {i} | {short_name(name)} | {grid} | {block} | {us:.2f} |")
    groups = defaultdict(lambda: [0, 0.0])
    for _, name, us, _, _ in rows:
        g = groups[short_name(name)]
        g[0] += 1
        g[1] += us
    print(f"{len(rows)} kernels, {total:.1f} us serialized")
    print("| kernel | launches | total us | mean us | share |")
    print("|---|---:|---:|---:|---:|")
    for name, (n, us) in sorted(groups.items(), key=lambda kv: -kv[1][1])[:args.top]:
        print(f"| {name} | {n} | {us:.1f} | {us / n:.2f} | {100 * us / total:.1f}% |")


if __name__ == "__main__":
    main()
