"""The rules every view of the data applies the same way: what an error is, and what "the last 15m" means.

Reports, watch, px (``px.is_error``, ``start_time='-5m'``) and the shipped scripts all take them from
here, so that the same rows give the same error rate and the same window in every command.
"""

from __future__ import annotations

#: an HTTP request failed: a 5xx status, or a gRPC status other than OK (0) in its trailers
HTTP_ERROR_SQL = "(coalesce(resp_status, 0) >= 500 OR coalesce(grpc_status, 0) <> 0)"
#: a MySQL or PostgreSQL request failed: the server answered with an error packet/message
SQL_ERROR_SQL = "coalesce(resp_status = 'ERR', false)"

#: the event table of each protocol, and how its rows say they failed
ERROR_SQL = {"http_events": HTTP_ERROR_SQL, "mysql_events": SQL_ERROR_SQL, "pgsql_events": SQL_ERROR_SQL}

NOW_SQL = "make_timestamp_ns(epoch_ns(now()))"

#: A rate is how many rows a group has, divided by the span every row of the view covers together: from the first
#: row to the last one the query looked at (all groups, not the group's own), and at least this many seconds. One
#: span for every group, so an endpoint seen once in a busy minute reads 1/60 per second, not 1 per second, and a
#: finished trace's rates are not diluted by the time since it stopped.
RATE_MIN_SPAN_S = 1.0


def rate_sql(rows_sql: str, time_sql: str) -> str:
    """Per second, by the rule above: ``rows_sql`` (a group's count) over the span of ``time_sql`` across every
    group of the same aggregation (a window over the aggregated rows)."""
    span_ns = f"(epoch_ns(max(max({time_sql})) OVER ()) - epoch_ns(min(min({time_sql})) OVER ()))"
    return f"({rows_sql} / greatest({RATE_MIN_SPAN_S!r}, {span_ns} / 1e9))"


def rate_span_s(first_ns: int, last_ns: int) -> float:
    """The same span in Python, for views that have the first and last time at hand."""
    return max(RATE_MIN_SPAN_S, (last_ns - first_ns) / 1e9)


#: the window report, watch and the shipped scripts look at when none is given (scripts: start_time='-15m')
DEFAULT_WINDOW = "15m"


def since_sql(ns: int) -> str:
    """The instant ``ns`` nanoseconds before now, as a TIMESTAMP_NS expression (the start of a window)."""
    return f"make_timestamp_ns(epoch_ns(now()) - {int(ns)})"


def error_sql_for(columns: dict[str, str]) -> str | None:
    """The error predicate for a relation with these columns ({name: kind}), or None if it has no outcome.

    HTTP rows are told by their ``grpc_status`` column, SQL rows by a text ``resp_status``.
    """
    if "grpc_status" in columns and "resp_status" in columns:
        return HTTP_ERROR_SQL
    if columns.get("resp_status") == "str":
        return SQL_ERROR_SQL
    return None
