"""The query socket's wire protocol, shared by the server in the tracer and the clients in every command.

DuckDB allows one writer process and no reader process beside it, so while a tracer holds the file
it answers queries itself, on ``<db>.sock``:

    request   := u32 big-endian length, then that many bytes of UTF-8 JSON: {"sql": "SELECT …"}
    response  := b"S", then an Arrow IPC stream with the result, written batch by batch until its end marker
                 (so the tracer never holds a large result whole), then the server closes the connection
              |  b"E", u64 big-endian length, then a one-line UTF-8 error message
"""

from __future__ import annotations

import socket
import struct

import duckdb
import pyarrow as pa

MAX_REQUEST = 16 << 20
#: every DuckDB connection apptrace opens: SQL may not read or write files, load extensions or attach
#: other databases, nor turn that back on (queries run as root, on data that holds secrets)
LOCKED_DOWN = {"enable_external_access": False, "lock_configuration": True}
REQUEST_LENGTH = struct.Struct(">I")
ERROR_LENGTH = struct.Struct(">Q")
RESULT, ERROR = b"S", b"E"


class QueryError(Exception):
    """A one-line message about a failed query (bad SQL, unknown table, no database)."""


def one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__ if isinstance(e, BaseException) else "error"
    # DuckDB puts the useful hint ("Did you mean ...", candidates) on later lines: keep them, joined.
    return " ".join(lines[:3])[:600]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return bytes(buf)


def run_query(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    rel = con.sql(sql)
    if rel is None:  # a statement without a result
        return pa.table({})
    return rel.to_arrow_table()
