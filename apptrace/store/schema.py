"""The DuckDB table contract: every table apptrace writes, its columns and their types.

This module is the single source of truth for the schema. `apptrace.store.writer` creates the tables from it, the px
compiler resolves column names against it when no database is at hand, and `SCHEMA_VERSION` is stored in the
`apptrace_meta` table so that a database written by another version is migrated or refused.
"""

from __future__ import annotations

SCHEMA_VERSION = 8  # 2: capture_stats.backlog_bytes, backlog_dropped_events; 3: http_events.req_route;
#                    4: host and store_seq on every table; 5: http_events.body_incomplete;
#                    6: container_id (events, connections, processes), processes.pod_uid;
#                    7: capture_stats.disk_full_dropped_events, disk_full_dropped_rows, and the apptrace_checkpoint table
#                    8: processes.missed, processes.unknown_protocol_conns
META_TABLE = "apptrace_meta"
#: where analysis stood in each spool run (apptrace.analysis.checkpoint), committed with the rows: not queried
CHECKPOINT_TABLE = "apptrace_checkpoint"
CHECKPOINT_SQL = (f"CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} "
                  '(run VARCHAR PRIMARY KEY, seq BIGINT, "offset" BIGINT, state BLOB)')

# Who spoke to whom: the columns every event row and every connection row carries.
_ENDPOINTS: list[tuple[str, str]] = [
    ("comm", "VARCHAR"),
    ("service", "VARCHAR"),
    ("trace_role", "VARCHAR"),
    ("local_addr", "VARCHAR"),
    ("local_port", "INTEGER"),
    ("remote_addr", "VARCHAR"),
    ("remote_port", "INTEGER"),
]

_COMMON: list[tuple[str, str]] = [
    ("time_", "TIMESTAMP_NS"),
    ("pid", "INTEGER"),
    *_ENDPOINTS,
    ("encrypted", "BOOLEAN"),
    ("tls_lib", "VARCHAR"),
    ("host", "VARCHAR"),
    ("container_id", "VARCHAR"),
    ("latency", "BIGINT"),
    ("conn_id", "VARCHAR"),
]

_SQL_EVENT = [
    ("req_cmd", "VARCHAR"),
    ("req_body", "VARCHAR"),
    ("resp_status", "VARCHAR"),
    ("resp_body", "VARCHAR"),
]

TABLES: dict[str, list[tuple[str, str]]] = {
    "http_events": _COMMON
    + [
        ("http_version", "VARCHAR"),
        ("req_method", "VARCHAR"),
        ("req_path", "VARCHAR"),
        ("req_route", "VARCHAR"),
        ("req_headers", "VARCHAR"),
        ("req_body", "VARCHAR"),
        ("req_body_size", "BIGINT"),
        ("resp_status", "INTEGER"),
        ("resp_message", "VARCHAR"),
        ("resp_headers", "VARCHAR"),
        ("resp_body", "VARCHAR"),
        ("resp_body_size", "BIGINT"),
        ("content_type", "VARCHAR"),
        ("grpc_status", "INTEGER"),
        ("grpc_message", "VARCHAR"),
        ("stream_id", "BIGINT"),
        ("req_messages", "INTEGER"),
        ("resp_messages", "INTEGER"),
        ("headers_partial", "BOOLEAN"),
        ("body_incomplete", "BOOLEAN"),  # capture lost bytes inside a body: its size is exact, its text is not all there
    ],
    "mysql_events": _COMMON + _SQL_EVENT + [("error_code", "INTEGER"), ("rows", "BIGINT")],
    "pgsql_events": _COMMON + _SQL_EVENT + [("error_code", "VARCHAR"), ("rows", "BIGINT")],
    "connections": [
        ("conn_id", "VARCHAR"),
        ("pid", "INTEGER"),
        ("fd", "INTEGER"),
        *_ENDPOINTS,
        ("tls_lib", "VARCHAR"),
        ("protocol", "VARCHAR"),
        ("open_time", "TIMESTAMP_NS"),
        ("close_time", "TIMESTAMP_NS"),
        ("bytes_sent", "BIGINT"),
        ("bytes_recv", "BIGINT"),
        ("gap_bytes", "BIGINT"),
        ("parse_errors", "BIGINT"),
        ("records", "BIGINT"),
        ("evicted", "BIGINT"),
        ("container_id", "VARCHAR"),
    ],
    "processes": [
        ("pid", "INTEGER"),
        ("comm", "VARCHAR"),
        ("exe", "VARCHAR"),
        ("cmdline", "VARCHAR"),
        ("service", "VARCHAR"),
        ("start_time", "TIMESTAMP_NS"),
        ("tls_libs", "VARCHAR"),
        ("container_id", "VARCHAR"),
        ("pod_uid", "VARCHAR"),
        # why capture thinks the process's first TLS requests may be missing (a late process it could not stop
        # in time, a library it could not read or probe); NULL when nothing was missed
        ("missed", "VARCHAR"),
        # its plaintext connections whose first bytes were no protocol apptrace parses (never copied)
        ("unknown_protocol_conns", "BIGINT"),
    ],
    "capture_stats": [
        ("time_", "TIMESTAMP_NS"),
        ("events", "BIGINT"),
        ("bytes", "BIGINT"),
        ("lost_events", "BIGINT"),
        ("truncated_bytes", "BIGINT"),
        ("gap_bytes", "BIGINT"),
        ("parse_errors", "BIGINT"),
        ("unknown_protocol_conns", "BIGINT"),
        ("records", "BIGINT"),
        ("backlog_bytes", "BIGINT"),
        ("backlog_dropped_events", "BIGINT"),
        ("disk_full_dropped_events", "BIGINT"),  # data records capture could not spool: no room on its disk
        ("disk_full_dropped_rows", "BIGINT"),  # rows analysis could not store: no room on the DB's disk
    ],
}

# Every row says where it was captured (the capture header's host name); the event tables have `host` in
# _COMMON already. `store_seq` is the order in which the store committed the row (an upsert gives the new
# version a new one): `apptrace export` resumes after the last one it wrote, whatever the row's time says.
STORE_SEQ = "store_seq"
for _table, _cols in TABLES.items():
    if ("host", "VARCHAR") not in _cols:
        _cols.append(("host", "VARCHAR"))
    _cols.append((STORE_SEQ, "BIGINT"))

EVENT_TABLES = ("http_events", "mysql_events", "pgsql_events")
#: tables whose rows are keyed, and the key columns
KEYS: dict[str, tuple[str, ...]] = {"connections": ("conn_id",), "processes": ("pid", "start_time")}
#: the time column retention looks at, per table
TIME_COLUMN: dict[str, str] = {
    "http_events": "time_",
    "mysql_events": "time_",
    "pgsql_events": "time_",
    "capture_stats": "time_",
    "connections": "close_time",
}


def columns(table: str) -> list[str]:
    return [c for c, _ in TABLES[table]]


def catalog() -> dict[str, dict[str, str]]:
    """Table name → {column: DuckDB type}, as this version of apptrace creates them."""
    return {t: dict(cols) for t, cols in TABLES.items()}


def create_sql(table: str) -> str:
    cols = ", ".join(f'"{c}" {t}' for c, t in TABLES[table])
    return f"CREATE TABLE IF NOT EXISTS {table} ({cols})"
