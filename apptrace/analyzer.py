"""The analysis process: follows the spool, parses, stores, serves queries.

``apptrace trace`` runs as two processes. The capture process (``tracer``) drains the
ring buffer and appends to the spool; it must never fall behind the kernel. This one turns
the spool into rows: ``conns.Pipeline`` → ``protocols`` → ``store``. It is the only process
that opens the DuckDB file, and by default it runs under SCHED_IDLE, so on a busy machine the
traced programs keep the CPU and analysis catches up when they idle.

The parent talks to it through a pipe of JSON lines: ``{"ready": true}`` or
``{"error": ...}`` at start, ``{"summary": {...}}`` at the end. SIGINT is ignored (a
Ctrl-C reaches the whole process group; the parent decides); SIGTERM means "stop
reading the spool now", leaving what is left of it on disk for ``apptrace replay``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from apptrace import cpugroup
from apptrace.conns import Pipeline
from apptrace.events import decode
from apptrace.rawlog import KIND_EVENT, RawFormatError
from apptrace.spool import SpoolReader

TICK_S = 1.0
LOOK_S = 0.1  # how often analysis looks at how busy the machine is
IDLE_SLEEP_S = 0.05  # how often an idle analysis looks for new records: rows trail traffic by about this
DEFAULT_PRIORITY = "idle"


def auto_yield_above(cpus: int | None = None) -> float:
    """Pause unless the others leave a whole CPU idle (never below half the machine busy).

    Analysis needs a core to itself: in the scattered idle moments of a saturated server it
    still costs the server its wake-ups and caches. A whole idle core exists on a big machine
    running a small workload (analysis runs live) and not on a small one the workload fills.
    """
    n = cpus or len(os.sched_getaffinity(0))
    return max(0.5, (n - 1) / n)


DEFAULT_YIELD_ABOVE = auto_yield_above()


@dataclass
class AnalysisConfig:
    spool: str
    db: str | None  # None: rows are printed (or not) and dropped
    clock_offset_ns: int
    max_capture_per_call: int
    max_body: int = 1024
    service_rules: list[str] = field(default_factory=list)
    retain: str | None = None
    max_size: str | None = None
    redact: bool = True
    redact_headers: list[str] = field(default_factory=list)
    print_rows: bool = False
    priority: str = DEFAULT_PRIORITY  # "idle" (SCHED_IDLE) or a nice value, "0" to "19"
    #: pause while other processes keep the CPUs busier than this fraction (1.0: never pause) ...
    yield_above: float = DEFAULT_YIELD_ABOVE
    #: ... unless the backlog has grown to this many bytes
    yield_backlog_max: int = 512 << 20


def print_rows(table: str, rows: list[dict]) -> None:
    for r in rows:
        role = (r.get("trace_role") or "?")[0]
        lat = f"{r['latency'] / 1e6:8.2f}ms" if r.get("latency") is not None else "       -  "
        if table == "http_events":
            what = f"{r.get('req_method')} {r.get('req_path')} -> {r.get('resp_status')}"
            if r.get("grpc_status") is not None:
                what += f" grpc={r['grpc_status']}"
            proto = "HTTP/" + str(r.get("http_version"))
        else:
            what = f"{r.get('req_cmd')} {(r.get('req_body') or '')[:80]!r} -> {r.get('resp_status')}"
            proto = "MySQL" if table == "mysql_events" else "PgSQL"
        print(f"{r.get('service', '')[:16]:16} {r['pid']:>7} {role} {proto:8} {lat} {what}", flush=True)


def parse_priority(text: str) -> str:
    """``idle`` or a nice value 0-19; raises ValueError otherwise."""
    if text == "idle" or (text.isdigit() and 0 <= int(text) <= 19):
        return text
    raise ValueError(f"analysis priority must be 'idle' or a nice value 0-19, not {text!r}")


def set_priority(pid: int, priority: str) -> None:
    """Apply ``priority`` to every thread of ``pid``: Linux schedules threads, not processes.

    SCHED_IDLE rather than nice 19: a woken nice-0 task preempts a SCHED_IDLE one at once,
    while under EEVDF a nice-19 task on the CPU may finish its slice first. Measured with
    bench_overhead.py on nghttpd, nice 19 cost the traced server a quarter of its throughput
    beyond capture alone; SCHED_IDLE does not. SCHED_IDLE only ranks threads within their
    group, so "idle" also moves the process into an idle cpu cgroup (see cpugroup).
    """
    if priority == "idle":
        cpugroup.join(pid)
    else:
        cpugroup.leave(pid)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, int(priority))
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended, or we may not raise it: it keeps what it had


class _Requested:
    """A signal handler that only remembers the signal came."""

    requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True


class BusyGauge:
    """How busy the CPUs were since the last look, not counting this process or niced work.

    SCHED_IDLE already gives the CPU to anything else that wants it, but running in the
    gaps of a saturated server still costs it (preemptions, caches; on this VM, bench_overhead
    measured it). So while others keep the machine saturated, analysis waits, bounded by
    the backlog it lets build up.
    """

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        # Niced time counts as idle: batch work that asked to come last is not a workload to
        # protect. Our own user time is in that column already when we run niced.
        own_busy = int(own[12]) + (int(own[11]) if os.getpriority(os.PRIO_PROCESS, 0) <= 0 else 0)
        return sum(cpu), cpu[1] + cpu[3] + cpu[4], own_busy  # all threads

    def others_busy(self) -> float:
        total, idle, own = self._sample()
        last_total, last_idle, last_own = self._last
        self._last = (total, idle, own)
        elapsed = total - last_total
        if elapsed <= 0:
            return 0.0
        return max(0.0, (elapsed - (idle - last_idle) - (own - last_own)) / elapsed)


def analyse(cfg: AnalysisConfig, report: Callable[[dict], None]) -> int:
    """Follow the spool until the capture process ends it (or dies, or SIGTERM); returns an exit code."""
    from apptrace.protocols import ParserConfig
    from apptrace.replay import NullSink

    abandon = _Requested()  # SIGTERM: stop reading the spool now
    finish = _Requested()  # SIGUSR1: capture has stopped; stop yielding and finish the backlog
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, abandon)
    signal.signal(signal.SIGUSR1, finish)
    store = None
    if cfg.db is not None:
        from apptrace.store import Store, StoreError

        try:
            store = Store(cfg.db, retain=cfg.retain, max_size=cfg.max_size, redact=cfg.redact,
                          redact_headers=cfg.redact_headers)
            store.serve()
        except StoreError as exc:
            report({"error": str(exc)})
            return 1
    try:
        pipeline = Pipeline(store or NullSink(), clock_offset_ns=cfg.clock_offset_ns,
                            parser_config=ParserConfig(max_body=cfg.max_body),
                            max_capture_per_call=cfg.max_capture_per_call, service_rules=cfg.service_rules,
                            on_rows=print_rows if cfg.print_rows else None)
    except ValueError as exc:
        report({"error": str(exc)})
        if store is not None:
            store.close()
        return 2
    # Only now: started at normal priority, so a saturated machine cannot keep tracing from
    # starting; every thread so far (DuckDB's, the query server's) is covered, later ones inherit.
    cpugroup.sweep()
    set_priority(os.getpid(), cfg.priority)
    report({"ready": True})

    reader = SpoolReader(cfg.spool)
    parent = os.getppid()
    error = None
    next_tick = time.monotonic() + TICK_S
    next_look = time.monotonic() + LOOK_S
    gauge = BusyGauge()
    yielding = False
    backlog = 0
    try:
        while not abandon.requested:
            if yielding:
                time.sleep(max(min(next_look, next_tick) - time.monotonic(), 0.0))
                frames = []
            else:
                frames = reader.read()
            for kind, payload in frames:
                if kind == KIND_EVENT:
                    pipeline.handle(decode(payload))  # type: ignore[arg-type]
                else:
                    pipeline.annotate(payload)  # type: ignore[arg-type]
            caught_up = not frames and not yielding
            orphaned = os.getppid() != parent
            if caught_up and (reader.finished or orphaned):
                break  # the capture process ended the spool, or died: nothing more will come
            now = time.monotonic()
            if now >= next_look:
                # Often: a load that starts is yielded to within a tenth of a second, not after
                # a second of parsing beside it.
                yielding = (gauge.others_busy() > cfg.yield_above and backlog < cfg.yield_backlog_max
                            and not (finish.requested or orphaned))
                next_look = now + LOOK_S
            if now >= next_tick:
                # Behind the writer, "now" is the time of the last event analysed: a request
                # whose response is still in the spool has not timed out.
                pipeline.expire(time.monotonic_ns() if caught_up else pipeline.last_ts)
                backlog = reader.backlog_bytes()
                pipeline.backlog_bytes = backlog
                pipeline.drain()
                if store is not None:
                    store.flush()
                next_tick = now + TICK_S
            if caught_up:
                time.sleep(IDLE_SLEEP_S)
    except (RawFormatError, ValueError, KeyError, IndexError, TypeError) as exc:
        error = f"spool {cfg.spool}: {exc}"
    left = reader.backlog_bytes()
    reader.close()
    pipeline.backlog_bytes = left
    pipeline.finish()
    if store is not None:
        store.close()
    t = pipeline.totals
    report({"summary": {
        "connections": pipeline.connection_count, "records": t.records, "events": t.events, "bytes": t.bytes,
        "gap_bytes": t.gap_bytes, "parse_errors": t.parse_errors,
        "backlog_dropped_events": t.backlog_dropped_events, "left_in_spool": left, "error": error,
    }})
    return 1 if error else 0


class Analysis:
    """The parent's handle on the analysis process."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "apptrace.analyzer", json.dumps(dataclasses.asdict(cfg)), str(w)],
            pass_fds=(w,), stdin=subprocess.DEVNULL)
        os.close(w)
        self._status = os.fdopen(r, "r")
        self.summary: dict = {}
        self.ready = False

    def _next(self) -> dict | None:
        line = self._status.readline()
        if not line:
            return None
        return json.loads(line)

    def wait_ready(self) -> str | None:
        """None once the analysis process has opened the DB; otherwise why it could not."""
        msg = self._next()
        if msg is None:
            self.proc.wait()
            return f"the analysis process exited with code {self.proc.returncode} before it was ready"
        self.ready = "ready" in msg
        return msg.get("error")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, log: Callable[[str], None]) -> dict:
        """The spool is complete: let analysis catch up at full priority and collect its summary."""
        if self.alive():
            set_priority(self.proc.pid, "0")
            if self.ready:  # its handler is installed by then; before, SIGUSR1 would kill it
                self.proc.send_signal(signal.SIGUSR1)  # and stop yielding to the (stopped) workload
        stop_now = False

        def abandon(*_: object) -> None:
            nonlocal stop_now
            stop_now = True
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, abandon) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            announced = False
            while True:
                try:
                    self.proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    if not announced and not stop_now:
                        log(f"apptrace: analysing the backlog in {self.cfg.spool} (Ctrl-C again to stop and "
                            "keep it for 'apptrace replay')")
                        announced = True
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        while (msg := self._next()) is not None:
            if "summary" in msg:
                self.summary = msg["summary"]
        self._status.close()
        cpugroup.remove(self.proc.pid)
        return self.summary

    def kill(self) -> None:
        if self.alive():
            cpugroup.leave(self.proc.pid)  # out of the idle group first: exiting needs the CPU too
            self.proc.kill()
            self.proc.wait()
        cpugroup.remove(self.proc.pid)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    cfg = AnalysisConfig(**json.loads(args[0]))
    status = os.fdopen(int(args[1]), "w")

    def report(msg: dict) -> None:
        status.write(json.dumps(msg) + "\n")
        status.flush()

    try:
        return analyse(cfg, report)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
