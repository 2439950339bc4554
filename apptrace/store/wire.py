"""The query socket's wire protocol, shared by the server in the tracer and the clients in every command.

DuckDB allows one writer process and no reader process beside it, so while a tracer holds the file
it answers queries itself, on ``<db>.sock``:

    request   := u32 big-endian length, then that many bytes of UTF-8 JSON: {"sql": "SELECT …"}
    response  := b"S", then an Arrow IPC stream with the result, written batch by batch until its end marker
                 (so the tracer never holds a large result whole), then the server closes the connection
              |  b"E", u64 big-endian length, then a one-line UTF-8 error message
"""

from __future__ import annotations

import re
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


SQLITE_MAGIC = b"SQLite format 3\0"


def check_db_file(path: str) -> None:
    """Raise QueryError, before DuckDB reaches for an extension, if ``path`` is a SQLite file."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError:
        return  # missing, or not ours to read: DuckDB says which
    if head == SQLITE_MAGIC:
        raise QueryError(f"{path} is a SQLite database, not an apptrace DuckDB file")


def open_error(path: str, exc: BaseException) -> str:
    """One line naming the real reason DuckDB could not open ``path``."""
    msg = one_line(exc)
    pid = re.search(r"\(PID (\d+)\)", msg)
    if "Could not set lock" in msg or "Conflicting lock" in msg:
        holder = f" (pid {pid.group(1)})" if pid else ""
        return f"{path} is in use by another process{holder}: only one may write it at a time"
    if "not a valid DuckDB database file" in msg:
        return f"{path} is not a DuckDB database, or is corrupt"
    if "Could not read enough bytes" in msg or "Corrupt" in msg or "corrupt" in msg or "checksum" in msg.lower():
        return f"{path} is corrupt (truncated or damaged): {msg}"
    return f"cannot open {path}: {msg}"
