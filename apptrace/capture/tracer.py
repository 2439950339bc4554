"""The capture process: attach, drain the ring buffer, note what /proc knows, write the spool.

One thread: the ring buffer is drained on a short timer (records are written without
wake-ups, see bpf/tls_capture.c) and appended to the outputs: the spool that the analysis
process (``apptrace.analysis``) follows, and the --raw file if asked for. Nothing here parses:
this loop must keep pace with the kernel, so it does the least Python per record.

Most records are data on connections the kernel already described, from processes
already announced (EV_TGID): those are copied to the outputs in runs, straight from the
ring, without a look at each. The rest (connection, process and close events, and data
records the kernel flags FLAG_LOOK because it knows no connection on their fd) are looked
at one by one and annotated with what /proc knows, once per process and per socket.
"""

from __future__ import annotations

import dataclasses
import glob
import heapq
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from apptrace.capture import procfs
from apptrace.capture.elfsyms import SymbolCache, TlsObject, Unprobeable
from apptrace.capture.enrich import Enricher
from apptrace.capture.loader import CaptureConfig, LoadError, Probes, check_privileges, ensure_tracefs
from apptrace.capture.pause import NOTHING, PROBED, Pauser
from apptrace.contract.annotations import (
    Annotation,
    LibraryProbed,
    LibraryUnprobeable,
    Losses,
    ProcessMissed,
    ProtocolUnknown,
)
from apptrace.contract.events import (
    DATA_HDR_SIZE,
    DATA_PID_FD_LEN,
    EV_DATA,
    EV_EXEC,
    EV_TGID,
    ROLE_CLIENT,
    ROLE_SERVER,
    MetaEvent,
    decode,
)

if TYPE_CHECKING:
    from apptrace.contract.spool import SpoolWriter

POLL_MS = 20  # the default --drain-ms
MAX_BATCH = 4096  # ring-buffer records taken per drain before they are processed
TICK_S = 1.0
RESCAN_EVERY_S = 5.0
# After an exec, the dynamic loader maps the new image's libraries within milliseconds;
# dlopen()ed TLS libraries come later. Look again at these delays.
EXEC_RESCAN_DELAYS_S = (0.02, 0.1, 0.5, 2.0)
MISSED_FILE = "missed.json"  # in the spool: the processes named as missed, for `apptrace doctor`
MISSED_KEPT = 100


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
class CaptureSummary:
    """What capture did, for the end-of-run summary (the analysis process adds its own)."""

    processes: set[int] = field(default_factory=set)
    libraries: dict[str, str] = field(default_factory=dict)  # path -> tls_lib
    unprobeable: dict[str, str] = field(default_factory=dict)  # path -> why
    # pid -> (comm, why): processes whose TLS library may have run before its probes were in
    missed: dict[int, tuple[str, str]] = field(default_factory=dict)
    paused: int = 0  # processes stopped until their TLS object was probed, and continued
    pause_ms_max: float = 0.0
    pause_ms_mean: float = 0.0
    events: int = 0
    bytes: int = 0
    losses: dict[str, int] = field(default_factory=dict)  # the kernel's counters, by LOSS_KINDS name
    backlog_dropped_events: int = 0  # data records the spool refused past --spool-max
    disk_full_dropped_events: int = 0  # records the spool could not write: no room on its filesystem
    raw_frames: int = 0
    duration_s: float = 0.0
    plaintext: bool = True  # plaintext sockets were watched (not --no-plaintext)
    unknown_protocol: dict[int, tuple[str, int]] = field(default_factory=dict)  # pid -> (comm, connections)


class Downstream(Protocol):
    """The analysis process, as capture sees it: started first, it must be ready before probes go on."""

    @property
    def pid(self) -> int: ...
    @property
    def exit_code(self) -> int | None: ...
    def wait_ready(self) -> str | None: ...
    def alive(self) -> bool: ...
    def restart(self) -> str | None: ...


class Output(Protocol):
    """Where capture puts records and annotations: the spool, the --raw file."""

    frames: int

    def event(self, buf: bytes) -> None: ...
    def run(self, ring_bytes: bytes, records: int, nbytes: int) -> None: ...
    def annotation(self, a: Annotation) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class Tracer:
    def __init__(
        self,
        *,
        config: CaptureConfig,
        spool: SpoolWriter | None = None,
        raw: Output | None = None,
        analysis: Downstream | None = None,
        duration: float | None = None,
        log: Callable[[str], None] | None = None,
        extra_libs: list[str] | None = None,
        drain_ms: int = POLL_MS,
        on_tick: Callable[[Tracer], None] | None = None,
        health_file: str | None = None,
    ) -> None:
        self.config = config
        self.drain_ms = drain_ms
        self.spool = spool
        self.raw = raw
        self.outputs: list[Output] = [o for o in (spool, raw) if o is not None]
        self.analysis = analysis
        self.duration = duration
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        self.extra_libs = extra_libs or []
        self.symbols = SymbolCache()
        self.enricher = Enricher()
        self.queue: list[bytes | tuple[bytes, int, int]] = []  # records, and runs of plain data records
        self.summary = CaptureSummary()
        self.failed: str | None = None  # why capture stopped early
        self._stop = False
        self._rescans: list[tuple[float, int]] = []  # (due monotonic s, pid)
        self._attach_failed: set[tuple[int, int]] = set()  # (dev, inode) we could not attach to
        self._seeded: set[int] = set()  # pids whose pre-existing sockets the kernel knows
        # pids the kernel's filter let through (their exec was reported): children of a --pid, say
        self._vouched: set[int] = set()
        self._no_room_said = False  # the spool's disk is full, and stderr was told
        self._unknown_said: dict[int, int] = {}  # pid -> the unknown_protocol_conns last annotated
        self._no_room_dropped = 0
        self.probes: Probes | None = None
        self.pauser: Pauser | None = None
        self._exec_seen: set[int] = set()  # pids that exec'd after capture started: late processes
        self.on_tick = on_tick  # about once a second, after the periodic work (trace's status line)
        self.health_file = health_file  # rewritten once a second for the metrics exporter (analysis.metrics)
        self.last_losses = Losses()  # as of the last tick
        self.spool_backlog = 0  # bytes, as of the last tick

    # ---- set-up ----
    def stop(self, *_: object) -> None:
        self._stop = True

    def _annotate(self, a: Annotation) -> None:
        for out in self.outputs:
            out.annotation(a)

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
                self._annotate(LibraryUnprobeable(display, str(exc)))
                self.log(f"apptrace: {exc}")
                return None
            self.summary.libraries[display] = result.tls_lib
            self._annotate(LibraryProbed(display, result.tls_lib, result.offsets))
        elif isinstance(result, Unprobeable):
            display = path.split("/root", 1)[1] if path.startswith("/proc/") else path
            if display not in self.summary.unprobeable:
                self.summary.unprobeable[display] = result.reason
                self._annotate(LibraryUnprobeable(display, result.reason))
                self.log(f"apptrace: cannot probe {display}: {result.reason}")
        return result

    def _judge(self, pid: int, openable: str) -> str:
        """The pauser's question: probe this file (``pid``'s, through /proc) now, and say how it went."""
        try:
            before = os.stat(openable)
        except OSError:
            return "unreadable"
        try:
            result = self._consider(openable)
        except Exception as exc:  # noqa: BLE001 - a reader's bug must not stop capture (or leave anyone stopped)
            return f"could not read {openable}: {type(exc).__name__}: {exc}"
        if result is None and self._stat(openable) is None:
            # Its process exited while the file was read (a process that was not stopped): what was read of
            # it says nothing, and must not be remembered as "no TLS".
            self.symbols.forget(before)
            return "unreadable"
        if isinstance(result, TlsObject):
            assert self.probes is not None
            if self.probes.is_attached(result):
                return PROBED
            display = openable.split("/root", 1)[1] if openable.startswith("/proc/") else openable
            return f"its TLS library {display} could not be probed: {self.summary.unprobeable.get(display, '?')}"
        if result is None and (st := self._stat(openable)) is not None and (st.st_dev, st.st_ino) in self._attach_failed:
            display = openable.split("/root", 1)[1] if openable.startswith("/proc/") else openable
            return f"its TLS library {display} could not be probed: {self.summary.unprobeable.get(display, '?')}"
        return NOTHING

    @staticmethod
    def _stat(path: str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except OSError:
            return None

    def _missed(self, pid: int, reason: str) -> None:
        """Name a process whose TLS may have run unprobed: counted in the summary and annotated."""
        comm = self.summary.missed.get(pid, ("", ""))[0]
        if not comm:
            try:
                with open(f"/proc/{pid}/comm") as f:
                    comm = f.read().strip()
            except OSError:
                comm = "?"
        first = pid not in self.summary.missed
        self.summary.missed[pid] = (comm, reason)
        self._annotate(ProcessMissed(pid, comm, reason))
        if first:
            self.log(f"apptrace: missed? pid {pid} ({comm}): {reason}")
        if self.spool is not None:
            # For `apptrace doctor`, which has no other way to a running tracer's misses.
            path = os.path.join(self.spool.directory, MISSED_FILE)
            recent = sorted(self.summary.missed.items())[-MISSED_KEPT:]
            try:
                fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    json.dump([{"pid": p, "comm": c, "reason": r} for p, (c, r) in recent], f)
                os.replace(path + ".tmp", path)
            except OSError:
                pass

    def _in_scope(self, pid: int) -> bool:
        if pid in self._vouched:
            return True
        if self.config.in_scope(pid, None) or not self.config.comms:
            return self.config.in_scope(pid, None)
        info = procfs.process_info(pid)
        return info is not None and self.config.in_scope(pid, info.comm)

    def scan_pid(self, pid: int) -> None:
        if pid == os.getpid() or not self._in_scope(pid):
            return
        if self.analysis is not None and pid == self.analysis.pid:
            return  # its query server speaks plain sockets, but never trace ourselves
        has_tls = False
        assert self.probes is not None
        for inside, openable in procfs.mapped_objects(pid):
            before = self.symbols.inspect(openable)
            late = isinstance(before, TlsObject) and not self.probes.is_attached(before) and pid in self._exec_seen
            if isinstance(self._consider(openable), TlsObject):
                has_tls = True
                if late and self.probes.is_attached(before):
                    # A process that started after us runs a TLS object nobody probed at its start.
                    self._missed(pid, f"its TLS library {inside} was found only by a rescan after it started")
            self._serve_pauses()  # a big object read for the first time takes 100s of ms
        # Plaintext: every traced process's sockets may carry a protocol, TLS or not.
        if (has_tls or self.config.plaintext) and pid not in self._seeded:
            # Connections opened before we attached: no connect/accept was seen for them.
            self._seeded.add(pid)
            assert self.probes is not None
            for fd, server in procfs.tcp_sockets(pid):
                self.probes.seed_socket(pid, fd, ROLE_SERVER if server else ROLE_CLIENT)

    def scan_all(self) -> None:
        pids = self.config.pids if self.config.probe_pids != (-1,) else procfs.all_pids()
        for pid in pids:
            self.scan_pid(pid)
            self._serve_pauses()

    def _serve_pauses(self) -> None:
        """Handle the processes stopped meanwhile: called between the pieces of long work (a scan of every
        process takes 100s of ms on a busy machine), so that a stop lasts the probing, not our chores."""
        if self.pauser is not None and self.probes is not None:
            self.probes.drain_pauses()
            if self.pauser.pending():
                self.pauser.handle()

    # ---- event handling ----
    def _on_exec(self, ev: MetaEvent) -> None:
        if not self._in_scope(ev.pid) and not self.config.in_scope(ev.pid, ev.comm):
            return
        if self.config.comms and ev.comm in self.config.comms and self.probes is not None:
            self.probes.allow_pid(ev.pid)
        self._exec_seen.add(ev.pid)
        now = time.monotonic()
        for delay in EXEC_RESCAN_DELAYS_S:
            heapq.heappush(self._rescans, (now + delay, ev.pid))

    def _enqueue(self, buf: bytes) -> bool:
        """Queue one ring-buffer record; True when the batch is full and draining should pause."""
        if buf[0] == EV_EXEC:
            # Ahead of any backlog: a new binary with static TLS must be probed before its first call.
            pid = decode(buf).pid
            if self.config.follow_forks and self.config.pids:
                self._vouched.add(pid)  # the kernel reports only the execs its filter lets through
            self._attach_exe(pid)
        self.queue.append(buf)
        return len(self.queue) >= MAX_BATCH

    def _enqueue_run(self, ring_bytes: bytes, records: int, nbytes: int) -> None:
        self.queue.append((ring_bytes, records, nbytes))

    def _attach_exe(self, pid: int) -> None:
        if not self._in_scope(pid) and not self.config.comms:
            return
        # A Go client can be done in 5 ms, gone before or while its binary is read through /proc: the path the
        # kernel kept for it outlives it, so the file is probed at least for its next run. Only an absolute
        # path (a relative one needed the process's cwd), and only when it is the file the process runs, as
        # far as /proc still says (in a container the same path may name another file here).
        path = self.probes.exec_path(pid) if self.probes is not None else None
        if path is not None and path.startswith("/"):
            try:
                st = os.stat(path)
                try:
                    running = os.stat(f"/proc/{pid}/exe")
                    same = (st.st_dev, st.st_ino) == (running.st_dev, running.st_ino)
                except OSError:
                    same = True  # gone: the kernel's path is all there is
                if same:
                    self._consider(path)
                    return
            except OSError:
                pass
        try:
            exe = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            return
        self._consider(f"/proc/{pid}/root{exe}")

    def process_queue(self) -> None:
        queue, self.queue = self.queue, []
        outputs = self.outputs
        enricher = self.enricher
        known_procs, known_socks = enricher.procs, enricher.socks
        traced = self.summary.processes
        pid_fd_len = DATA_PID_FD_LEN.unpack_from
        events = nbytes = 0
        for buf in queue:
            if type(buf) is tuple:
                # Data the kernel vouched for: counted and copied, never looked at.
                ring_bytes, records, payload = buf
                events += records
                nbytes += payload - DATA_HDR_SIZE * records
                for out in outputs:
                    out.run(ring_bytes, records, payload)
                continue
            if buf[0] == EV_DATA:
                # Flagged FLAG_LOOK (or drained one by one, off x86): two set lookups, no decoding.
                pid, fd, n = pid_fd_len(buf)
                if pid not in known_procs or (fd >= 0 and (pid, fd) not in known_socks):
                    for a in enricher.annotate_data(pid, fd):
                        self._annotate(a)
                traced.add(pid)
                events += 1
                nbytes += n
            else:
                ev = decode(buf)
                for a in enricher.annotate(ev):
                    self._annotate(a)
                if buf[0] == EV_EXEC:
                    self._on_exec(ev)
                elif buf[0] == EV_TGID:
                    traced.add(ev.pid)
            for out in outputs:
                out.event(buf)
        self.summary.events += events
        self.summary.bytes += nbytes

    def _losses(self) -> Losses:
        assert self.probes is not None
        spool = self.spool
        unknown = self.probes.unknown_protocol() if self.config.plaintext else {}
        self.summary.unknown_protocol = unknown
        # Per process into the processes table, once per change: the Losses annotation carries only the total.
        for pid, (comm, conns) in unknown.items():
            if self._unknown_said.get(pid) != conns:
                self._annotate(ProtocolUnknown(pid, comm, conns))
        self._unknown_said = {pid: conns for pid, (_comm, conns) in unknown.items()}  # as big as the kernel's map
        return Losses(**self.probes.losses(), backlog_dropped_events=spool.dropped_events if spool else 0,
                      disk_full_dropped_events=spool.disk_full_dropped_events if spool else 0,
                      unknown_protocol_conns=sum(n for _comm, n in unknown.values()))

    def _periodic(self) -> None:
        self.last_losses = self._losses()
        self._annotate(self.last_losses)
        if self.spool is not None:
            was_full = self.spool.full
            backlog = self.spool_backlog = self.spool.check_backlog()
            if self.spool.full and not was_full:
                self.log(f"apptrace: analysis is {backlog >> 20} MiB behind, at the --spool-max cap: data records "
                         "are dropped (counted as backlog_dropped_events) until it catches up")
            # Said once per episode, even one that began and ended within the second.
            dropped = self.spool.disk_full_dropped_events
            if not self._no_room_said and (self.spool.disk_full or dropped > self._no_room_dropped):
                self._no_room_said = True
                self.log(f"apptrace: no room left for the spool in {self.spool.directory}: records are dropped "
                         "(counted as disk_full_dropped_events) until there is")
            elif self._no_room_said and not self.spool.disk_full:
                self._no_room_said = False
                self.log(f"apptrace: room again for the spool in {self.spool.directory}: spooling resumed "
                         f"({dropped} records dropped so far)")
            self._no_room_dropped = dropped
        if self.pauser is not None:
            self.pauser.check_watchdog()
        if self.health_file is not None:
            self._write_health()
        if self.analysis is not None and not self.analysis.alive():
            why = self.analysis.restart()
            if why is None:  # killed: its successor goes on from the last commit
                self.log(f"apptrace: the analysis process was killed; restarted it (pid {self.analysis.pid})")
                if self.probes is not None:
                    self.probes.ignore_pid(self.analysis.pid)
                if self.probes is not None and self.pauser is not None:
                    self.probes.exempt_from_pause(self.analysis.pid)
                if self.spool is not None:
                    self.spool.note_reader(self.analysis.pid)
            else:
                self.failed = f"{why}; capture stopped"
                self._stop = True

    def _write_health(self) -> None:
        """Capture's side of the tracer's health, for Prometheus: written whole, then renamed into place."""
        assert self.probes is not None and self.health_file is not None
        probes = self.probes
        health = {
            "time_ns": time.time_ns(),
            "ring_fill": probes.ring_fill_max / probes.ring_bytes,
            "probes": probes.probe_count(),
            "processes": len(self.summary.processes),
            "events": self.summary.events,
            "losses": dataclasses.asdict(self.last_losses),
            "backlog_dropped_events": self.last_losses.backlog_dropped_events,
            "bpf": probes.run_stats(),
        }
        probes.ring_fill_max = 0
        tmp = self.health_file + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(health, f)
            os.replace(tmp, self.health_file)
        except OSError:
            pass  # a full disk: the health is stale, the capture goes on

    def _start_pausing(self) -> None:
        """Stop late processes until their TLS object is probed (bpf section 13), once everything running now is
        judged: the system's libraries and the programs running now are never paused for."""
        assert self.probes is not None
        if self.config.pause == "off":
            return
        if not self.probes.pausing_supported:
            self.log("apptrace: pausing late processes needs x86-64's ring reader; processes with a private TLS "
                     "library started from now on may lose their first requests")
            return
        pauser = Pauser(self.probes, self._judge, self._missed, self.log, self.config.pause_max_ms,
                        self.config.pause)
        pauser.seed(list(self.summary.libraries), procfs.all_pids())
        pauser.start(exempt=(self.analysis.pid,) if self.analysis is not None else ())
        self.pauser = pauser

    def _run_rescans(self, now: float) -> None:
        while self._rescans and self._rescans[0][0] <= now:
            _, pid = heapq.heappop(self._rescans)
            self.scan_pid(pid)
            self._serve_pauses()

    # ---- main loop ----
    def run(self) -> CaptureSummary:
        why = check_privileges()
        if why:
            raise LoadError(why)
        msg = ensure_tracefs()
        if msg:
            self.log(f"apptrace: {msg}")
        # SIGHUP: the terminal closed; stop as for Ctrl-C, with the summary.
        previous = {s: signal.signal(s, self.stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        started = time.monotonic()
        try:
            self.probes = Probes(self.config, self._enqueue, self._enqueue_run)
            self.summary.plaintext = self.config.plaintext
            self.enricher.unix_path = self.probes.unix_path
            # Never our own sockets (the query socket, OTLP and metrics exports): rows about apptrace's own
            # traffic would feed the traffic they describe.
            self.probes.ignore_pid(os.getpid())
            if self.analysis is not None:
                self.probes.ignore_pid(self.analysis.pid)
            if self.health_file is not None and not self.probes.enable_run_stats():
                self.log("apptrace: the kernel refused BPF run-time statistics; apptrace_bpf_* metrics stay 0")
            if self.analysis is not None:
                # Loading the programs took long enough for analysis to open the DB: a DB that cannot
                # be opened (held, corrupt) is refused before any probe goes on.
                why = self.analysis.wait_ready()
                if why:
                    raise LoadError(why)
            self.probes.seed_listen_ports(procfs.listening_ports())
            if self.config.probe_pids == (-1,):  # file probes cover later processes too
                for path in well_known_tls_libraries():
                    self._consider(path)
            for path in self.extra_libs:
                self._consider(path)
            self.scan_all()
            self._start_pausing()
            if not self.summary.libraries:
                self.log("apptrace: no TLS library found yet; waiting for processes that load one")
            scope = (
                " and ".join(s for s in (
                    f"pids {','.join(map(str, self.config.pids))}" if self.config.pids else "",
                    f"comm {','.join(self.config.comms)}" if self.config.comms else "") if s)
                or "all processes"
            )
            self.log(f"apptrace: tracing {scope}: {self.probes.probe_count()} uprobes on "
                     f"{len(self.summary.libraries)} TLS objects (Ctrl-C to stop)")
            deadline = time.monotonic() + self.duration if self.duration else None
            next_tick = time.monotonic() + TICK_S
            next_rescan = time.monotonic() + RESCAN_EVERY_S
            pauser = self.pauser
            while not self._stop:
                self.probes.poll(self.drain_ms)
                if pauser is not None:
                    if pauser.pending():
                        pauser.handle()
                    pauser.read_watchdog()
                    pauser.check_ancestors()
                if self.queue:
                    self.process_queue()
                    for out in self.outputs:
                        out.flush()  # analysis follows the spool: show it records within a poll period
                now = time.monotonic()
                if self._rescans:
                    self._run_rescans(now)
                if now >= next_tick:
                    self._periodic()
                    if self.on_tick is not None:
                        self.on_tick(self)
                    next_tick = now + TICK_S
                if now >= next_rescan:
                    self.scan_all()
                    next_rescan = now + RESCAN_EVERY_S
                if deadline is not None and now >= deadline:
                    break
                if pauser is not None and not self.queue:
                    pauser.seed_step()
            # Last drain: what the kernel already wrote is not lost.
            while True:
                self.probes.poll(0)
                if not self.queue:
                    break
                self.process_queue()
            self._annotate(self._losses())
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
            if self.pauser is not None:
                # Before the probes go: nothing may stay stopped, and nothing new is stopped.
                self.pauser.close()
                self.summary.paused = self.pauser.paused
                self.summary.pause_ms_max = self.pauser.pause_ms_max
                self.summary.pause_ms_mean = self.pauser.pause_ms_total / max(1, self.pauser.paused)
            if self.probes is not None:
                self.summary.losses = self.probes.losses()
                self.probes.close()
                if self.probes.closer is not None:
                    pid, n = self.probes.closer
                    self.log(f"apptrace: removing {n} uprobes in the background (pid {pid}; the kernel takes "
                             "~150 ms for each, and other tracers' attaching waits meanwhile)")
            for out in self.outputs:
                out.close()
            if self.raw is not None:
                self.summary.raw_frames = self.raw.frames
            if self.spool is not None:
                self.summary.backlog_dropped_events = self.spool.dropped_events
                self.summary.disk_full_dropped_events = self.spool.disk_full_dropped_events
        self.summary.duration_s = time.monotonic() - started
        return self.summary
