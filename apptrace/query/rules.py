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
