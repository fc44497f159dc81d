#!/usr/bin/env python3
"""Compares training runs' metrics.jsonl files (mamba-slm's, or torch_train.py's in the same shape).

Prints a markdown table of train and val loss side by side at the logged steps (every k-th train
row), the differences against the first run, the largest |difference| of each run against the
first over all logged steps, each run's tokens/s (median over its log windows, which is robust
to the windows that include an eval) and final val loss; optionally writes an SVG of the curves.
numpy only.

    compare_curves.py ours/metrics.jsonl torch/metrics.jsonl [more ...] --labels ours,torch \\
        [--every 10] [--svg curves.svg --title "tiny"]
"""
import argparse
import json

import numpy as np

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]


def read(path):
    train, val, tok_s = {}, {}, []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["type"] == "train" and r["loss"] is not None:
                train[r["step"]] = r["loss"]
                tok_s.append(r["tokens_per_s"])
            elif r["type"] == "eval" and r["loss"] is not None:
                val[r["step"]] = r["loss"]
    return train, val, float(np.median(tok_s))


def fmt(x):
    return "" if x is None else f"{x:.4f}"


def fmt_diff(x):
    return "" if x is None else f"{x:+.1e}"


def svg(runs, labels, title, path):
    """Top: every run's train (line) and val (circles) loss. Bottom: train loss minus the first run's."""
    W, L, R = 720, 72, 20
    x1 = max(s for tr, va, _ in runs for s in list(tr) + list(va))
    losses = [v for tr, va, _ in runs for v in list(tr.values()) + list(va.values())]
    base = runs[0][0]
    diffs = [{s: tr[s] - base[s] for s in tr if s in base} for tr, _, _ in runs[1:]]
    dmax = max([abs(v) for d in diffs for v in d.values()] + [1e-6])
    dmax = float(f"{dmax * 1.1:.1g}")

    def X(s):
        return L + (W - L - R) * s / x1

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="560" font-family="sans-serif" '
           f'font-size="12"><rect width="{W}" height="560" fill="white"/>',
           f'<text x="{W / 2}" y="18" text-anchor="middle" font-size="14">{title}</text>']

    def panel(top, bottom, lo, hi, ticks, tick_fmt, series):
        def Y(v):
            return top + (bottom - top) * (hi - v) / (hi - lo)
        for v in ticks:
            out.append(f'<line x1="{L}" x2="{W - R}" y1="{Y(v):.1f}" y2="{Y(v):.1f}" stroke="#ddd"/>'
                       f'<text x="{L - 6}" y="{Y(v) + 4:.1f}" text-anchor="end">{v:{tick_fmt}}</text>')
        for i, points, circles in series:
            c, dash = COLORS[i % len(COLORS)], ' stroke-dasharray="5,3"' if i else ""
            pts = " ".join(f"{X(s):.1f},{Y(v):.1f}" for s, v in sorted(points.items()))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{c}" stroke-width="1.2"{dash}/>')
            for s, v in sorted(circles.items()):
                out.append(f'<circle cx="{X(s):.1f}" cy="{Y(v):.1f}" r="{4 - i}" fill="none" stroke="{c}"/>')

    y0, y1 = np.floor(min(losses) * 2) / 2, np.ceil(max(losses) * 2) / 2
    panel(30, 330, y0, y1, np.arange(y0, y1 + 1e-9, 0.5), ".1f", [(i, tr, va) for i, (tr, va, _) in enumerate(runs)])
    panel(380, 520, -dmax, dmax, [-dmax, -dmax / 2, 0, dmax / 2, dmax], "+.1e",
          [(i + 1, d, {}) for i, d in enumerate(diffs)])
    out.append(f'<text x="14" y="180" transform="rotate(-90 14 180)" text-anchor="middle">loss (nats/token)</text>'
               f'<text x="{L}" y="366">train loss minus {labels[0]}\'s</text>')
    for s in np.linspace(0, x1, 6):
        out.append(f'<text x="{X(s):.1f}" y="{536}" text-anchor="middle">{int(s)}</text>')
    out.append(f'<text x="{(L + W - R) / 2}" y="554" text-anchor="middle">step</text>')
    for i, label in enumerate(labels):
        c, dash, ly = COLORS[i % len(COLORS)], ' stroke-dasharray="5,3"' if i else "", 44 + 16 * i
        out.append(f'<line x1="{W - R - 200}" x2="{W - R - 175}" y1="{ly - 4}" y2="{ly - 4}" stroke="{c}"{dash}/>'
                   f'<text x="{W - R - 170}" y="{ly}">{label}</text>')
    out.append(f'<text x="{W - R - 200}" y="{44 + 16 * len(labels)}" fill="#555">lines train, circles val</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("metrics", nargs="+")
    ap.add_argument("--labels", help="comma-separated, one per file (default: the paths)")
    ap.add_argument("--every", type=int, default=1, help="print every k-th train row (val rows always)")
    ap.add_argument("--svg")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    labels = a.labels.split(",") if a.labels else a.metrics
    assert len(labels) == len(a.metrics), "one label per metrics file"
    runs = [read(p) for p in a.metrics]
    base_train, base_val, _ = runs[0]

    head = ["step"] + [f"{l} train" for l in labels] + [f"Δ {l}" for l in labels[1:]]
    head += [f"{l} val" for l in labels] + [f"Δ {l} val" for l in labels[1:]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---:|" * len(head))
    train_steps = sorted(base_train)
    shown = set(train_steps[a.every - 1::a.every]) | {train_steps[-1]} | set(base_val)
    for s in sorted(shown):
        tr = [r[0].get(s) for r in runs]
        va = [r[1].get(s) for r in runs]
        d_tr = [None if tr[0] is None or t is None else t - tr[0] for t in tr[1:]]
        d_va = [None if va[0] is None or v is None else v - va[0] for v in va[1:]]
        row = [str(s)] + [fmt(x) for x in tr] + [fmt_diff(x) for x in d_tr] + [fmt(x) for x in va] + [fmt_diff(x) for x in d_va]
        print("| " + " | ".join(row) + " |")
    print()
    for label, (tr, va, tok_s) in zip(labels, runs):
        line = f"{label}: {tok_s:.0f} tokens/s (median over log windows), final val loss {va[max(va)]:.4f}"
        if tr is not base_train:
            common = sorted(set(tr) & set(base_train))
            dt = np.array([tr[s] - base_train[s] for s in common])
            dv = np.array([va[s] - base_val[s] for s in sorted(set(va) & set(base_val))])
            line += (f"; vs {labels[0]}: max |Δ train| {np.abs(dt).max():.1e} (mean {dt.mean():+.1e}) over "
                     f"{len(common)} logged steps, max |Δ val| {np.abs(dv).max():.1e} over {len(dv)} evals")
        print(line)
    if a.svg:
        svg(runs, labels, a.title, a.svg)


if __name__ == "__main__":
    main()
