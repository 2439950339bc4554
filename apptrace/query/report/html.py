"""The report as one self-contained HTML page: summary cards, the services table with sparklines, the slowest
endpoints and where the errors are, and the charts from `svg`. No script, no stylesheet, no font from elsewhere."""

from __future__ import annotations

import datetime as dt
import html
from typing import Any

from apptrace.query.fmt import fmt_count, fmt_ms, fmt_pct, fmt_rate, fmt_window
from apptrace.query.report.data import Report, row_key
from apptrace.query.report.queries import HIST_BINS_PER_DECADE
from apptrace.query.report.svg import Series, histogram_chart, line_chart, sparkline

#: one colour per (service, protocol, role); none of them red or pink, which is kept for errors and losses
PALETTE = ["#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#9c755f", "#17becf", "#bcbd22",
           "#7f7f7f", "#1f3a93", "#16a085", "#8e44ad", "#2c7fb8", "#a6761d", "#66a61e"]
#: errors and losses, wherever they are drawn (the --bad colour of the page)
ERROR_COLOR = "#d62728"
#: how a client's series is drawn beside a server's of the same colour family: dashed
CLIENT_DASH = "6 3"


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
    keys = [row_key(r) for r in sorted(rep.summary, key=lambda r: -r["requests"])]
    colors = {k: PALETTE[i % len(PALETTE)] for i, k in enumerate(keys)}

    def label(k: tuple[str, str, str]) -> str:
        # the role always: a client's view of a call (network included) is not the server's
        return f"{k[0]} · {k[1]} {k[2]}"

    def role_dash(k: tuple[str, str, str]) -> str:
        return CLIENT_DASH if k[2] == "client" else ""

    by_key: dict[tuple, list[dict]] = {}
    for r in rep.series:
        by_key.setdefault(row_key(r), []).append(r)
    xs_all = sorted({r["t"] / 1e9 for r in rep.series})
    x_range = (xs_all[0], xs_all[-1] + rep.bucket_s) if xs_all else None

    def aligned(k: tuple, f: Any) -> tuple[list[float], list[float | None]]:
        rows = {r["t"] / 1e9: r for r in by_key.get(k, [])}
        ys = [f(rows[x]) if x in rows else None for x in xs_all]
        return [x + rep.bucket_s / 2 for x in xs_all], ys

    def covered_s(r: dict) -> float:
        """The seconds of a bucket inside the span the report's rates are over: all of it but for the first and
        the last bucket, which the span (and the clock) cut. Their counts are over that part, so the last bucket
        of a live trace is not drawn as a drop."""
        t0, t1 = r["t"], r["t"] + rep.bucket_s * 10**9
        lo = max(t0, rep.start_ns) if rep.start_ns is not None else t0
        hi = min(t1, rep.end_ns) if rep.end_ns is not None else t1
        return max(1.0, (hi - lo) / 1e9) if hi > lo else float(rep.bucket_s)

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
         esc(label(row_key(worst))) if worst else "", ""),
        ("services", str(len({k[0] for k in keys})), f"{len(keys)} service/protocol rows", ""),
        ("capture loss", fmt_count(lost), f"events lost of {fmt_count(events + lost)}" if rep.losses
         else "no capture stats", "bad" if lost else "ok"),
    ]
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>apptrace report</title>"
             f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{CSS}</style></head><body>",
             "<header><h1>apptrace report</h1>",
             f"<div class=sub>last {esc(rep.since)} ({esc(fmt_window(rep.window_s))} of data) · {esc(rep.db)} · "
             f"generated {dt.datetime.fromtimestamp(rep.generated, dt.UTC):%Y-%m-%d %H:%M:%S} UTC</div>"
             + (f"<div class=sub>{esc(rep.fresh.describe())}</div>" if rep.fresh else "") + "</header>"
             "<main><div class=cards>"]
    for k, v, sub, c in cards:
        parts.append(f"<div class=card><div class=k>{k}</div><div class='v {c}'>{v}</div>"
                     f"<div class=sub>{sub}</div></div>")
    parts.append("</div><h2>Services</h2><table><tr><th class=l>service</th><th class=l>protocol</th>"
                 "<th class=l>role</th><th>requests</th><th>rate</th><th>p50</th><th>p90</th><th>p99</th>"
                 "<th>errors</th><th>error rate</th><th class=l>p99 over time</th></tr>")
    for r in sorted(rep.summary, key=lambda r: (r["service"], r["protocol"], r["role"])):
        k = row_key(r)
        e = r["error_rate"]
        c = "bad" if e >= 0.05 else "warn" if e >= 0.01 else "ok"
        spark = sparkline(aligned(k, lambda x: x["p99"])[1], colors[k]) if rep.series else ""
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
            for name, dash, w in (("p50", "", 1.6), ("p90", "5 3", 1.6), ("p99", "", 2.6)):
                xs, ys = aligned(k, lambda x, name=name: None if x[name] is None else x[name] / 1e6)
                series.append(Series(name, xs, ys, colors[k], dash, w))
            series[0].color = _tint(colors[k], 0.55)
            chart = line_chart(series, title=f"{label(k)} (log scale)", y_fmt=fmt_ms, x_range=x_range, log_y=True)
            parts.append(f"<div class=panel>{chart}</div>")
        parts.append("</div><h2>Latency distribution</h2><div class=panel>")
        hist: dict[tuple, dict[int, int]] = {}
        for r in rep.hist:
            hist.setdefault(row_key(r), {})[r["b"]] = r["n"]
        parts.append(histogram_chart([(label(k), hist.get(k, {}), colors[k], role_dash(k)) for k in top],
                                     title="share of requests by latency (log scale)",
                                     bins_per_decade=HIST_BINS_PER_DECADE))
        parts.append("</div><h2>Errors and throughput</h2><div class=grid-charts>")
        err_series = [Series(label(k), *aligned(k, lambda x: x["err"]), colors[k], role_dash(k)) for k in top]
        parts.append("<div class=panel>" + line_chart(
            err_series, title="error rate", y_fmt=lambda v: f"{v * 100:.0f}%", x_range=x_range) + "</div>")
        rps_series = [Series(label(k), *aligned(k, lambda x: x["n"] / covered_s(x)), colors[k], role_dash(k))
                      for k in top]
        parts.append("<div class=panel>" + line_chart(
            rps_series, title="throughput (requests/s)", y_fmt=lambda v: f"{v:g}", x_range=x_range)
            + "</div></div>")
    if rep.losses and len(rep.losses) > 1:
        xs = [r["t"] / 1e9 + rep.bucket_s / 2 for r in rep.losses]
        parts.append("<h2>Capture health</h2><div class=grid-charts><div class=panel>" + line_chart(
            [Series("lost events", xs, [float(r["lost_events"] or 0) for r in rep.losses], ERROR_COLOR),
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
        c = colors.get(row_key(r), "#999")
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
