"""The report's numbers: `collect` runs the queries of `queries` and turns their rows into a `Report`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from apptrace.common.units import parse_duration
from apptrace.query.backend import QueryError
from apptrace.query.report.queries import (
    endpoints_sql,
    events_sql,
    hist_sql,
    losses_sql,
    series_sql,
    summary_sql,
)

# chart buckets people read easily; the first that gives at most ~60 points over the window
BUCKETS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]


def bucket_seconds(window_s: float, target: int = 60) -> int:
    for b in BUCKETS_S:
        if window_s / b <= target:
            return b
    return BUCKETS_S[-1]


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


def row_key(r: dict) -> tuple[str, str, str]:
    """What a row of the summary, series, hist or endpoints is about: (service, protocol, role)."""
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

