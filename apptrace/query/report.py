"""`apptrace report`: per-service latency (p50/p90/p99), error rate and throughput across HTTP, gRPC, MySQL and
PostgreSQL for a time window — as a terminal table, JSON/CSV, or a self-contained HTML page with charts.

Errors: HTTP status >= 500, gRPC status other than 0, SQL responses with status 'ERR'.
The HTML page has no external resources: every chart is inline SVG drawn here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import html
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from apptrace.common.defaults import default_db
from apptrace.common.units import parse_duration
from apptrace.query.backend import QueryError, open_backend
from apptrace.query.px.compiler import sql_literal

BUCKETS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]
HIST_BINS_PER_DECADE = 8


def bucket_seconds(window_s: float, target: int = 60) -> int:
    for b in BUCKETS_S:
        if window_s / b <= target:
            return b
    return BUCKETS_S[-1]


def _endpoint_sql(proto: str) -> str:
    """What a SQL request was: the normalised statement (literals → ?)."""
    from apptrace.query.px.compiler import ExprCompiler
    from apptrace.query.px.expr import Call, Col

    return ExprCompiler({"req_body": "str"})(Call(f"normalize_{proto}", (Col("req_body"),)))


def events_sql(since_ns: int, services: list[str] | None = None, protocols: list[str] | None = None) -> str:
    """One stream of (protocol, service, role, time_, latency, failure) from the three event tables."""
    cutoff = f"make_timestamp_ns(epoch_ns(now()) - {int(since_ns)})"
    where = f"time_ >= {cutoff}"
    if services:
        where += f" AND service IN ({', '.join(sql_literal(s) for s in services)})"
    parts = []
    if not protocols or "http" in protocols:
        parts.append(
            "SELECT CASE WHEN grpc_status IS NOT NULL THEN 'grpc' ELSE 'http' END AS protocol, service, "
            "trace_role AS role, time_, latency, "
            "(coalesce(resp_status, 0) >= 500 OR coalesce(grpc_status, 0) <> 0) AS failure "
            f"FROM http_events WHERE {where}")
    for proto in ("mysql", "pgsql"):
        if not protocols or proto in protocols:
            parts.append(f"SELECT '{proto}' AS protocol, service, trace_role AS role, time_, latency, "
                         f"coalesce(resp_status = 'ERR', false) AS failure FROM {proto}_events WHERE {where}")
    return "\nUNION ALL\n".join(parts)


def summary_sql(ev: str) -> str:
    return (f"WITH ev AS ({ev})\n"
            "SELECT coalesce(service, '?') AS service, protocol, coalesce(role, '?') AS role, count(*) AS requests, "
            "CAST(sum(CAST(failure AS INTEGER)) AS BIGINT) AS errors, "
            "quantile_cont(latency, [0.5, 0.9, 0.99]::DOUBLE[]) AS q, "
            "epoch_ns(min(time_)) AS first_ns, epoch_ns(max(time_)) AS last_ns "
            "FROM ev GROUP BY ALL ORDER BY service, protocol, role")


def series_sql(ev: str, bucket_s: int) -> str:
    return (f"WITH ev AS ({ev})\n"
            "SELECT coalesce(service, '?') AS service, protocol, coalesce(role, '?') AS role, "
            f"epoch_ns(time_bucket(INTERVAL {bucket_s} SECOND, time_)) AS t, count(*) AS n, "
            "avg(CAST(failure AS DOUBLE)) AS err, quantile_cont(latency, [0.5, 0.9, 0.99]::DOUBLE[]) AS q "
            "FROM ev GROUP BY ALL ORDER BY t")


def hist_sql(ev: str) -> str:
    k = HIST_BINS_PER_DECADE
    return (f"WITH ev AS ({ev})\n"
            "SELECT coalesce(service, '?') AS service, protocol, coalesce(role, '?') AS role, "
            f"CAST(floor(log10(latency) * {k}) AS INTEGER) AS b, count(*) AS n "
            "FROM ev WHERE latency > 0 GROUP BY ALL ORDER BY b")


def endpoints_sql(since_ns: int, services: list[str] | None = None, protocols: list[str] | None = None) -> str:
    """Per (service, protocol, role, endpoint): requests, errors, p50, p99. HTTP groups on method and path and
    builds the label after aggregating (cheaper than a string per row); SQL groups on the normalised statement."""
    cutoff = f"make_timestamp_ns(epoch_ns(now()) - {int(since_ns)})"
    where = f"time_ >= {cutoff}"
    if services:
        where += f" AND service IN ({', '.join(sql_literal(s) for s in services)})"
    aggs = ("count(*) AS requests, CAST(sum(CAST(failure AS INTEGER)) AS BIGINT) AS errors, "
            "quantile_cont(latency, [0.5, 0.99]::DOUBLE[]) AS q")
    parts = []
    if not protocols or "http" in protocols:
        parts.append(
            "SELECT service, protocol, role, coalesce(req_method, '?') || ' ' || coalesce(req_path, '') AS endpoint, "
            "requests, errors, q FROM (SELECT coalesce(service, '?') AS service, "
            "CASE WHEN grpc_status IS NOT NULL THEN 'grpc' ELSE 'http' END AS protocol, "
            "coalesce(trace_role, '?') AS role, req_method, req_path, "
            + aggs.replace("failure", "(coalesce(resp_status, 0) >= 500 OR coalesce(grpc_status, 0) <> 0)")
            + f" FROM http_events WHERE {where} GROUP BY ALL)")
    for proto in ("mysql", "pgsql"):
        if not protocols or proto in protocols:
            parts.append(
                f"SELECT coalesce(service, '?') AS service, '{proto}' AS protocol, coalesce(trace_role, '?') AS role, "
                f"{_endpoint_sql(proto)} AS endpoint, "
                + aggs.replace("failure", "coalesce(resp_status = 'ERR', false)")
                + f" FROM {proto}_events WHERE {where} GROUP BY ALL")
    return ("SELECT service, protocol, role, endpoint, requests, errors, q[1] AS p50, q[2] AS p99 FROM ("
            + "\nUNION ALL\n".join(parts) + ")")


def losses_sql(since_ns: int, bucket_s: int) -> str:
    return ("SELECT epoch_ns(time_bucket(INTERVAL " + str(bucket_s) + " SECOND, time_)) AS t, "
            "CAST(sum(events) AS BIGINT) AS events, CAST(sum(lost_events) AS BIGINT) AS lost_events, "
            "CAST(sum(gap_bytes) AS BIGINT) AS gap_bytes, CAST(sum(parse_errors) AS BIGINT) AS parse_errors, "
            "CAST(sum(truncated_bytes) AS BIGINT) AS truncated_bytes "
            f"FROM capture_stats WHERE time_ >= make_timestamp_ns(epoch_ns(now()) - {int(since_ns)}) "
            "GROUP BY ALL ORDER BY t")


# -- the data ----------------------------------------------------------------------------------------------------
@dataclass
class Report:
    since: str
    window_s: float
    generated: float
    db: str
    summary: list[dict] = field(default_factory=list)
    series: list[dict] = field(default_factory=list)
    hist: list[dict] = field(default_factory=list)
    losses: list[dict] = field(default_factory=list)
    bucket_s: int = 60
    endpoints: list[dict] = field(default_factory=list)


def _key(r: dict) -> tuple[str, str, str]:
    return (r["service"], r["protocol"], r["role"])


def collect(backend: Any, since: str, db: str, services: list[str] | None = None,
            protocols: list[str] | None = None, charts: bool = False) -> Report:
    since_ns = parse_duration(since)
    ev = events_sql(since_ns, services, protocols)
    now_ns = time.time_ns()
    rows = backend.query_arrow(summary_sql(ev)).to_pylist()
    # the rate's window: from the window's start (or the first event, if later) to the last event — so a report
    # on a finished trace does not dilute its rates with the time since the tracer stopped
    first = min((r["first_ns"] for r in rows if r["first_ns"] is not None), default=now_ns)
    last = max((r["last_ns"] for r in rows if r["last_ns"] is not None), default=now_ns)
    window_s = max(1.0, (last - max(first, now_ns - since_ns)) / 1e9)
    for r in rows:
        q = r.pop("q") or [None, None, None]
        r["p50_ms"], r["p90_ms"], r["p99_ms"] = (None if v is None else v / 1e6 for v in q)
        r["error_rate"] = r["errors"] / r["requests"] if r["requests"] else 0.0
        r["rps"] = r["requests"] / window_s
        r.pop("first_ns"), r.pop("last_ns")
    rep = Report(since=since, window_s=window_s, generated=time.time(), db=db, summary=rows)
    if charts:
        rep.bucket_s = bucket_seconds(window_s)
        rep.series = backend.query_arrow(series_sql(ev, rep.bucket_s)).to_pylist()
        rep.hist = backend.query_arrow(hist_sql(ev)).to_pylist()
        rep.endpoints = backend.query_arrow(endpoints_sql(since_ns, services, protocols)).to_pylist()
    try:
        rep.losses = backend.query_arrow(losses_sql(since_ns, rep.bucket_s if charts else 86400 * 365)).to_pylist()
    except QueryError:
        rep.losses = []
    return rep


# -- formatting helpers ------------------------------------------------------------------------------------------
def fmt_ms(ms: float | None) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "–"
    if ms == 0:
        return "0"
    if ms < 1:
        return f"{ms * 1000:.0f}µs"
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    return f"{ms / 1000:.2f}s"


def fmt_rate(r: float) -> str:
    return f"{r:.3g}/s" if r < 100 else f"{r:,.0f}/s"


def fmt_pct(x: float) -> str:
    if x == 0:
        return "0%"
    return f"{x * 100:.2f}%" if x < 0.1 else f"{x * 100:.1f}%"


def fmt_count(n: int | None) -> str:
    return f"{(n or 0):,}"


def fmt_window(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


# -- terminal ----------------------------------------------------------------------------------------------------
def print_terminal(rep: Report, out: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = out or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 140)
    total = sum(r["requests"] for r in rep.summary)
    errors = sum(r["errors"] for r in rep.summary)
    title = (f"apptrace report — since {rep.since} ({fmt_window(rep.window_s)} of data) · {fmt_count(total)} "
             f"requests · {fmt_pct(errors / total if total else 0)} errors")
    t = Table(title=title, title_justify="left", header_style="bold cyan", row_styles=["", "dim"])
    for col, just in (("service", "left"), ("protocol", "left"), ("role", "left"), ("requests", "right"),
                      ("rate", "right"), ("p50", "right"), ("p90", "right"), ("p99", "right"),
                      ("errors", "right"), ("error rate", "right")):
        t.add_column(col, justify=just)  # type: ignore[arg-type]
    for r in rep.summary:
        er = r["error_rate"]
        style = "bold red" if er >= 0.05 else "yellow" if er >= 0.01 else "green"
        t.add_row(r["service"], r["protocol"], r["role"], fmt_count(r["requests"]), fmt_rate(r["rps"]),
                  fmt_ms(r["p50_ms"]), fmt_ms(r["p90_ms"]), fmt_ms(r["p99_ms"]), fmt_count(r["errors"]),
                  Text(fmt_pct(er), style=style))
    if not rep.summary:
        console.print(f"No HTTP, gRPC, MySQL or PostgreSQL events in the last {rep.since} in {rep.db}.")
    else:
        console.print(t)
    lost = sum(r["lost_events"] or 0 for r in rep.losses)
    events = sum(r["events"] or 0 for r in rep.losses)
    if rep.losses:
        gap = sum(r["gap_bytes"] or 0 for r in rep.losses)
        perr = sum(r["parse_errors"] or 0 for r in rep.losses)
        style = "red" if lost else "green"
        console.print(Text(f"capture: {fmt_count(events)} events, {fmt_count(lost)} lost in the ring buffer, "
                           f"{fmt_count(gap)} gap bytes, {fmt_count(perr)} parse errors", style=style))


# -- HTML / SVG --------------------------------------------------------------------------------------------------
PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#17becf", "#bcbd22", "#7f7f7f", "#1f3a93", "#c0392b", "#16a085", "#8e44ad"]


def _nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
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


def line_chart(series: list[Series], *, title: str, y_fmt: Any, width: int = 560, height: int = 240,
               x_range: tuple[float, float] | None = None, y_max: float | None = None, legend: bool = True) -> str:
    ml, mr, mt, mb = 64, 16, 34, 34
    legend_svg = ""
    if legend and sum(7 * len(s.label) + 30 for s in series) > width - ml - mr - 7 * len(title) - 30:
        legend_svg, used = _legend([(s.label, s.color, s.dash) for s in series], ml, width - mr, 40)
        mt += used
        height += used
        legend = False
    pw, ph = width - ml - mr, height - mt - mb
    xs = [x for s in series for x in s.xs]
    ys = [y for s in series for y in s.ys if y is not None and not math.isnan(y)]
    if not xs or not ys:
        return _empty_chart(title, width, height)
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x0, x1 = x0 - 30, x1 + 30
    ticks = _nice_ticks(0, y_max if y_max is not None else max(ys) * 1.08 or 1)
    ytop = ticks[-1]

    def X(x: float) -> float:
        return ml + (x - x0) / (x1 - x0) * pw

    def Y(y: float) -> float:
        return mt + ph - (y / ytop) * ph if ytop else mt + ph

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
            if y is None or math.isnan(y):
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


def histogram_chart(groups: list[tuple[str, dict[int, int], str]], *, title: str, width: int = 1140,
                    height: int = 300) -> str:
    """Latency distribution on a log axis: one translucent step area per group (bins of 1/8 decade)."""
    ml, mr, mt, mb = 64, 16, 34, 34
    legend_svg, used = _legend([(g[0], g[2], "") for g in groups], ml, width - mr, 40)
    mt += used
    height += used
    pw, ph = width - ml - mr, height - mt - mb
    bins = [b for _, h, _ in groups for b in h]
    if not bins:
        return _empty_chart(title, width, height)
    k = HIST_BINS_PER_DECADE
    b0, b1 = min(bins), max(bins) + 1
    d0, d1 = math.floor(b0 / k), math.ceil(b1 / k)
    fracs = [{b: n / max(sum(h.values()), 1) for b, n in h.items()} for _, h, _ in groups]
    ytop = _nice_ticks(0, max(max(f.values()) for f in fracs) * 1.08)[-1]

    def X(b: float) -> float:
        return ml + (b / k - d0) / (d1 - d0) * pw

    def Y(y: float) -> float:
        return mt + ph - y / ytop * ph

    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img">',
           f'<text x="{ml}" y="20" class="ct">{html.escape(title)}</text>', legend_svg]
    for t in _nice_ticks(0, ytop):
        out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{Y(t):.1f}" y2="{Y(t):.1f}" class="grid"/>'
                   f'<text x="{ml - 6}" y="{Y(t) + 4:.1f}" class="yl">{t * 100:.0f}%</text>')
    for d in range(d0, d1 + 1):
        x = X(d * k)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{mt}" y2="{mt + ph}" class="grid"/>'
                   f'<text x="{x:.1f}" y="{mt + ph + 18}" class="xl">{fmt_ms(10 ** d / 1e6)}</text>')
    out.append(f'<line x1="{ml}" x2="{ml + pw}" y1="{mt + ph}" y2="{mt + ph}" class="axis"/>')
    for (label, _, color), f in zip(groups, fracs, strict=True):
        pts = [f"{X(b0):.1f},{Y(0):.1f}"]
        for b in range(b0, b1):
            y = Y(f.get(b, 0.0))
            pts.append(f"{X(b):.1f},{y:.1f}")
            pts.append(f"{X(b + 1):.1f},{y:.1f}")
        pts.append(f"{X(b1):.1f},{Y(0):.1f}")
        out.append(f'<polygon points="{" ".join(pts)}" fill="{color}" fill-opacity="0.08" stroke="{color}" '
                   f'stroke-width="1.8"><title>{html.escape(label)}</title></polygon>')
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


CSS = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--muted:#6b7280;--line:#e5e7eb;--bad:#d62728;--warn:#b7791f;--ok:#2f855a}
*{box-sizing:border-box}body{margin:0;background:var(--bg);color:var(--ink);
font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,Helvetica,Arial,sans-serif}
header{padding:22px 32px 8px}h1{margin:0;font-size:22px}h2{font-size:16px;margin:28px 0 10px}
.sub{color:var(--muted)}main{padding:0 32px 40px;max-width:1240px}
.cards{display:flex;gap:14px;flex-wrap:wrap;margin:14px 0}
.card{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 18px;min-width:170px}
.card .v{font-size:24px;font-weight:650}.card .k{color:var(--muted);font-size:12px;text-transform:uppercase;
letter-spacing:.04em}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);border-radius:10px;
overflow:hidden;width:100%}th,td{padding:7px 12px;border-bottom:1px solid var(--line);text-align:right;
white-space:nowrap}th{background:#f0f2f5;font-size:12px;color:#374151;text-transform:uppercase;letter-spacing:.03em}
td.l,th.l{text-align:left}code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace;color:#374151}tr:last-child td{border-bottom:none}.dot{display:inline-block;width:10px;height:10px;
border-radius:50%;margin-right:7px;vertical-align:middle}
.bad{color:var(--bad);font-weight:650}.warn{color:var(--warn);font-weight:600}.ok{color:var(--ok)}
.grid-charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:14px}
.panel{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:6px}
svg.chart{width:100%;height:auto;display:block}
svg .ct{font-size:13px;font-weight:600;fill:#1d2330}svg .yl{font-size:11px;fill:#6b7280;text-anchor:end}
svg .xl{font-size:11px;fill:#6b7280;text-anchor:middle}svg .lg{font-size:11px;fill:#374151}
svg .grid{stroke:#eceef2;stroke-width:1}svg .axis{stroke:#9ca3af;stroke-width:1}
footer{color:var(--muted);font-size:12px;margin-top:28px}
"""


def render_html(rep: Report) -> str:
    esc = html.escape
    keys = [_key(r) for r in sorted(rep.summary, key=lambda r: -r["requests"])]
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}
    multi_role = len({(s, p) for s, p, _ in keys}) < len(keys)

    def label(k: tuple[str, str, str]) -> str:
        return f"{k[0]} · {k[1]}" + (f" ({k[2]})" if multi_role else "")

    by_key: dict[tuple, list[dict]] = {}
    for r in rep.series:
        by_key.setdefault(_key(r), []).append(r)
    xs_all = sorted({r["t"] / 1e9 for r in rep.series})
    x_range = (xs_all[0], xs_all[-1] + rep.bucket_s) if xs_all else None

    def aligned(k: tuple, f: Any) -> tuple[list[float], list[float | None]]:
        rows = {r["t"] / 1e9: r for r in by_key.get(k, [])}
        ys = [f(rows[x]) if x in rows else None for x in xs_all]
        return [x + rep.bucket_s / 2 for x in xs_all], ys

    total = sum(r["requests"] for r in rep.summary)
    errors = sum(r["errors"] for r in rep.summary)
    worst = max((r for r in rep.summary if r["p99_ms"] is not None), key=lambda r: r["p99_ms"], default=None)
    lost = sum(r["lost_events"] or 0 for r in rep.losses)
    events = sum(r["events"] or 0 for r in rep.losses)
    er = errors / total if total else 0.0
    cls = "bad" if er >= 0.05 else "warn" if er >= 0.01 else "ok"
    cards = [
        ("requests", fmt_count(total), f"{fmt_rate(total / rep.window_s)} over {fmt_window(rep.window_s)}", ""),
        ("error rate", fmt_pct(er), f"{fmt_count(errors)} failed", cls),
        ("slowest p99", fmt_ms(worst["p99_ms"]) if worst else "–",
         esc(label(_key(worst))) if worst else "", ""),
        ("services", str(len({k[0] for k in keys})), f"{len(keys)} service/protocol rows", ""),
        ("capture loss", fmt_count(lost), f"events lost of {fmt_count(events + lost)}" if rep.losses
         else "no capture stats", "bad" if lost else "ok"),
    ]
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>apptrace report</title>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>",
             "<header><h1>apptrace report</h1>",
             f"<div class=sub>since {esc(rep.since)} ({esc(fmt_window(rep.window_s))} of data) · {esc(rep.db)} · "
             f"generated {dt.datetime.fromtimestamp(rep.generated, dt.UTC):%Y-%m-%d %H:%M:%S} UTC</div></header>"
             "<main><div class=cards>"]
    for k, v, sub, c in cards:
        parts.append(f"<div class=card><div class=k>{k}</div><div class='v {c}'>{v}</div>"
                     f"<div class=sub>{sub}</div></div>")
    parts.append("</div><h2>Services</h2><table><tr><th class=l>service</th><th class=l>protocol</th>"
                 "<th class=l>role</th><th>requests</th><th>rate</th><th>p50</th><th>p90</th><th>p99</th>"
                 "<th>errors</th><th>error rate</th><th class=l>p99 over time</th></tr>")
    for r in sorted(rep.summary, key=lambda r: (r["service"], r["protocol"], r["role"])):
        k = _key(r)
        e = r["error_rate"]
        c = "bad" if e >= 0.05 else "warn" if e >= 0.01 else "ok"
        spark = sparkline(aligned(k, lambda x: (x["q"] or [None] * 3)[2])[1], colors[k]) if rep.series else ""
        parts.append(
            f"<tr><td class=l><span class=dot style='background:{colors[k]}'></span>{esc(r['service'])}</td>"
            f"<td class=l>{esc(r['protocol'])}</td><td class=l>{esc(r['role'])}</td>"
            f"<td>{fmt_count(r['requests'])}</td><td>{fmt_rate(r['rps'])}</td><td>{fmt_ms(r['p50_ms'])}</td>"
            f"<td>{fmt_ms(r['p90_ms'])}</td><td><b>{fmt_ms(r['p99_ms'])}</b></td>"
            f"<td>{fmt_count(r['errors'])}</td><td class={c}>{fmt_pct(e)}</td><td class=l>{spark}</td></tr>")
    parts.append("</table>")
    if not rep.summary:
        parts.append(f"<p class=sub>No events in the last {esc(rep.since)}.</p>")

    if rep.endpoints:
        parts.append(_endpoint_tables(rep, colors))

    top = keys[:8]
    if rep.series:
        parts.append("<h2>Latency percentiles over time</h2><div class=grid-charts>")
        for k in top:
            series = []
            for i, (name, dash, w) in enumerate((("p50", "", 1.6), ("p90", "5 3", 1.6), ("p99", "", 2.6))):
                xs, ys = aligned(k, lambda x, i=i: None if not x["q"] or x["q"][i] is None else x["q"][i] / 1e6)
                series.append(Series(name, xs, ys, colors[k], dash, w))
            series[0].color = _tint(colors[k], 0.55)
            parts.append(f"<div class=panel>{line_chart(series, title=label(k), y_fmt=fmt_ms, x_range=x_range)}"
                         "</div>")
        parts.append("</div><h2>Latency distribution</h2><div class=panel>")
        hist: dict[tuple, dict[int, int]] = {}
        for r in rep.hist:
            hist.setdefault(_key(r), {})[r["b"]] = r["n"]
        parts.append(histogram_chart([(label(k), hist.get(k, {}), colors[k]) for k in top],
                                     title="share of requests by latency (log scale)"))
        parts.append("</div><h2>Errors and throughput</h2><div class=grid-charts>")
        err_series = [Series(label(k), *aligned(k, lambda x: x["err"]), colors[k]) for k in top]
        parts.append("<div class=panel>" + line_chart(
            err_series, title="error rate", y_fmt=lambda v: f"{v * 100:.0f}%", x_range=x_range) + "</div>")
        rps_series = [Series(label(k), *aligned(k, lambda x: x["n"] / rep.bucket_s), colors[k]) for k in top]
        parts.append("<div class=panel>" + line_chart(
            rps_series, title="throughput (requests/s)", y_fmt=lambda v: f"{v:g}", x_range=x_range)
            + "</div></div>")
    if rep.losses and len(rep.losses) > 1:
        xs = [r["t"] / 1e9 + rep.bucket_s / 2 for r in rep.losses]
        parts.append("<h2>Capture health</h2><div class=grid-charts><div class=panel>" + line_chart(
            [Series("lost events", xs, [float(r["lost_events"] or 0) for r in rep.losses], "#e15759"),
             Series("parse errors", xs, [float(r["parse_errors"] or 0) for r in rep.losses], "#b07aa1", "4 3")],
            title="losses per bucket", y_fmt=lambda v: f"{v:g}", x_range=x_range) + "</div></div>")
    parts.append("<footer>Errors: HTTP status ≥ 500, gRPC status ≠ 0, SQL responses with status ERR. Latency is "
                 "from the request's first byte to the response's last byte. Bucket: "
                 f"{rep.bucket_s}s. Generated by <code>apptrace report</code>.</footer></main></body></html>")
    return "".join(parts)


def _endpoint_tables(rep: Report, colors: dict) -> str:
    """Two tables side by side: the slowest endpoints/statements by p99, and where the errors are."""
    esc = html.escape

    def row(r: dict, last: str) -> str:
        c = colors.get(_key(r), "#999")
        ep = r["endpoint"] or "?"
        short = ep if len(ep) <= 70 else ep[:67] + "…"
        return (f"<tr><td class=l><span class=dot style='background:{c}'></span>{esc(r['service'])}</td>"
                f"<td class=l>{esc(r['protocol'])} <span class=sub>{esc(r['role'])}</span></td>"
                f"<td class=l title='{esc(ep)}'><code>{esc(short)}</code></td>"
                f"<td>{fmt_count(r['requests'])}</td>{last}</tr>")

    slow = sorted((r for r in rep.endpoints if r["p99"] is not None), key=lambda r: -r["p99"])[:10]
    errs = sorted((r for r in rep.endpoints if r["errors"]), key=lambda r: (-r["errors"], -r["requests"]))[:10]
    out = ["<div><h2>Slowest endpoints and statements</h2><table><tr><th class=l>service"
           "</th><th class=l>proto</th><th class=l>endpoint</th><th>requests</th><th>p50</th><th>p99</th></tr>"]
    for r in slow:
        out.append(row(r, f"<td>{fmt_ms(r['p50'] / 1e6)}</td><td><b>{fmt_ms(r['p99'] / 1e6)}</b></td>"))
    out.append("</table></div><div><h2>Where the errors are</h2><table><tr><th class=l>service</th>"
               "<th class=l>proto</th><th class=l>endpoint</th><th>requests</th><th>errors</th><th>rate</th></tr>")
    for r in errs:
        e = r["errors"] / r["requests"]
        c = "bad" if e >= 0.05 else "warn" if e >= 0.01 else "ok"
        out.append(row(r, f"<td>{fmt_count(r['errors'])}</td><td class={c}>{fmt_pct(e)}</td>"))
    if not errs:
        out.append("<tr><td class=l colspan=6>no errors in this window</td></tr>")
    out.append("</table></div>")
    return "".join(out)


def _tint(hex_color: str, amount: float) -> str:
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    r, g, b = (int(c + (255 - c) * amount) for c in (r, g, b))
    return f"#{r:02x}{g:02x}{b:02x}"


# -- command -----------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    db = default_db(args.db)
    try:
        since_ns = parse_duration(args.since)
    except ValueError as e:
        print(f"apptrace report: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_sql", False):
        print(summary_sql(events_sql(since_ns, args.service, args.protocol)))
        return 0
    try:
        backend = open_backend(db)
        try:
            rep = collect(backend, args.since, db, args.service, args.protocol, charts=bool(args.html))
        finally:
            backend.close()
    except QueryError as e:
        print(f"apptrace report: {e}", file=sys.stderr)
        return 2
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render_html(rep))
        except OSError as e:
            print(f"apptrace report: cannot write {args.html}: {e.strerror}", file=sys.stderr)
            return 2
    if args.format == "json":
        json.dump({"since": rep.since, "window_s": rep.window_s, "services": rep.summary}, sys.stdout)
        sys.stdout.write("\n")
    elif args.format == "csv":
        import csv

        cols = ["service", "protocol", "role", "requests", "rps", "p50_ms", "p90_ms", "p99_ms", "errors",
                "error_rate"]
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rep.summary)
    else:
        print_terminal(rep)
        if args.html:
            print(f"wrote {args.html}", file=sys.stderr)
    return 0
