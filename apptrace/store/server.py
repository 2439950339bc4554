"""The query server: read-only SQL on ``<db>.sock`` for the tracer's Store (protocol: ``wire``).

Only SELECT-like statements are accepted (the socket is for reading). The socket is created with
mode 0600, and the server also checks the peer's uid (SO_PEERCRED): only root or the tracer's own user.
A query whose client goes away (Ctrl-C on ``apptrace sql``, a killed script) is interrupted at once
(DuckDB's ``interrupt()``), so an abandoned query never keeps the tracer's CPU or memory; each one is
counted (``QueryServer.interrupted``) and said on stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import struct
import sys
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
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


#: poll events that say the client hung up (POLLRDHUP: it shut its end; Linux only)
_HANGUP = select.POLLHUP | select.POLLERR | getattr(select, "POLLRDHUP", 0)


class _ClientWatch:
    """While a query runs, watches its client's socket and interrupts the query's cursor if the client goes.

    The client sends its whole request and then only reads, so anything the socket reports before the
    answer is complete (end of file, a hang-up, an error) means nobody waits for the result.
    """

    def __init__(self, conn: socket.socket, on_interrupt: Callable[[], None]) -> None:
        self._conn = conn
        self._on_interrupt = on_interrupt
        self._cursor: Any = None
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._cancel = threading.Event()  # the server is stopping: interrupt, whether the client waits or not
        self._thread = threading.Thread(target=self._watch, name="apptrace-query-watch", daemon=True)
        self._thread.start()

    def attach(self, cursor: Any) -> None:
        with self._lock:
            self._cursor = cursor

    def cancel(self) -> None:
        self._cancel.set()

    def stop(self) -> None:
        """The query is over (answered, failed or interrupted): stop watching before the cursor closes."""
        with self._lock:
            self._cursor = None
        self._done.set()
        self._thread.join(timeout=5)

    def _gone(self) -> bool:
        try:
            return self._conn.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def _watch(self) -> None:
        poller = select.poll()
        try:
            poller.register(self._conn.fileno(), select.POLLIN | _HANGUP)
        except (OSError, ValueError):
            return
        while not self._done.is_set() and not self._cancel.is_set():
            events = poller.poll(100)
            if not events:
                continue
            if any(ev & _HANGUP for _, ev in events) or self._gone():
                break
            # Bytes the protocol has no use for: ignore them, keep watching for the hang-up.
            poller.modify(self._conn.fileno(), _HANGUP)
        else:
            if not self._cancel.is_set():
                return
        # The client is gone (or the server stops). An interrupt that comes before DuckDB starts executing
        # is lost, so it is repeated until the query ends (stop()).
        counted = self._cancel.is_set()  # a stopping server is not a client that went away
        while True:
            with self._lock:
                if self._done.is_set():
                    return
                if self._cursor is not None:
                    with contextlib.suppress(duckdb.Error):
                        self._cursor.interrupt()
                    if not counted:
                        counted = True
                        self._on_interrupt()
            self._done.wait(0.1)


class QueryServer:
    """Serves read-only SQL over `<db>.sock` for a Store (anything with `query_arrow(sql)`)."""

    def __init__(self, store: Any, path: str,
                 while_serving: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        self.store = store
        self.path = path
        #: entered around each query (the analysis process runs them above its own idle priority)
        self._while_serving = while_serving or contextlib.nullcontext
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        #: queries interrupted because their client went away
        self.interrupted = 0
        self._count_lock = threading.Lock()
        self._active: set[_ClientWatch] = set()  # queries running now
        self._handlers: set[threading.Thread] = set()

    def _count_interrupt(self) -> None:
        with self._count_lock:
            self.interrupted += 1
            n = self.interrupted
        with contextlib.suppress(OSError, ValueError):
            print(f"apptrace: query server: a client went away mid-query; its query was interrupted ({n} so far)",
                  file=sys.stderr, flush=True)

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
        """Stop accepting, interrupt the queries still running (the store closes next: DuckDB refuses to close a
        connection a query is busy on) and wait for their answers to end."""
        self._stopping.set()
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._count_lock:
            active, handlers = list(self._active), list(self._handlers)
        for watch in active:
            watch.cancel()
        for t in handlers:
            t.join(timeout=10)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def _accept_loop(self) -> None:
        assert self._sock is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            t = threading.Thread(target=self._handle, args=(conn,), daemon=True)
            with self._count_lock:
                self._handlers = {h for h in self._handlers if h.is_alive()}
                self._handlers.add(t)
            t.start()

    def _peer_allowed(self, conn: socket.socket) -> bool:
        try:
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        except (OSError, AttributeError):
            return True  # no SO_PEERCRED here: the 0600 socket mode is the guard
        _pid, uid, _gid = struct.unpack("3i", creds)
        return uid in (0, os.getuid())

    def _stream(self, conn: socket.socket, sql: str) -> None:
        query_reader = getattr(self.store, "query_reader", None)
        watch = _ClientWatch(conn, self._count_interrupt)
        with self._count_lock:
            self._active.add(watch)
        if self._stopping.is_set():
            watch.cancel()
        try:
            if query_reader is None:  # any object with query_arrow() will do, unstreamed
                table = self.store.query_arrow(sql)
                ctx: Any = contextlib.nullcontext(pa.RecordBatchReader.from_batches(table.schema,
                                                                                    table.to_batches()))
            else:
                ctx = query_reader(sql, on_cursor=watch.attach)
            with ctx as reader, contextlib.ExitStack() as done:
                done.callback(watch.stop)  # before the cursor closes
                first = next(iter(reader), None)  # errors found while running surface here, before "S"
                conn.sendall(RESULT)
                try:
                    with conn.makefile("wb") as f, pa.ipc.new_stream(f, reader.schema) as w:
                        if first is not None:
                            w.write_batch(first)
                        for batch in reader:
                            w.write_batch(batch)
                        watch.stop()  # every row is sent: from here the client may close whenever it likes
                except Exception:  # mid-stream: the client sees the stream end early and says so
                    raise _Aborted() from None
        except duckdb.Error as e:
            raise QueryError(one_line(e)) from None
        finally:
            watch.stop()
            with self._count_lock:
                self._active.discard(watch)

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
                with self._while_serving():
                    self._stream(conn, sql)
            except (ConnectionError, OSError, _Aborted):
                return
            except Exception as e:  # every failure goes back as one line
                msg = one_line(e).encode("utf-8")
                with contextlib.suppress(OSError):
                    conn.sendall(ERROR + ERROR_LENGTH.pack(len(msg)) + msg)


