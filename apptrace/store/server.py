"""The query server: read-only SQL on ``<db>.sock`` for the tracer's Store (protocol: ``wire``).

Only SELECT-like statements are accepted (the socket is for reading). The socket is created with
mode 0600, and the server also checks the peer's uid (SO_PEERCRED): only root or the tracer's own user.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from typing import Any

import duckdb
import pyarrow as pa

from apptrace.store.wire import (
    ERROR,
    ERROR_LENGTH,
    MAX_REQUEST,
    REQUEST_LENGTH,
    RESULT,
    QueryError,
    one_line,
    recv_exact,
)

READ_STATEMENTS = {"SELECT", "EXPLAIN"}  # DESCRIBE, SHOW and SUMMARIZE are SELECTs; PRAGMA can change settings


def check_read_only(sql: str, where: str = "while tracing") -> None:
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not stmts:
        raise QueryError("empty query")
    for st in stmts:
        if st.type.name not in READ_STATEMENTS:
            raise QueryError(f"only SELECT queries are allowed {where} (got {st.type.name})")


class _Aborted(Exception):
    """A result stream that broke after it started: nothing more can be sent on that connection."""


class QueryServer:
    """Serves read-only SQL over `<db>.sock` for a Store (anything with `query_arrow(sql)`)."""

    def __init__(self, store: Any, path: str) -> None:
        self.store = store
        self.path = path
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def start(self) -> None:
        """Listen on the socket (OSError if it cannot) and answer queries in background threads."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a killed tracer
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        sock.listen(16)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept_loop, name="apptrace-queryserver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return True  # no SO_PEERCRED here: the 0600 socket mode is the guard
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.getuid())

    def _stream(self, conn: socket.socket, sql: str) -> None:
        query_reader = getattr(self.store, "query_reader", None)
        try:
            if query_reader is None:  # any object with query_arrow() will do, unstreamed
                table = self.store.query_arrow(sql)
                ctx: Any = contextlib.nullcontext(pa.RecordBatchReader.from_batches(table.schema,
                                                                                    table.to_batches()))
            else:
                ctx = query_reader(sql)
            with ctx as reader:
                first = next(iter(reader), None)  # errors found while running surface here, before "S"
                conn.sendall(RESULT)
                try:
                    with conn.makefile("wb") as f, pa.ipc.new_stream(f, reader.schema) as w:
                        if first is not None:
                            w.write_batch(first)
                        for batch in reader:
                            w.write_batch(batch)
                except Exception:  # mid-stream: the client sees the stream end early and says so
                    raise _Aborted() from None
        except duckdb.Error as e:
            raise QueryError(one_line(e)) from None

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                if not self._peer_allowed(conn):
                    raise QueryError("permission denied")
                (n,) = REQUEST_LENGTH.unpack(recv_exact(conn, REQUEST_LENGTH.size))
                if n > MAX_REQUEST:
                    raise QueryError("request too large")
                req = json.loads(recv_exact(conn, n).decode("utf-8"))
                sql = req["sql"]
                check_read_only(sql)
                self._stream(conn, sql)
            except (ConnectionError, OSError, _Aborted):
                return
            except Exception as e:  # every failure goes back as one line
                msg = one_line(e).encode("utf-8")
                with contextlib.suppress(OSError):
                    conn.sendall(ERROR + ERROR_LENGTH.pack(len(msg)) + msg)


