"""Connection tracking: capture events in, per-connection byte streams to the protocol parsers, rows out.

A connection is keyed by (pid, fd, generation); the generation is a run-wide serial. Memory-BIO apps (node) make no syscall inside SSL_read/SSL_write,
so a connection may start keyed by its SSL* alone and be re-keyed when the kernel
learns its fd (an EV_BIND event). Each direction keeps the stream position of the
next expected byte: a record that starts further on means bytes were lost, and the
parser is told so (``gap``) instead of being fed a stream with a hole in it.

This is the only module that calls the protocol parsers. It reads nothing from /proc:
live capture and replay feed it the same events and annotations.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from apptrace.analysis.config import Totals
from apptrace.analysis.routes import Routes
from apptrace.analysis.services import parse_service_rules
from apptrace.analysis.sinks import Sink
from apptrace.contract.annotations import (
    Annotation,
    LibraryProbed,
    LibraryUnprobeable,
    Losses,
    ProcessMissed,
    ProcessSeen,
    ProtocolUnknown,
    SocketSeen,
)
from apptrace.contract.events import (
    EV_BIND,
    EV_CLOSE,
    EV_CONN,
    EV_EXEC,
    EV_EXIT,
    LOSS_KINDS,
    DataEvent,
    MetaEvent,
    decode,
)
from apptrace.contract.rawfile import KIND_EVENT, Item
from apptrace.protocols import ConnectionTracker, ParserCaches, ParserConfig, Record


@dataclass
class Process:
    pid: int
    comm: str = ""
    exe: str = ""
    cmdline: str = ""
    service: str = ""
    start_time: int | None = None  # wall ns
    tls_libs: set[str] = field(default_factory=set)
    container_id: str | None = None
    pod_uid: str | None = None
    missed: str | None = None  # why its first TLS requests may be missing (ProcessMissed)
    unknown_protocol_conns: int = 0  # plaintext connections of no protocol apptrace parses (ProtocolUnknown)


@dataclass
class Connection:
    pid: int
    fd: int  # -1 while known only by its SSL*
    generation: int
    ssl: int  # the SSL* (or *tls.Conn); a plaintext socket's: PLAIN_SESSION_BIT | its open_ts
    tls_lib: str | None  # None: a plaintext socket
    open_ts: int
    tracker: ConnectionTracker | None = None
    role: str | None = None
    local_addr: str | None = None
    local_port: int | None = None
    remote_addr: str | None = None
    remote_port: int | None = None
    close_ts: int | None = None
    closing_ts: int | None = None  # a Go session's close(), held back for calls still returning (see GO_CLOSE_GRACE_NS)
    next_pos: list[int | None] = field(default_factory=lambda: [None, None])  # [ingress, egress]
    bytes_sent: int = 0
    bytes_recv: int = 0
    gap_bytes: int = 0
    records: int = 0
    dirty: bool = True

    conn_id: str = ""

    def __post_init__(self) -> None:
        # Fixed for the connection's life, so its rows and its `connections` row agree even when a
        # connection first known by its SSL* (fd -1) is later tied to its fd.
        self.conn_id = f"{self.pid}:{self.fd}:{self.generation}"


# Go's Read is recorded at its RET, and another goroutine may close the socket in between (a Write was
# too, in captures before bpf/tls_capture.c recorded it at entry: grpc-go's writer returned from a Write
# whose bytes the peer had already answered by hanging up, after the reader saw EOF and closed the fd).
# That record comes after the close, with its stream position restarted by the kernel (the close forgot
# the session). So a Go session's close is held back this long (event time), and a record of the same
# *tls.Conn meanwhile is still that session's: the object a call runs on cannot be freed and reused for
# another connection while the call is in it.
GO_CLOSE_GRACE_NS = 1_000_000_000


class Pipeline:
    """Events and annotations in (live or replayed); rows out to ``sink``."""

    # Defaults for a pipeline restored from a checkpoint written before these counters existed.
    _tracker_unknown_conns = 0
    _kernel_unknown_conns = 0

    def __init__(
        self,
        sink: Sink,
        *,
        clock_offset_ns: int,
        parser_config: ParserConfig | None = None,
        max_capture_per_call: int = 1 << 20,
        service_rules: list[str] | None = None,
        on_rows: Callable[[str, list[dict]], None] | None = None,
        tap: Callable[[Connection, bool, bytes, int], None] | None = None,
        host: str | None = None,
    ) -> None:
        self.sink = sink
        self.host = host  # where the capture was taken (its header's host name): on every row
        self.clock_offset = clock_offset_ns  # monotonic ns + offset = wall ns
        self.parser_config = parser_config or ParserConfig()
        # Connections repeat each other (the same heads, header blocks, statements): their parses are shared.
        self.parser_caches = ParserCaches()
        self.routes = Routes()
        self.max_capture_per_call = max_capture_per_call
        self.service_rules = parse_service_rules(service_rules or [])
        self.on_rows = on_rows
        self.tap = tap  # sees every plaintext byte fed, in stream order (replay --streams, tests)
        self.connection_count = 0
        self.processes: dict[int, Process] = {}
        self.by_fd: dict[tuple[int, int], Connection] = {}
        self.by_ssl: dict[tuple[int, int], Connection] = {}
        self._generations = 0
        self.sockets: dict[tuple[int, int], SocketSeen] = {}  # (pid, fd) -> what /proc said, until close
        self.conn_info: dict[tuple[int, int], MetaEvent] = {}  # (pid, fd) -> EV_CONN, until close
        self.closed: list[Connection] = []
        self.closing: dict[tuple[int, int], Connection] = {}  # (pid, *tls.Conn) -> Go sessions closing
        self.totals = Totals()
        self._flushed_totals = Totals()
        self.kernel_losses: dict[str, int] = dict.fromkeys(LOSS_KINDS, 0)
        self.libraries: dict[str, LibraryProbed] = {}
        self.unprobeable: dict[str, str] = {}
        self.pending_rows: dict[str, list[dict]] = {}
        self._dirty_procs: set[int] = set()
        self.last_ts = 0
        #: spool bytes captured and not yet analysed, set by the analysis loop; a gauge, not a counter
        self.backlog_bytes: int | None = None
        self._flushed_backlog: int | None = None
        self._closed_parse_errors = 0  # parse errors of connections already closed
        # unknown_protocol_conns: connections the parsers never recognised, plus the plaintext sockets the
        # kernel decided were no supported protocol from their first bytes (and never copied)
        self._tracker_unknown_conns = 0
        self._kernel_unknown_conns = 0

    # ---- annotations (what /proc said at capture time) ----
    def annotate(self, a: Annotation) -> None:
        kind = type(a)
        if kind is ProcessSeen:
            p = self.processes.get(a.pid) or Process(a.pid)
            p.comm, p.exe, p.cmdline = a.comm or p.comm, a.exe or p.exe, a.cmdline or p.cmdline
            p.service = self._service(p, a.service or p.comm)
            if a.start_time is not None:
                p.start_time = a.start_time
            p.container_id, p.pod_uid = a.container_id or p.container_id, a.pod_uid or p.pod_uid
            self.processes[p.pid] = p
            self._dirty_procs.add(p.pid)
        elif kind is SocketSeen:
            self.sockets[(a.pid, a.fd)] = a
            conn = self.by_fd.get((a.pid, a.fd))
            if conn is not None:
                self._apply_socket(conn, a)
        elif kind is LibraryProbed:
            self.libraries[a.path] = a
        elif kind is LibraryUnprobeable:
            self.unprobeable[a.path] = a.reason
        elif kind is ProcessMissed:
            p = self._named_process(a.pid, a.comm)
            p.missed = a.reason
        elif kind is ProtocolUnknown:
            p = self._named_process(a.pid, a.comm)
            p.unknown_protocol_conns = a.conns
        elif kind is Losses:
            self.kernel_losses = a.kernel()
            self.totals.lost_events = a.lost_events
            self._kernel_unknown_conns = a.unknown_protocol_conns
            self.totals.truncated_bytes = a.truncated_bytes
            self.totals.backlog_dropped_events = a.backlog_dropped_events
            self.totals.disk_full_dropped_events = a.disk_full_dropped_events

    def _service(self, p: Process, default: str) -> str:
        for name, match in self.service_rules:
            if match(p):
                return name
        return default

    def _named_process(self, pid: int, comm: str) -> Process:
        """``pid``'s process, dirty, named ``comm`` if nothing better is known of it (no ProcessSeen yet)."""
        p = self._process(pid)
        if comm and comm != "?" and p.comm == str(pid):  # "?": capture could not read it either
            p.comm = comm
            if p.service == str(pid):
                p.service = self._service(p, comm)
        self._dirty_procs.add(pid)
        return p

    def _process(self, pid: int) -> Process:
        p = self.processes.get(pid)
        if p is None:
            p = self.processes[pid] = Process(pid, comm=str(pid), service=str(pid))
            self._dirty_procs.add(pid)
        return p

    def take(self, items: Iterable[Item]) -> int:
        """Frames as the spool and raw files hold them (records and annotations, in order); how many."""
        handle, annotate = self.handle, self.annotate
        n = 0
        for kind, payload in items:
            if kind == KIND_EVENT:
                handle(decode(payload))  # type: ignore[arg-type]
            else:
                annotate(payload)  # type: ignore[arg-type]
            n += 1
        return n

    # ---- kernel events ----
    def handle(self, ev: DataEvent | MetaEvent) -> None:
        self.last_ts = max(self.last_ts, ev.ts)
        if self.closing:
            self._end_closing(self.last_ts)
        if type(ev) is DataEvent:
            self._data(ev)
            return
        t = ev.type
        if t == EV_CONN:
            p = self.processes.get(ev.pid)
            if ev.comm and (p is None or p.comm == str(ev.pid)):
                # A process we never saw exec and could not read in /proc (a forked backend gone by now).
                p = self._process(ev.pid)
                p.comm = ev.comm
                p.service = self._service(p, ev.comm)
                self._dirty_procs.add(ev.pid)
            self.conn_info[(ev.pid, ev.fd)] = ev
            conn = self.by_fd.get((ev.pid, ev.fd))
            if conn is not None:
                self._apply_conn_info(conn, ev)
        elif t == EV_BIND:
            self._bind(ev.pid, ev.ssl, ev.fd, ev.ts)
        elif t == EV_CLOSE:
            conn = self.by_fd.get((ev.pid, ev.fd))
            if conn is not None and conn.tls_lib == "go" and conn.ssl == ev.ssl:
                self._hold_close(conn, ev.ts)
            elif conn is not None:
                self._close(conn, ev.ts)
            self.sockets.pop((ev.pid, ev.fd), None)
            self.conn_info.pop((ev.pid, ev.fd), None)
        elif t == EV_EXIT:
            self._close_pid(ev.pid, ev.ts)
            # Bound memory over long runs: nothing more will come from this pid.
            for table in (self.sockets, self.conn_info):
                for key in [k for k in table if k[0] == ev.pid]:
                    del table[key]
        elif t == EV_EXEC:
            # A new image in the same pid: its old connections are gone with the old image.
            # A pid we have not seen doing TLS gets its row when (if ever) it does.
            self._close_pid(ev.pid, ev.ts)
            p = self.processes.get(ev.pid)
            if p is not None and ev.comm:
                p.comm = ev.comm
                if not p.service or p.service == str(ev.pid):
                    p.service = self._service(p, ev.comm)
                self._dirty_procs.add(ev.pid)

    def _generation(self) -> int:
        """Generations grow across the whole run, so (pid, fd, generation) stays unique when pids are reused."""
        self._generations += 1
        return self._generations

    def _close_pid(self, pid: int, ts: int) -> None:
        for conn in [c for c in self.closing.values() if c.pid == pid]:
            self._close(conn, conn.closing_ts)
        for conn in [c for c in self.by_ssl.values() if c.pid == pid]:
            self._close(conn, ts)

    def _hold_close(self, conn: Connection, ts: int) -> None:
        """The fd is free for the process's next connection at once; the session ends after the grace."""
        conn.closing_ts = ts
        del self.by_fd[(conn.pid, conn.fd)]
        if self.by_ssl.get((conn.pid, conn.ssl)) is conn:
            del self.by_ssl[(conn.pid, conn.ssl)]
        stale = self.closing.pop((conn.pid, conn.ssl), None)
        if stale is not None:
            self._close(stale, stale.closing_ts)
        self.closing[(conn.pid, conn.ssl)] = conn

    def _end_closing(self, now_ts: int) -> None:
        # Held in the order of their closes: only the oldest can be due, so each event costs one look.
        closing = self.closing
        while closing:
            key, conn = next(iter(closing.items()))
            if now_ts - conn.closing_ts <= GO_CLOSE_GRACE_NS:
                break
            del closing[key]
            self._close(conn, conn.closing_ts)

    def _late_record(self, ev: DataEvent) -> bool:
        """A Go call that returned after its socket's close: fed to its session, in order."""
        conn = self.closing.get((ev.pid, ev.ssl))
        if conn is None or ev.fd != conn.fd:
            return False
        d = 1 if ev.egress else 0
        if conn.next_pos[d] is not None:
            # the kernel's position restarted with the close: this call follows the last one fed
            ev = dataclasses.replace(ev, pos=conn.next_pos[d] - ev.offset)
        self._feed(conn, ev)
        return True

    def _data(self, ev: DataEvent) -> None:
        pid = ev.pid
        if self.closing and self._late_record(ev):
            return
        # The kernel reports an fd only when it is a connected or accepted socket of this process.
        if ev.fd >= 0:
            conn = self.by_fd.get((pid, ev.fd))
            if conn is not None and conn.ssl != ev.ssl:
                other = self.by_ssl.get((pid, ev.ssl))
                if other is None or other.fd >= 0:
                    # Another TLS session on this fd and no close seen: the fd was reused.
                    self._close(conn, ev.ts)
                # else: _bind adopts the SSL-keyed connection and ends this one.
                conn = None
            if conn is None:
                conn = self._bind(pid, ev.ssl, ev.fd, ev.ts, tls_lib=ev.tls_lib)
        else:
            conn = self.by_ssl.get((pid, ev.ssl))
            if conn is None:
                conn = self._new_connection(pid, -1, ev.ssl, ev.tls_lib, ev.ts)
        self._feed(conn, ev)

    def _new_connection(self, pid: int, fd: int, ssl: int, tls_lib: str, ts: int) -> Connection:
        stale = self.by_ssl.get((pid, ssl))
        if stale is not None:
            # The SSL* was freed and reused for a new session while we still held the old one.
            self._close(stale, ts)
        conn = Connection(pid=pid, fd=fd, generation=self._generation(), ssl=ssl, tls_lib=tls_lib, open_ts=ts)
        if fd >= 0:
            self.by_fd[(pid, fd)] = conn
            self._apply_known(conn)
        self.by_ssl[(pid, ssl)] = conn
        self.connection_count += 1
        if tls_lib is not None:
            self._process(pid).tls_libs.add(tls_lib)
        return conn

    def _bind(self, pid: int, ssl: int, fd: int, ts: int, tls_lib: str | None = "unknown") -> Connection:
        """The kernel tied ``ssl`` to ``fd``: find or make the (pid, fd) connection, adopting an SSL-keyed one."""
        by_fd = self.by_fd.get((pid, fd))
        by_ssl = self.by_ssl.get((pid, ssl))
        if by_ssl is not None and by_ssl.fd < 0:
            if by_fd is not None and by_fd is not by_ssl:
                # The fd already carried another TLS session: that one ended.
                self._close(by_fd, ts)
            by_ssl.fd = fd
            by_ssl.dirty = True
            self.by_fd[(pid, fd)] = by_ssl
            self._apply_known(by_ssl)
            return by_ssl
        if by_fd is not None:
            if by_fd.ssl != ssl:
                self.by_ssl.pop((pid, by_fd.ssl), None)
                by_fd.ssl = ssl
                self.by_ssl[(pid, ssl)] = by_fd
            return by_fd
        return self._new_connection(pid, fd, ssl, tls_lib, ts)

    def _apply_known(self, conn: Connection) -> None:
        info = self.conn_info.get((conn.pid, conn.fd))
        if info is not None:
            self._apply_conn_info(conn, info)
        sock = self.sockets.get((conn.pid, conn.fd))
        if sock is not None:
            self._apply_socket(conn, sock)

    def _apply_socket(self, conn: Connection, sock: SocketSeen) -> None:
        """/proc's view, read when user space got to the event: only fills what the kernel did not say.

        By then the fd may hold the process's next connection; if /proc disagrees with an
        address the kernel gave, it is describing that other connection and is ignored.
        """
        if (conn.local_port is not None and sock.local_port is not None
                and (sock.local_addr, sock.local_port) != (conn.local_addr, conn.local_port)):
            return
        if (conn.remote_port is not None and sock.remote_port is not None
                and (sock.remote_addr, sock.remote_port) != (conn.remote_addr, conn.remote_port)):
            return
        if conn.local_port is None and sock.local_port is not None:
            conn.local_addr, conn.local_port = sock.local_addr, sock.local_port
        if conn.remote_port is None and sock.remote_port is not None:
            conn.remote_addr, conn.remote_port = sock.remote_addr, sock.remote_port
        if sock.family == "unix":
            # No ports: the socket's path is the address, on the side that names it (the server's
            # local one, the path a client connected to as its remote one).
            conn.local_addr = conn.local_addr or sock.local_addr
            conn.remote_addr = conn.remote_addr or sock.remote_addr
        if conn.role is None and sock.local_port is not None:
            conn.role = "server" if sock.listening_local_port else "client"
        conn.dirty = True

    def _apply_conn_info(self, conn: Connection, info: MetaEvent) -> None:
        """The kernel's view, taken when it happened: connect()/accept() name the role, and the
        addresses come from the syscall and the TCP stack. It wins over /proc."""
        if info.role:
            conn.role = info.role
        if info.remote_port:
            conn.remote_addr, conn.remote_port = info.remote_addr, info.remote_port
        if info.local_port:
            conn.local_addr, conn.local_port = info.local_addr, info.local_port
        if info.open_ts:
            conn.open_ts = min(conn.open_ts, info.open_ts)
        conn.dirty = True

    def _feed(self, conn: Connection, ev: DataEvent) -> None:
        tracker = conn.tracker
        if tracker is None:
            tracker = conn.tracker = ConnectionTracker(role=conn.role, config=self.parser_config,
                                                        caches=self.parser_caches)
        d = 1 if ev.egress else 0
        data = ev.data
        n = len(data)
        start = ev.pos + ev.offset
        expected = conn.next_pos[d]
        self.totals.events += 1
        if expected is not None and start != expected:
            if start > expected:
                self._gap(conn, ev.egress, start - expected, ev.ts)
            else:
                skip = expected - start  # overlap: already fed
                if skip >= n:
                    return
                data = data[skip:]
                start = expected
                n = len(data)
        records: list[Record] = []
        if n:
            if self.tap is not None:
                self.tap(conn, ev.egress, data, ev.ts)
            records = tracker.feed(ev.egress, data, ev.ts)
        end = start + n
        call_end = ev.pos + ev.orig_len
        if end < call_end and ev.offset + len(ev.data) >= self.max_capture_per_call:
            # The kernel copies at most max_capture_per_call bytes of one SSL call: the rest is a gap.
            self._gap(conn, ev.egress, call_end - end, ev.ts)
            end = call_end
        conn.next_pos[d] = end
        if ev.egress:
            conn.bytes_sent += n
        else:
            conn.bytes_recv += n
        self.totals.bytes += n
        conn.dirty = True
        if records:
            self._emit(conn, records)

    def _gap(self, conn: Connection, egress: bool, nbytes: int, ts: int) -> None:
        conn.gap_bytes += nbytes
        self.totals.gap_bytes += nbytes
        if conn.tracker is not None:
            records = conn.tracker.gap(egress, nbytes, ts)
            if records:
                self._emit(conn, records)

    def _close(self, conn: Connection, ts: int) -> None:
        if conn.close_ts is not None:
            return
        conn.close_ts = ts
        if conn.tracker is not None:
            records = conn.tracker.close(ts)
            if records:
                self._emit(conn, records)
            if conn.tracker.protocol == "unknown":
                self._tracker_unknown_conns += 1
            self._closed_parse_errors += int(conn.tracker.stats.get("parse_errors", 0))
        if conn.fd >= 0 and self.by_fd.get((conn.pid, conn.fd)) is conn:
            del self.by_fd[(conn.pid, conn.fd)]
        if self.by_ssl.get((conn.pid, conn.ssl)) is conn:
            del self.by_ssl[(conn.pid, conn.ssl)]
        conn.dirty = True
        self.closed.append(conn)

    def _emit(self, conn: Connection, records: list[Record]) -> None:
        p = self._process(conn.pid)
        role = conn.role or (conn.tracker.role if conn.tracker else None)
        off = self.clock_offset
        routes = self.routes
        host = self.host
        for rec in records:
            row = dict(rec.fields)
            row["time_"] = rec.time_ns + off
            row["latency"] = rec.latency_ns
            row["pid"] = conn.pid
            row["comm"] = p.comm
            row["service"] = p.service
            row["trace_role"] = role
            row["local_addr"] = conn.local_addr
            row["local_port"] = conn.local_port
            row["remote_addr"] = conn.remote_addr
            row["remote_port"] = conn.remote_port
            row["encrypted"] = conn.tls_lib is not None
            row["tls_lib"] = conn.tls_lib
            row["host"] = host
            row["container_id"] = p.container_id
            row["conn_id"] = conn.conn_id
            if "req_path" in row:
                row["req_route"] = routes(row["req_path"])
            self.pending_rows.setdefault(rec.table, []).append(row)
        conn.records += len(records)
        self.totals.records += len(records)

    # ---- periodic work ----
    def expire(self, now_ts: int) -> None:
        if self.closing:
            self._end_closing(now_ts)
        for conn in list(self.by_ssl.values()):
            if conn.tracker is not None:
                records = conn.tracker.expire(now_ts)
                if records:
                    self._emit(conn, records)

    def _connection_row(self, conn: Connection) -> dict:
        tracker = conn.tracker
        stats = tracker.stats if tracker is not None else {}
        p = self._process(conn.pid)
        off = self.clock_offset
        return {
            "conn_id": conn.conn_id,
            "pid": conn.pid,
            "fd": conn.fd,
            "comm": p.comm,
            "service": p.service,
            "trace_role": conn.role or (tracker.role if tracker else None),
            "local_addr": conn.local_addr,
            "local_port": conn.local_port,
            "remote_addr": conn.remote_addr,
            "remote_port": conn.remote_port,
            "tls_lib": conn.tls_lib,
            "protocol": tracker.protocol if tracker else None,
            "open_time": conn.open_ts + off,
            "close_time": conn.close_ts + off if conn.close_ts is not None else None,
            "bytes_sent": conn.bytes_sent,
            "bytes_recv": conn.bytes_recv,
            "gap_bytes": conn.gap_bytes,
            "parse_errors": int(stats.get("parse_errors", 0)),
            "records": conn.records,
            "evicted": int(stats.get("evicted", 0)),
            "host": self.host,
            "container_id": p.container_id,
        }

    def drain(self) -> None:
        """Hand everything new to the sink: rows, connections, processes, capture stats."""
        for table, rows in self.pending_rows.items():
            if rows:
                self.sink.add_events(table, rows)
                if self.on_rows is not None:
                    self.on_rows(table, rows)
        self.pending_rows = {}
        conns = [c for c in list(self.by_ssl.values()) + self.closed if c.dirty]
        if conns:
            self.sink.upsert_connections([self._connection_row(c) for c in conns])
            for c in conns:
                c.dirty = False
        self.closed = []
        if self._dirty_procs:
            rows = []
            for pid in self._dirty_procs:
                p = self.processes[pid]
                rows.append({"pid": p.pid, "comm": p.comm, "exe": p.exe, "cmdline": p.cmdline, "service": p.service,
                             "start_time": p.start_time, "tls_libs": ",".join(sorted(p.tls_libs)),
                             "host": self.host, "container_id": p.container_id, "pod_uid": p.pod_uid,
                             "missed": p.missed, "unknown_protocol_conns": p.unknown_protocol_conns})
            self.sink.upsert_processes(rows)
            self._dirty_procs = set()
        self.totals.parse_errors = self._parse_errors_total()
        self.totals.unknown_protocol_conns = self._tracker_unknown_conns + self._kernel_unknown_conns
        delta = self.totals.delta(self._flushed_totals)
        if any(delta.values()) or (self.last_ts and self.backlog_bytes != self._flushed_backlog):
            delta["time_"] = self.last_ts + self.clock_offset
            delta["backlog_bytes"] = self.backlog_bytes
            delta["host"] = self.host
            self._flushed_backlog = self.backlog_bytes
            self.sink.add_capture_stats([delta])
            self._flushed_totals = Totals(**{k: getattr(self.totals, k) for k in Totals.__dataclass_fields__})

    def _parse_errors_total(self) -> int:
        live = sum(int(c.tracker.stats.get("parse_errors", 0)) for c in self.by_ssl.values() if c.tracker)
        return self._closed_parse_errors + live

    def finish(self) -> None:
        ts = self.last_ts
        self._end_closing(ts + GO_CLOSE_GRACE_NS + 1)
        for conn in list(self.by_ssl.values()):
            self._close(conn, ts)
        self.drain()

    def open_connections(self) -> list[Connection]:
        return list(self.by_ssl.values())
