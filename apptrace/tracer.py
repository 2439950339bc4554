"""The live tracer: attach, drain the ring buffer, enrich from /proc, feed the pipeline, store.

One process, one thread for capture: the ring buffer is drained on a short timer
(records are written without wake-ups, see bpf/tls_capture.c), each record is
annotated with what /proc knows (once per process and per socket), optionally written
to the raw file, and handed to ``conns.Pipeline``. The store is flushed every second.
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apptrace import procfs
from apptrace.conns import Pipeline
from apptrace.elfsyms import SymbolCache, TlsObject, Unprobeable
from apptrace.events import (
    EV_BIND,
    EV_CLOSE,
    EV_CONN,
    EV_DATA,
    EV_EXEC,
    EV_EXIT,
    DataEvent,
    MetaEvent,
    decode,
)
from apptrace.loader import CaptureConfig, LoadError, Probes, check_privileges, ensure_tracefs
from apptrace.rawlog import RawWriter

POLL_MS = 20
MAX_BATCH = 4096  # ring-buffer records taken per drain before they are processed
FLUSH_EVERY_S = 1.0
RESCAN_EVERY_S = 5.0
# After an exec, the dynamic loader maps the new image's libraries within milliseconds;
# dlopen()ed TLS libraries come later. Look again at these delays.
EXEC_RESCAN_DELAYS_S = (0.02, 0.1, 0.5, 2.0)


def clock_offset_ns() -> int:
    """wall-clock ns minus CLOCK_MONOTONIC ns (bpf_ktime_get_ns): added to kernel timestamps."""
    best = None
    for _ in range(5):
        a = time.monotonic_ns()
        w = time.time_ns()
        b = time.monotonic_ns()
        if best is None or b - a < best[0]:
            best = (b - a, w - (a + b) // 2)
    return best[1]


def _boot_time_ns() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return int(line.split()[1]) * 1_000_000_000
    return 0


def well_known_tls_libraries() -> list[str]:
    """System libssl files, attached up front so processes started later are covered from their first call."""
    paths: set[str] = set()
    try:
        out = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=5).stdout
        for line in out.splitlines():
            if "libssl.so" in line and "=>" in line:
                paths.add(line.split("=>", 1)[1].strip())
    except (OSError, subprocess.SubprocessError):
        pass
    for pattern in ("/usr/lib/*/libssl.so*", "/usr/lib/*/android/libssl.so*", "/lib/*/libssl.so*"):
        paths.update(glob.glob(pattern))
    return sorted(p for p in paths if os.path.isfile(p))


@dataclass
class Summary:
    processes: set[int] = field(default_factory=set)
    libraries: dict[str, str] = field(default_factory=dict)  # path -> tls_lib
    unprobeable: dict[str, str] = field(default_factory=dict)
    events: int = 0
    bytes: int = 0
    records: int = 0
    connections: int = 0
    losses: dict[str, int] = field(default_factory=dict)
    gap_bytes: int = 0
    parse_errors: int = 0
    raw_frames: int = 0
    duration_s: float = 0.0

    def lines(self) -> list[str]:
        libs = ", ".join(f"{p} ({k})" for p, k in sorted(self.libraries.items())) or "none"
        out = [
            f"apptrace: traced {len(self.processes)} processes for {self.duration_s:.1f}s; probed {len(self.libraries)} "
            f"TLS objects: {libs}",
            f"apptrace: {self.events} events, {self.bytes} plaintext bytes, {self.connections} connections, "
            f"{self.records} records",
            "apptrace: losses: "
            + ", ".join(f"{k}={v}" for k, v in self.losses.items())
            + f", gap_bytes={self.gap_bytes}, parse_errors={self.parse_errors}",
        ]
        for path, reason in sorted(self.unprobeable.items()):
            out.append(f"apptrace: cannot probe {path}: {reason}")
        if self.raw_frames:
            out.append(f"apptrace: wrote {self.raw_frames} raw frames")
        return out


class Enricher:
    """Reads /proc once per process and per socket, as annotations for the pipeline (and the raw file)."""

    def __init__(self) -> None:
        self.boot_ns = _boot_time_ns()
        self.hz = os.sysconf("SC_CLK_TCK")
        self.procs: set[int] = set()
        self.socks: set[tuple[int, int]] = set()

    def proc(self, pid: int) -> dict | None:
        info = procfs.process_info(pid)
        self.procs.add(pid)
        if info is None:
            return None
        d = info.as_dict()
        d["t"] = "proc"
        d["start_time"] = self.boot_ns + info.start_time_ticks * 1_000_000_000 // self.hz
        return d

    def sock(self, pid: int, fd: int, listen_fd: int = -1) -> dict:
        self.socks.add((pid, fd))
        info = procfs.socket_info(pid, fd)
        d: dict = {"t": "sock", "pid": pid, "fd": fd, "is_socket": info is not None}
        if info is not None:
            d.update(info.as_dict())
        if (info is None or info.local_port is None) and listen_fd >= 0:
            # The accepted socket is gone already; the listener it came from still says where we listen.
            listener = procfs.socket_info(pid, listen_fd)
            if listener is not None and listener.local_port is not None:
                d.update(is_socket=True, local_addr=listener.local_addr, local_port=listener.local_port,
                         listening_local_port=True, family=listener.family)
        return d

    def annotate(self, ev: DataEvent | MetaEvent) -> list[dict]:
        out: list[dict] = []
        pid = ev.pid
        if type(ev) is DataEvent:
            if pid not in self.procs:
                a = self.proc(pid)
                if a:
                    out.append(a)
            if ev.fd >= 0 and (pid, ev.fd) not in self.socks:
                out.append(self.sock(pid, ev.fd))
            return out
        t = ev.type
        if t == EV_CONN:
            if ev.local_port and ev.remote_port:
                self.socks.add((pid, ev.fd))  # the kernel said it all: no /proc read, no race
            else:
                out.append(self.sock(pid, ev.fd, ev.listen_fd))
        elif t == EV_BIND and (pid, ev.fd) not in self.socks:
            out.append(self.sock(pid, ev.fd))
        elif t == EV_CLOSE:
            self.socks.discard((pid, ev.fd))
        elif t == EV_EXEC:
            self.socks = {k for k in self.socks if k[0] != pid}
            a = self.proc(pid)
            if a:
                out.append(a)
        elif t == EV_EXIT:
            self.procs.discard(pid)
            self.socks = {k for k in self.socks if k[0] != pid}
        return out


class Tracer:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        config: CaptureConfig,
        store=None,
        raw_path: str | None = None,
        duration: float | None = None,
        log: Callable[[str], None] | None = None,
        extra_libs: list[str] | None = None,
        capture_only: bool = False,
    ) -> None:
        self.pipeline = pipeline
        self.config = config
        self.store = store
        self.duration = duration
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.extra_libs = extra_libs or []
        # Record raw events only; parsing happens later with `apptrace replay`.
        self.capture_only = capture_only
        self._captured_events = 0
        self._captured_bytes = 0
        self.symbols = SymbolCache()
        self.enricher = Enricher()
        self.queue: list[bytes] = []
        self.raw: RawWriter | None = None
        self.raw_path = raw_path
        self.summary = Summary()
        self._stop = False
        self._rescans: list[tuple[float, int]] = []  # (due monotonic s, pid)
        self._attach_failed: set[tuple[int, int]] = set()  # (dev, inode) we could not attach to
        self._seeded: set[int] = set()  # pids whose pre-existing sockets the kernel knows
        self.probes: Probes | None = None

    # ---- set-up ----
    def stop(self, *_: object) -> None:
        self._stop = True

    def _annotate(self, a: dict) -> None:
        if self.raw is not None:
            self.raw.annotation(a)
        self.pipeline.annotate(a)

    def _consider(self, path: str) -> TlsObject | Unprobeable | None:
        result = self.symbols.inspect(path)
        if isinstance(result, TlsObject):
            assert self.probes is not None
            if self.probes.is_attached(result) or (result.dev, result.ino) in self._attach_failed:
                return result
            display = path.split("/root", 1)[1] if path.startswith("/proc/") else path
            try:
                st = os.stat(display)
                if (st.st_dev, st.st_ino) == (result.dev, result.ino):
                    # The same file is visible from here: attach by a path that outlives the process.
                    result = dataclasses.replace(result, path=display)
            except OSError:
                pass
            try:
                self.probes.attach(result)
            except LoadError as exc:
                self._attach_failed.add((result.dev, result.ino))
                self.summary.unprobeable[display] = str(exc)
                self._annotate({"t": "unprobeable", "path": display, "reason": str(exc)})
                self.log(f"apptrace: {exc}")
                return None
            self.summary.libraries[display] = result.tls_lib
            self._annotate({"t": "lib", "path": display, "tls_lib": result.tls_lib, "offsets": result.offsets})
        elif isinstance(result, Unprobeable):
            display = path.split("/root", 1)[1] if path.startswith("/proc/") else path
            if display not in self.summary.unprobeable:
                self.summary.unprobeable[display] = result.reason
                self._annotate({"t": "unprobeable", "path": display, "reason": result.reason})
                self.log(f"apptrace: cannot probe {display}: {result.reason}")
        return result

    def _in_scope(self, pid: int) -> bool:
        if self.config.pids:
            return pid in self.config.pids
        if self.config.comms:
            info = procfs.process_info(pid)
            return info is not None and info.comm in self.config.comms
        return True

    def scan_pid(self, pid: int) -> None:
        if pid == os.getpid() or not self._in_scope(pid):
            return
        has_tls = False
        for _inside, openable in procfs.mapped_objects(pid):
            if isinstance(self._consider(openable), TlsObject):
                has_tls = True
        if has_tls and pid not in self._seeded:
            # Connections opened before we attached: no connect/accept was seen for them.
            self._seeded.add(pid)
            assert self.probes is not None
            for fd, server in procfs.tcp_sockets(pid):
                self.probes.seed_socket(pid, fd, 2 if server else 1)

    def scan_all(self) -> None:
        pids = self.config.pids or procfs.all_pids()
        for pid in pids:
            self.scan_pid(pid)

    # ---- event handling ----
    def _on_exec(self, ev: MetaEvent) -> None:
        if not self._in_scope(ev.pid) and not (self.config.comms and ev.comm in self.config.comms):
            return
        if self.config.comms and ev.comm in self.config.comms and self.probes is not None:
            self.probes.allow_pid(ev.pid)
        now = time.monotonic()
        for delay in EXEC_RESCAN_DELAYS_S:
            heapq.heappush(self._rescans, (now + delay, ev.pid))

    def _enqueue(self, buf: bytes) -> bool:
        """Queue one ring-buffer record; True when the batch is full and draining should pause."""
        if buf[0] == EV_EXEC:
            # Ahead of any backlog: a new binary with static TLS must be probed before its first call.
            self._attach_exe(decode(buf).pid)
        self.queue.append(buf)
        return len(self.queue) >= MAX_BATCH

    def _attach_exe(self, pid: int) -> None:
        if not self._in_scope(pid) and not self.config.comms:
            return
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return
        self._consider(f"/proc/{pid}/root{exe}")

    def process_queue(self) -> None:
        queue, self.queue = self.queue, []
        raw = self.raw
        pipeline = self.pipeline
        annotate = self.enricher.annotate
        for buf in queue:
            ev = decode(buf)
            for a in annotate(ev):
                if raw is not None:
                    raw.annotation(a)
                pipeline.annotate(a)
            if raw is not None:
                raw.event(buf)
            if buf[0] == EV_EXEC:
                self._on_exec(ev)
            if buf[0] == EV_DATA:
                self.summary.processes.add(ev.pid)
                if self.capture_only:
                    self._captured_events += 1
                    self._captured_bytes += len(ev.data)
                    continue
            if not self.capture_only:
                pipeline.handle(ev)

    def _periodic(self, now: float) -> None:
        assert self.probes is not None
        self._annotate({"t": "losses", **self.probes.losses()})
        self.pipeline.expire(time.monotonic_ns())
        self.pipeline.drain()
        if self.store is not None:
            self.store.flush()
        if self.raw is not None:
            self.raw.flush()

    def _run_rescans(self, now: float) -> None:
        while self._rescans and self._rescans[0][0] <= now:
            _, pid = heapq.heappop(self._rescans)
            self.scan_pid(pid)

    # ---- main loop ----
    def run(self) -> Summary:
        why = check_privileges()
        if why:
            raise LoadError(why)
        msg = ensure_tracefs()
        if msg:
            self.log(f"apptrace: {msg}")
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM)}
        started = time.monotonic()
        try:
            self.probes = Probes(self.config, self._enqueue)
            self.probes.seed_listen_ports(procfs.listening_ports())
            if self.raw_path:
                self.raw = RawWriter(self.raw_path, {
                    "clock_offset_ns": self.pipeline.clock_offset,
                    "max_capture_per_call": self.config.max_capture_per_call,
                    "max_body": self.pipeline.parser_config.max_body,
                    "started": time.time_ns(),
                    "host": os.uname().nodename,
                })
            if not self.config.pids:
                for path in well_known_tls_libraries():
                    self._consider(path)
            for path in self.extra_libs:
                self._consider(path)
            self.scan_all()
            if not self.summary.libraries:
                self.log("apptrace: no TLS library found yet; waiting for processes that load one")
            scope = (
                f"pids {','.join(map(str, self.config.pids))}" if self.config.pids
                else f"comm {','.join(self.config.comms)}" if self.config.comms else "all processes"
            )
            self.log(f"apptrace: tracing {scope}: {self.probes.probe_count()} uprobes on "
                     f"{len(self.summary.libraries)} TLS objects (Ctrl-C to stop)")
            deadline = time.monotonic() + self.duration if self.duration else None
            next_flush = time.monotonic() + FLUSH_EVERY_S
            next_rescan = time.monotonic() + RESCAN_EVERY_S
            while not self._stop:
                self.probes.poll(POLL_MS)
                if self.queue:
                    self.process_queue()
                now = time.monotonic()
                if self._rescans:
                    self._run_rescans(now)
                if now >= next_flush:
                    self._periodic(now)
                    next_flush = now + FLUSH_EVERY_S
                if now >= next_rescan:
                    self.scan_all()
                    next_rescan = now + RESCAN_EVERY_S
                if deadline is not None and now >= deadline:
                    break
            # Last drain: what the kernel already wrote is not lost.
            while True:
                self.probes.poll(0)
                if not self.queue:
                    break
                self.process_queue()
            self._annotate({"t": "losses", **self.probes.losses()})
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if self.probes is not None:
                self.summary.losses = self.probes.losses()
                self.probes.close()
            self.pipeline.finish()
            if self.store is not None:
                self.store.close()
            if self.raw is not None:
                self.raw.close()
                self.summary.raw_frames = self.raw.frames
        self._fill_summary(time.monotonic() - started)
        return self.summary

    def _fill_summary(self, duration: float) -> None:
        t = self.pipeline.totals
        s = self.summary
        s.duration_s = duration
        s.events, s.bytes, s.records = t.events, t.bytes, t.records
        if self.capture_only:
            s.events, s.bytes = self._captured_events, self._captured_bytes
        s.gap_bytes, s.parse_errors = t.gap_bytes, t.parse_errors
        s.connections = self.pipeline.connection_count
