"""The report's charts as inline SVG strings: line charts over time, a log-scale latency histogram, sparklines.

Drawn here rather than by a charting library so that the HTML page loads nothing from anywhere.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from dataclasses import dataclass
from typing import Any

from apptrace.query.fmt import fmt_ms


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    count = max(1, math.ceil((hi - start) / step - 1e-9))
    return [round(start + i * step, 10) for i in range(count + 1)]


def _time_ticks(t0: float, t1: float, n: int = 6) -> list[float]:
    span = max(t1 - t0, 1)
    steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
    step = next((s for s in steps if span / s <= n), 86400)
    first = math.ceil(t0 / step) * step
    return [first + i * step for i in range(int((t1 - first) // step) + 1)]


def _time_label(t: float, span: float) -> str:
    d = dt.datetime.fromtimestamp(t, dt.UTC)
    if span > 2 * 86400:
        return d.strftime("%m-%d %H:%M")
    return d.strftime("%H:%M:%S") if span < 600 else d.strftime("%H:%M")


def _legend(items: list[tuple[str, str, str]], x0: float, x1: float, y: float) -> tuple[str, float]:
    """Legend entries (label, color, dash) wrapped into rows from (x0, y); the SVG and the height used."""
    out, x, row = [], x0, 0
    for label, color, dash in items:
        w = 7 * len(label) + 30
        if x + w > x1 and x > x0:
            x, row = x0, row + 1
        yy = y + row * 16
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{x}" x2="{x + 16}" y1="{yy - 4}" y2="{yy - 4}" stroke="{color}" stroke-width="3"{d}/>'
                   f'<text x="{x + 20}" y="{yy}" class="lg">{html.escape(label)}</text>')
        x += w
    return "".join(out), (row + 1) * 16


@dataclass
class Series:
    label: str
    xs: list[float]
    ys: list[float | None]
    color: str
    dash: str = ""
    width: float = 2.0


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks for a log axis from lo to hi (both > 0): the powers of ten, with 2 and 5 between them when the
    range spans less than three decades."""
    d0, d1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if d1 == d0:
        d1 += 1
    steps = (1, 2, 5) if d1 - d0 < 3 else (1,)
    ticks = [m * 10.0 ** d for d in range(d0, d1 + 1) for m in steps]
    inside = [t for t in ticks if lo <= t <= hi]
    below = [t for t in ticks if t < lo]
    above = [t for t in ticks if t > hi]
    return ([below[-1]] if below else []) + inside + ([above[0]] if above else [])


def line_chart(series: list[Series], *, title: str, y_fmt: Any, width: int = 560, height: int = 240,
               x_range: tuple[float, float] | None = None, y_max: float | None = None, legend: bool = True,
               log_y: bool = False) -> str:
    """Lines over time. ``log_y``: a log axis (latencies spread over decades; values of 0 or less are not drawn)."""
    ml, mr, mt, mb = 64, 16, 34, 34
    legend_svg = ""
    if legend and sum(7 * len(s.label) + 30 for s in series) > width - ml - mr - 7 * len(title) - 30:
        legend_svg, used = _legend([(s.label, s.color, s.dash) for s in series], ml, width - mr, 40)
        mt += used
        height += used
        legend = False
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys if y is not None and not math.isnan(y) and (y > 0 or not log_y)]
    if not xs or not ys:
        return _empty_chart(title, width, height)
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 30, x1 + 30
    if log_y:
        ticks = log_ticks(min(ys), max(ys))
        lbot, ltop = math.log10(ticks[0]), math.log10(ticks[-1])

        def Y(y: float) -> float:
            return mt + ph - (math.log10(y) - lbot) / (ltop - lbot) * ph
    else:
        ticks = nice_ticks(0, y_max if y_max is not None else max(ys) * 1.08 or 1)
        ytop = ticks[-1]

        def Y(y: float) -> float:
            return mt + ph - (y / ytop) * ph if ytop else mt + ph

    def X(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
           f'role="img" aria-label="{html.escape(title)}">',
           f'<text x="{ml}" y="20" class="ct">{html.escape(title)}</text>', legend_svg]
    for t in ticks:
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>')
        out.append(f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" class="yl">{html.escape(y_fmt(t))}</text>')
    for t in _time_ticks(x0, x1):
        if not ml + 18 <= X(t) <= ml + pw - 24:  # a label that would be cut at the edge
            continue
        out.append(f'<line x1="{X(t):.1f}" x2="{X(t):.1f}" y1="{mt + ph}" y2="{mt + ph + 4}" class="axis"/>')
        out.append(f'<text x="{X(t):.1f}" y="{mt + ph + 18}" class="xl">{_time_label(t, x1 - x0)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    for s in series:
        pts, segs = [], []
        for x, y in zip(s.xs, s.ys, strict=True):
            if y is None or math.isnan(y) or (log_y and y <= 0):
                if pts:
                    segs.append(pts)
                pts = []
                continue
            pts.append(f"{X(x):.1f},{Y(y):.1f}")
        if pts:
            segs.append(pts)
        for seg in segs:
            if len(seg) == 1:
                cx, cy = seg[0].split(",")
                out.append(f'<circle cx="{cx}" cy="{cy}" r="2.5" fill="{s.color}"/>')
            else:
                dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
                out.append(f'<polyline points="{" ".join(seg)}" fill="none" stroke="{s.color}" '
                           f'stroke-width="{s.width}"{dash} stroke-linejoin="round"><title>'
                           f'{html.escape(s.label)}</title></polyline>')
    if legend:
        lx = ml + pw
        for s in reversed(series):
            w = 7 * len(s.label) + 26
            lx -= w
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            out.append(f'<line x1="{lx}" x2="{lx + 16}" y1="16" y2="16" stroke="{s.color}" stroke-width="3"{dash}/>'
                       f'<text x="{lx + 20}" y="20" class="lg">{html.escape(s.label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _empty_chart(title: str, width: int, height: int) -> str:
    return (f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f'<text x="16" y="20" class="ct">{html.escape(title)}</text>'
            f'<text x="{width / 2}" y="{height / 2}" class="xl">no data</text></svg>')


def histogram_chart(groups: list[tuple[str, dict[int, int], str, str]], *, title: str, bins_per_decade: int,
                    width: int = 1140, height: int = 300) -> str:
    """Latency distribution on a log axis: one translucent step area per group (label, {bin b: count}, colour,
    dash), where bin b holds the latencies (ns) from 10^(b/bins_per_decade) up to the next bin."""
    ml, mr, mt, mb = 64, 16, 34, 34
    legend_svg, used = _legend([(g[0], g[2], g[3]) for g in groups], ml, width - mr, 40)
    mt += used
    height += used
    pw, ph = width - ml - mr, height - mt - mb
    bins = [b for _, h, _, _ in groups for b in h]
    if not bins:
        return _empty_chart(title, width, height)
    k = bins_per_decade
    b0, b1 = min(bins), max(bins) + 1
    d0, d1 = math.floor(b0 / k), math.ceil(b1 / k)
    fracs = [{b: n / max(sum(h.values()), 1) for b, n in h.items()} for _, h, _, _ in groups]
    ytop = nice_ticks(0, max(max(f.values()) for f in fracs) * 1.08)[-1]

    def X(b: float) -> float:
        return ml + (b / k - d0) / (d1 - d0) * pw

    def Y(y: float) -> float:
        return mt + ph - y / ytop * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
           f'<text x="{ml}" y="20" class="ct">{html.escape(title)}</text>', legend_svg]
    for t in nice_ticks(0, ytop):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" class="yl">{t * 100:.0f}%</text>')
    for d in range(d0, d1 + 1):
        x = X(d * k)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{mt + ph + 18}" class="xl">{fmt_ms(10 ** d / 1e6)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    for (label, _, color, dash), f in zip(groups, fracs, strict=True):
        pts = [f"{X(b0):.1f},{Y(0):.1f}"]
        for b in range(b0, b1):
            y = Y(f.get(b, 0.0))
            pts.append(f"{X(b):.1f},{y:.1f}")
            pts.append(f"{X(b + 1):.1f},{y:.1f}")
        pts.append(f"{X(b1):.1f},{Y(0):.1f}")
        d = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.08" stroke="{color}" '
                   f'stroke-width="1.8"{d}><title>{html.escape(label)}</title></polygon>')
    out.append("</svg>")
    return "".join(out)


def sparkline(ys: list[float | None], color: str, width: int = 120, height: int = 26) -> str:
    vals = [y for y in ys if y is not None and not math.isnan(y)]
    if len(vals) < 2:
        return ""
    top = max(vals) or 1
    n = len(ys)
    pts = [f"{i / (n - 1) * (width - 2) + 1:.1f},{height - 2 - (y / top) * (height - 4):.1f}"
           for i, y in enumerate(ys) if y is not None and not math.isnan(y)]
    return (f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}"><polyline points="'
            f'{" ".join(pts)}" fill="none" stroke="{color}" stroke-width="1.5"/></svg>')
