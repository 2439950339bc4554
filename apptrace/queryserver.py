"""Queries while tracing: a tiny SQL server on a Unix socket beside the DB, and the client side of it.

DuckDB allows one writer process and no reader process beside it, so the tracer answers queries itself.

Wire protocol (one request per connection):

    request   := u32 big-endian length, then that many bytes of UTF-8 JSON: {"sql": "SELECT …"}
    response  := b"S", then an Arrow IPC stream with the result, written batch by batch until its end marker
                 (so the tracer never holds a large result whole), then the server closes the connection
              |  b"E", u64 big-endian length, then a one-line UTF-8 error message

Only SELECT-like statements are accepted (the socket is for reading). The socket is `<db>.sock`, created with
mode 0600, and the server also checks the peer's uid (SO_PEERCRED): only root or the tracer's own user.

`open_backend(db)` is what the commands use: the socket when a tracer is serving, else the file read-only.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
from typing import Any, Protocol

import duckdb
import pyarrow as pa

from apptrace.store import run_query

MAX_REQUEST = 16 << 20
READ_STATEMENTS = {"SELECT", "EXPLAIN"}  # DESCRIBE, SHOW and SUMMARIZE are SELECTs; PRAGMA can change settings


class QueryError(Exception):
    """A one-line message about a failed query (bad SQL, unknown table, no database)."""


def one_line(e: BaseException | str) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__ if isinstance(e, BaseException) else "error"
    # DuckDB puts the useful hint ("Did you mean ...", candidates) on later lines: keep them, joined.
    return " ".join(lines[:3])[:600]


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed early")
        buf += chunk
    return bytes(buf)


def check_read_only(sql: str) -> None:
    try:
        stmts = duckdb.extract_statements(sql)
    except duckdb.Error as e:
        raise QueryError(one_line(e)) from None
    if not stmts:
        raise QueryError("empty query")
    for st in stmts:
        if st.type.name not in READ_STATEMENTS:
            raise QueryError(f"only SELECT queries are allowed while tracing (got {st.type.name})")


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
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # a stale socket from a killed tracer
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            sock.bind(self.path)
        except OSError as e:
            sock.close()
            from apptrace.store import StoreError

            raise StoreError(f"cannot serve queries on {self.path}: {e.strerror or e}") from None
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
                conn.sendall(b"S")
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
                (n,) = struct.unpack(">I", _recv_exact(conn, 4))
                if n > MAX_REQUEST:
                    raise QueryError("request too large")
                req = json.loads(_recv_exact(conn, n).decode("utf-8"))
                sql = req["sql"]
                check_read_only(sql)
                self._stream(conn, sql)
            except (ConnectionError, OSError, _Aborted):
                return
            except Exception as e:  # every failure goes back as one line
                msg = one_line(e).encode("utf-8")
                with contextlib.suppress(OSError):
                    conn.sendall(b"E" + struct.pack(">Q", len(msg)) + msg)


# -- client side ---------------------------------------------------------------------------------------------
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
        s.sendall(struct.pack(">I", len(body)) + body)
        status = _recv_exact(s, 1)
        if status == b"S":
            try:
                with s.makefile("rb") as f:
                    return pa.ipc.open_stream(f).read_all()
            except pa.ArrowInvalid as e:
                raise QueryError(f"the tracer stopped sending the result: {one_line(e)}") from None
        if status != b"E":
            raise QueryError(f"unexpected answer from the tracer ({status!r})")
        (n,) = struct.unpack(">Q", _recv_exact(s, 8))
        raise QueryError(_recv_exact(s, n).decode("utf-8", "replace"))


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
            try:
                con = duckdb.connect(path, read_only=True)
            except duckdb.Error as e:
                msg = one_line(e)
                if "lock" in msg.lower():
                    raise QueryError(f"{path} is held by another process (a tracer without its socket?): "
                                     f"{msg}") from None
                raise QueryError(f"cannot open {path}: {msg}") from None
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
