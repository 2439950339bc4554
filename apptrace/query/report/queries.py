"""The report's queries."""

from __future__ import annotations

from apptrace.query.px.compiler import sql_literal

HIST_BINS_PER_DECADE = 8


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

