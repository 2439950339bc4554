"""The report's numbers: `collect` runs the queries of `queries` and turns their rows into a `Report`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from apptrace.common.units import parse_window
from apptrace.query.backend import QueryError
from apptrace.query.freshness import Freshness, freshness
from apptrace.query.px import DataFrame
from apptrace.query.report import queries
from apptrace.query.rules import rate_span_s

# chart buckets people read easily; the first that gives at most ~60 points over the window
BUCKETS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400]


def bucket_seconds(window_s: float, target: int = 60) -> int:
    for b in BUCKETS_S:
        if window_s / b <= target:
            return b
    return BUCKETS_S[-1]


@dataclass
class Report:
    """What `apptrace report` found. Latencies are in ns in the query rows, in ms in the summary.

    summary    per (service, protocol, role): requests, errors, p50_ms, p90_ms, p99_ms, error_rate, rps
    series     per (service, protocol, role) and bucket t (ns): n, err (share failed), p50, p90, p99
    hist       per (service, protocol, role) and latency bin b: n
    endpoints  per (service, protocol, role, endpoint): requests, errors, p50, p99
    losses     per bucket t (ns): events, lost_events, gap_bytes, parse_errors, truncated_bytes
    series, hist and endpoints are only collected for the HTML page (``charts``).
    """

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
    # the span the rates are over, in ns: charts scale a bucket this span covers only in part by the part covered
    start_ns: int | None = None
    end_ns: int | None = None
    fresh: Freshness | None = None  # how current the rows are (header)


def row_key(r: dict) -> tuple[str, str, str]:
    """What a row of the summary, series, hist or endpoints is about: (service, protocol, role)."""
    return (r["service"], r["protocol"], r["role"])


def rows(backend: Any, df: DataFrame) -> list[dict]:
    """Run one px query; its rows as dicts (through Arrow, not pandas: an int column with a NULL stays ints)."""
    return backend.query_arrow(df.to_sql()).to_pylist()


def collect(backend: Any, since: str, db: str, services: list[str] | None = None,
            protocols: list[str] | None = None, charts: bool = False) -> Report:
    since_ns = parse_window(since)
    scope = queries.Scope(since_ns, tuple(services or ()), tuple(protocols or ()))
    now_ns = time.time_ns()
    summary = rows(backend, queries.summary(scope))
    # the rate's span (apptrace.query.rules): first to last row of every group together, as px.rate counts it
    first = min((r["first_ns"] for r in summary if r["first_ns"] is not None), default=now_ns)
    last = max((r["last_ns"] for r in summary if r["last_ns"] is not None), default=now_ns)
    window_s = rate_span_s(first, last)
    for r in summary:
        ns = (r.pop("p50"), r.pop("p90"), r.pop("p99"))
        r["p50_ms"], r["p90_ms"], r["p99_ms"] = (None if v is None else v / 1e6 for v in ns)
        r["error_rate"] = r["errors"] / r["requests"] if r["requests"] else 0.0
        r["rps"] = r["requests"] / window_s
        r.pop("first_ns"), r.pop("last_ns")
    rep = Report(since=since, window_s=window_s, generated=time.time(), db=db, summary=summary,
                 start_ns=max(first, now_ns - since_ns), end_ns=last,
                 fresh=freshness(backend, [queries.TABLES[p] for p in queries.TABLES if scope.wants(p)], now_ns))
    if charts:
        rep.bucket_s = bucket_seconds(window_s)
        rep.series = rows(backend, queries.series(scope, rep.bucket_s))
        rep.hist = rows(backend, queries.histogram(scope))
        rep.endpoints = rows(backend, queries.endpoints(scope))
    try:  # one bucket for the whole window when there is no chart to draw
        rep.losses = rows(backend, queries.losses(since_ns, rep.bucket_s if charts else 86400 * 365))
    except QueryError:  # a database from before capture_stats
        rep.losses = []
    return rep
