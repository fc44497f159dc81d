#!/usr/bin/env python3
"""Two training runs' loss curves side by side (metrics.jsonl of `mamba-slm train`): a markdown
table of train and val loss at every logged step, the largest differences, and an SVG with both
curves. Used for the GPU-against-CPU curve of docs/PERFORMANCE.md (issue 6).

    python bench/reference/compare_runs.py A/metrics.jsonl B/metrics.jsonl --labels cpu,cuda --svg out.svg
"""
import argparse
import json


def read(path):
    train, val = {}, {}
    for line in open(path):
        r = json.loads(line)
        if r.get("type") == "train":
            train[r["step"]] = r["loss"]
        elif r.get("type") == "eval":
            val[r["step"]] = r["loss"]
    return train, val


def svg(curves, labels, path, width=640, height=360, pad=48):
    steps = [s for c in curves for s in c]
    losses = [v for c in curves for v in c.values()]
    x0, x1, y0, y1 = min(steps), max(steps), min(losses), max(losses)
    sx = lambda s: pad + (s - x0) / max(x1 - x0, 1) * (width - 2 * pad)
    sy = lambda v: height - pad - (v - y0) / max(y1 - y0, 1e-9) * (height - 2 * pad)
    colours = ["#1f77b4", "#d62728"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" stroke="black"/>',
           f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{height - pad}" stroke="black"/>',
           f'<text x="{width / 2}" y="{height - 12}" text-anchor="middle">step</text>',
           f'<text x="14" y="{height / 2}" transform="rotate(-90 14 {height / 2})" text-anchor="middle">train loss</text>']
    for k in range(5):
        v = y0 + (y1 - y0) * k / 4
        out.append(f'<text x="{pad - 6}" y="{sy(v) + 4:.1f}" text-anchor="end">{v:.2f}</text>')
        s = x0 + (x1 - x0) * k / 4
        out.append(f'<text x="{sx(s):.1f}" y="{height - pad + 16}" text-anchor="middle">{s:.0f}</text>')
    for i, (c, label) in enumerate(zip(curves, labels)):
        pts = " ".join(f"{sx(s):.1f},{sy(c[s]):.1f}" for s in sorted(c))
        dash = ' stroke-dasharray="6 4"' if i else ""
        out.append(f'<polyline fill="none" stroke="{colours[i % 2]}" stroke-width="2"{dash} points="{pts}"/>')
        out.append(f'<text x="{width - pad - 90}" y="{pad + 16 * i}" fill="{colours[i % 2]}">{label}</text>')
    out.append("</svg>")
    open(path, "w").write("\n".join(out) + "\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--labels", default="a,b")
    ap.add_argument("--svg")
    args = ap.parse_args()
    la, lb = args.labels.split(",")
    (ta, va), (tb, vb) = read(args.a), read(args.b)
    print(f"| step | {la} train | {lb} train | {la} val | {lb} val |")
    print("|---|---|---|---|---|")
    for s in sorted(set(ta) | set(va)):
        cells = [f"{d[s]:.4f}" if s in d else "" for d in (ta, tb, va, vb)]
        print(f"| {s} | " + " | ".join(cells) + " |")
    common = sorted(set(ta) & set(tb))
    dt = max(abs(ta[s] - tb[s]) for s in common)
    rel = max(abs(ta[s] - tb[s]) / abs(ta[s]) for s in common)
    dv = max((abs(va[s] - vb[s]) for s in set(va) & set(vb)), default=float("nan"))
    print(f"\nmax |Δ train loss| {dt:.4f} (relative {rel:.2%}) over {len(common)} logged steps; max |Δ val loss| {dv:.4f}")
    if args.svg:
        svg([ta, tb], [la, lb], args.svg)


if __name__ == "__main__":
    main()
