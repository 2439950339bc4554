"""How the query commands reach the database: a running tracer's socket, else the file read-only.

``open_backend(db)`` is what every command (and px) uses. Nothing here writes the database.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
from typing import Protocol

import duckdb
import pyarrow as pa

from apptrace.store.wire import (
    ERROR,
    ERROR_LENGTH,
    LOCKED_DOWN,
    REQUEST_LENGTH,
    RESULT,
    QueryError,
    check_db_file,
    one_line,
    open_error,
    recv_exact,
    run_query,
)


class Backend(Protocol):
    description: str

    def query_arrow(self, sql: str) -> pa.Table: ...

    def close(self) -> None: ...


def socket_query(path: str, sql: str, timeout: float | None = 300.0) -> pa.Table:
    """One query over the tracer's socket. Raises QueryError for query errors, OSError if nobody is there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        body = json.dumps({"sql": sql}).encode("utf-8")
        s.sendall(REQUEST_LENGTH.pack(len(body)) + body)
        status = recv_exact(s, 1)
        if status == RESULT:
            try:
                with s.makefile("rb") as f:
                    return pa.ipc.open_stream(f).read_all()
            except pa.ArrowInvalid as e:
                raise QueryError(f"the tracer stopped sending the result: {one_line(e)}") from None
        if status != ERROR:
            raise QueryError(f"unexpected answer from the tracer ({status!r})")
        (n,) = ERROR_LENGTH.unpack(recv_exact(s, ERROR_LENGTH.size))
        raise QueryError(recv_exact(s, n).decode("utf-8", "replace"))


class SocketBackend:
    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"tracer socket {path}"

    def query_arrow(self, sql: str) -> pa.Table:
        try:
            return socket_query(self.path, sql)
        except OSError as e:
            raise QueryError(f"lost the tracer at {self.path}: {e}") from None

    def close(self) -> None:
        pass


class FileBackend:
    """The DB file opened read-only (no tracer running), or any open DuckDB connection."""

    def __init__(self, path: str | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.description = f"file {path}" if path else "connection"
        if con is None:
            check_db_file(path)
            try:
                con = duckdb.connect(path, read_only=True, config=LOCKED_DOWN)
            except duckdb.Error as e:
                raise QueryError(open_error(path, e)) from None
        self.con = con
        self._lock = threading.Lock()

    def query_arrow(self, sql: str) -> pa.Table:
        with self._lock:
            try:
                return run_query(self.con, sql)
            except duckdb.Error as e:
                raise QueryError(one_line(e)) from None

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.close()


def socket_alive(path: str) -> bool:
    """True if something accepts connections on `path` (a stale socket file refuses)."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def open_backend(db: str) -> Backend:
    """The way to query `db`: through a running tracer's socket, else the file read-only."""
    sock = db + ".sock"
    if socket_alive(sock):
        return SocketBackend(sock)
    if not os.path.exists(db):
        raise QueryError(f"no database at {db} (run `apptrace trace --db {db}` first, or pass --db / set "
                         f"APPTRACE_DB)")
    return FileBackend(db)
