"""Draw the overhead benchmark's ratios as an SVG bar chart (no plotting library needed).

    .venv/bin/python bench/plot.py bench/results/2026-11-23/overhead_h2.json bench/results/2026-11-23/overhead_python.json -o docs/bench-overhead.svg
"""

from __future__ import annotations

import argparse
import json
import sys

MODES = [("none", "(0) no tracer", "#9e9e9e"), ("empty", "(a) empty probes", "#64b5f6"),
         ("full", "(b) apptrace", "#1565c0"), ("raw", "(c) --raw --capture-only", "#ffb74d")]


def svg(results: list[dict]) -> str:
    bar_w, gap, group_gap, height, top, left = 34, 6, 50, 260, 60, 60
    scale = 1.25  # the y axis runs to 1.25: noise can put the untraced pair above 1
    group_w = len(MODES) * (bar_w + gap)
    width = left + len(results) * (group_w + group_gap) + 180
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + top + 70}" '
           'font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="20" font-size="14" font-weight="bold">Throughput of the traced server '
           'relative to an identical untraced one (same run, A/B)</text>']
    for tick in (0, 0.25, 0.5, 0.75, 1.0, 1.25):
        y = top + height - tick / scale * height
        out.append(f'<line x1="{left - 5}" y1="{y}" x2="{width - 180}" y2="{y}" stroke="#e0e0e0"/>')
        out.append(f'<text x="{left - 10}" y="{y + 4}" text-anchor="end">{tick:.2f}</text>')
    for g, res in enumerate(results):
        x0 = left + g * (group_w + group_gap) + 10
        ratios = res["throughput_ratio_traced_over_untraced"]
        for i, (mode, _label, color) in enumerate(MODES):
            v = ratios.get(mode)
            if v is None:
                continue
            h = min(v, scale) / scale * height
            x = x0 + i * (bar_w + gap)
            out.append(f'<rect x="{x}" y="{top + height - h}" width="{bar_w}" height="{h}" fill="{color}"/>')
            out.append(f'<text x="{x + bar_w / 2}" y="{top + height - h - 4}" text-anchor="middle">{v:.2f}</text>')
        name = {"nghttpd": "nghttpd, HTTP/2", "python": "Python ssl, HTTP/1.1"}.get(res["server"], res["server"])
        out.append(f'<text x="{x0 + group_w / 2}" y="{top + height + 20}" text-anchor="middle">{name}</text>')
    lx = width - 170
    for i, (_mode, label, color) in enumerate(MODES):
        out.append(f'<rect x="{lx}" y="{top + i * 20}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{lx + 18}" y="{top + i * 20 + 10}">{label}</text>')
    out.append(f'<text x="{left}" y="{top + height + 45}" fill="#616161">goal: (b) at least 0.95 x (a); '
               '(0) shows the noise between two identical servers</text>')
    out.append("</svg>")
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", help="JSON written by bench_overhead.py --json")
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args()
    results = [json.load(open(p)) for p in args.results]
    with open(args.output, "w") as f:
        f.write(svg(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
