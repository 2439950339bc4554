"""The report's queries, as px DataFrames: each compiles (``.to_sql()``) to the one DuckDB query it runs.

Everything starts from `requests`: one event table's rows in the window, as (protocol, service, role, time_,
latency, failure). What a failure is comes from px.is_error, and where the window starts from the px start time —
both from apptrace.query.rules, so the report counts errors and windows as watch and the shipped scripts do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any, TypeVar

import apptrace.query.px as px

#: the latency histogram's bins: bin b holds latencies (ns) from 10^(b/8) to 10^((b+1)/8)
HIST_BINS_PER_DECADE = 8
#: the --protocol choices, and each one's table (gRPC rows live in http_events)
TABLES = {"http": "http_events", "mysql": "mysql_events", "pgsql": "pgsql_events"}
#: what one row of the summary (and of every chart) is about
GROUP = ["service", "protocol", "role"]
#: the latency quantiles the report shows (only these: each one more is another pass over a group's latencies)
P50_90_99 = [0.5, 0.9, 0.99]
#: the capture_stats counters the report adds up
LOSS_COUNTERS = ["events", "lost_events", "gap_bytes", "parse_errors", "truncated_bytes"]


@dataclass(frozen=True)
class Scope:
    """The requests a report is about: those of the last ``since_ns`` nanoseconds, of these services and these
    protocols (every one when empty)."""

    since_ns: int
    services: tuple[str, ...] = ()
    protocols: tuple[str, ...] = ()

    def wants(self, protocol: str) -> bool:
        return not self.protocols or protocol in self.protocols

    @property
    def start(self) -> px.Expr:
        return px.nanoseconds(self.since_ns)


F = TypeVar("F", bound=Callable[..., px.DataFrame])


def over_apptrace_tables(build: F) -> F:
    """Build the query against the tables as apptrace.store.schema defines them: the report reads only tables
    apptrace writes, so building asks the database nothing, and --print-sql needs no database."""

    @wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> px.DataFrame:
        with px.session(builtin_schema=True):
            return build(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def requests(protocol: str, scope: Scope, *extra: str) -> px.DataFrame:
    """One protocol's requests in the window: protocol, service, role, time_, latency, failure, then ``extra``
    columns of its table. A NULL service or role reads '?'; the --service filter sees them before that."""
    table = TABLES[protocol]
    outcome = ["resp_status", "grpc_status"] if protocol == "http" else ["resp_status"]
    df = px.DataFrame(table, select=["time_", "service", "trace_role", "latency", *outcome, *extra],
                      start_time=scope.start)
    if scope.services:
        df = df[df.service.isin(scope.services)]
    # an HTTP/2 exchange with trailers carrying grpc-status is a gRPC call
    df.protocol = px.select(df.grpc_status.notnull(), "grpc", "http") if protocol == "http" else protocol
    df.service = px.coalesce(df.service, "?")
    df.role = px.coalesce(df.trace_role, "?")
    df.failure = px.is_error(df)
    return df[["protocol", "service", "role", "time_", "latency", "failure", *extra]]


def events(scope: Scope) -> px.DataFrame:
    """Every protocol's requests in the window, one stream."""
    parts = [requests(p, scope) for p in TABLES if scope.wants(p)]
    if not parts:
        raise ValueError(f"no protocol to report on: choose among {', '.join(TABLES)}")
    return parts[0].append(parts[1:]) if len(parts) > 1 else parts[0]


def with_percentiles(df: px.DataFrame, *names: str) -> px.DataFrame:
    """The struct of latency quantiles px.quantiles made, as one float column per field (p50, p90, p99).
    Like ``df.x = …`` in PxL, this rebinds ``df``: use what it returns."""
    for name in names:
        df[name] = px.pluck_float64(df.latency, name)
    return df.drop("latency")


@over_apptrace_tables
def summary(scope: Scope) -> px.DataFrame:
    """Per (service, protocol, role): requests (every row, with a latency or not), errors, p50/p90/p99 of latency
    in ns, and the first and last request's time in ns (for the rate's window)."""
    df = events(scope).groupby(GROUP).agg(
        requests=("time_", px.size), errors=("failure", px.sum), latency=("latency", px.quantiles, P50_90_99),
        first_time=("time_", px.min), last_time=("time_", px.max))
    df = with_percentiles(df, "p50", "p90", "p99")
    df.first_ns = px.int64(df.first_time)
    df.last_ns = px.int64(df.last_time)
    return df[[*GROUP, "requests", "errors", "p50", "p90", "p99", "first_ns", "last_ns"]].sort(GROUP)


@over_apptrace_tables
def series(scope: Scope, bucket_s: int) -> px.DataFrame:
    """Per (service, protocol, role) and bucket of ``bucket_s`` seconds starting at t (ns): requests n, the share
    of them that failed (err), and p50/p90/p99 of latency in ns."""
    ev = events(scope)
    ev.t = px.int64(px.bin(ev.time_, px.seconds(bucket_s)))
    df = ev.groupby([*GROUP, "t"]).agg(
        n=("time_", px.size), err=("failure", px.mean), latency=("latency", px.quantiles, P50_90_99))
    return with_percentiles(df, "p50", "p90", "p99").sort(["t", *GROUP])


@over_apptrace_tables
def histogram(scope: Scope) -> px.DataFrame:
    """Per (service, protocol, role): how many requests (n) fell in each latency bin b (HIST_BINS_PER_DECADE)."""
    ev = events(scope)
    ev = ev[ev.latency > 0]  # a latency of 0 (or less) has no logarithm, and no bin
    ev.b = px.bin(px.log10(ev.latency) * HIST_BINS_PER_DECADE, 1)
    return ev.groupby([*GROUP, "b"]).agg(n=("time_", px.size)).sort(["b", *GROUP])


@over_apptrace_tables
def endpoints(scope: Scope) -> px.DataFrame:
    """Per (service, protocol, role, endpoint): requests, errors, p50 and p99 of latency in ns. An HTTP endpoint is
    'METHOD route' (req_route: /users/{id}); a SQL one, the statement's shape (literals → ?)."""
    aggs: dict[str, tuple] = dict(requests=("time_", px.size), errors=("failure", px.sum),
                                  latency=("latency", px.quantiles, [0.5, 0.99]))
    parts = []
    if scope.wants("http"):
        # group on method and route, and write the label after aggregating: one string per endpoint, not per request
        # (rows stored before req_route existed have only their path)
        df = requests("http", scope, "req_method", "req_route", "req_path")
        df.route = px.coalesce(df.req_route, df.req_path)
        df = df.groupby([*GROUP, "req_method", "route"]).agg(**aggs)
        df.endpoint = px.coalesce(df.req_method, "?") + " " + px.coalesce(df.route, "")
        parts.append(df)
    for protocol, normalize in (("mysql", px.normalize_mysql), ("pgsql", px.normalize_pgsql)):
        if scope.wants(protocol):
            df = requests(protocol, scope, "req_body")
            df.endpoint = normalize(df.req_body)
            parts.append(df.groupby([*GROUP, "endpoint"]).agg(**aggs))
    if not parts:
        raise ValueError(f"no protocol to report on: choose among {', '.join(TABLES)}")
    cols = [*GROUP, "endpoint", "requests", "errors", "p50", "p99"]
    parts = [with_percentiles(df, "p50", "p99")[cols] for df in parts]
    both = parts[0].append(parts[1:]) if len(parts) > 1 else parts[0]
    return both.sort([*GROUP, "endpoint"])


@over_apptrace_tables
def losses(since_ns: int, bucket_s: int) -> px.DataFrame:
    """What the capture lost, per bucket of ``bucket_s`` seconds starting at t (ns): the LOSS_COUNTERS, summed."""
    df = px.DataFrame("capture_stats", select=["time_", *LOSS_COUNTERS], start_time=px.nanoseconds(since_ns))
    df.t = px.int64(px.bin(df.time_, px.seconds(bucket_s)))
    return df.groupby("t").agg(**{c: (c, px.sum) for c in LOSS_COUNTERS}).sort("t")
