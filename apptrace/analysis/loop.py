"""The analysis process: follows the spool, parses, stores, serves queries.

``apptrace trace`` runs as two processes. The capture process (``apptrace.capture``) drains the
ring buffer and appends to the spool; it must never fall behind the kernel. This one turns
the spool into rows: ``pipeline.Pipeline`` → ``apptrace.protocols`` → the store. It is the only
process that opens the DuckDB file, and by default it runs under SCHED_IDLE (``priority``), so on a
busy machine the traced programs keep the CPU and analysis catches up when they idle.

Run as ``python -m apptrace.analysis.loop STATUS_FD`` by ``process.Analysis``: the configuration
comes on stdin, ``config.Status`` lines go back on STATUS_FD. SIGINT and SIGHUP are ignored (a Ctrl-C or a
closed terminal reaches the whole process group; the parent decides); SIGTERM means "stop reading the spool now", leaving
what is left of it on disk, with the progress committed so that the next tracer on the DB goes on from there;
SIGUSR1 means capture has stopped: stop yielding and finish.

Runs left in the spool by a tracer that died come first (``Follower``), each from its last commit.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import sys
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from apptrace.analysis import checkpoint, cpugroup
from apptrace.analysis.config import AnalysisConfig, AnalysisSummary, Progress, Status, Totals
from apptrace.analysis.pipeline import Pipeline
from apptrace.analysis.priority import BusyGauge, set_priority, while_serving
from apptrace.analysis.services import parse_service_rules
from apptrace.analysis.sinks import NullSink
from apptrace.contract.rawfile import RawFormatError
from apptrace.contract.spool import END_MARKER, Position, SpoolReader
from apptrace.protocols import ParserConfig
from apptrace.store.redact import Redactor

if TYPE_CHECKING:
    from apptrace.store.writer import CheckpointRow, Store

TICK_S = 1.0
LOOK_S = 0.05  # how often analysis looks at how busy the machine is: a load that starts gets 50 ms of parsing beside it, not 100
IDLE_SLEEP_S = 0.05  # how often an idle analysis looks for new records: rows trail traffic by about this
# Frames taken between two chances to look at the load. A look comes only between reads, and 5,000 h2c frames
# were ~0.16 s of CPU: the first read of every load ran that long beside it before analysis could yield.
FRAMES_PER_READ = 500
# While yielding, rows parsed before the load stay uncommitted this long at most. A commit costs the loaded
# machine a store flush and a state snapshot (h2c under h2load: ~77 ms of CPU for the first after a load
# began, ~8 ms each empty one after), and nothing is lost by waiting: the checkpoint still holds the spool.
YIELD_COMMIT_S = 30.0


class RowPrinter:
    """trace's live output: one line per row on stdout, until stdout goes away (a closed terminal).

    Rows reach it before the store redacts them (on insert), so what it prints goes through ``redactor`` itself.
    """

    def __init__(self, redactor: Redactor | None) -> None:
        self.gone = False
        self.redactor = redactor
        # On a terminal, trace's status line sits on the last line: a row takes its place, and the tracer
        # draws it again below.
        self.lead = "\r\x1b[K" if sys.stdout.isatty() else ""

    def __call__(self, table: str, rows: list[dict]) -> None:
        if self.gone:
            return
        redactor = self.redactor
        try:
            for r in rows:
                if redactor is not None:
                    r = redactor.row(table, dict(r))  # a copy: the store still has the row to insert
                print(self.lead + row_line(table, r), flush=True)
        except OSError:  # EIO or EPIPE: nobody reads any more, and the rows are stored regardless
            self.gone = True


def row_line(table: str, r: dict) -> str:
    role = (r.get("trace_role") or "?")[0]
    lat = f"{r['latency'] / 1e6:8.2f}ms" if r.get("latency") is not None else "       -  "
    if table == "http_events":
        status = r.get("resp_status")
        what = f"{r.get('req_method')} {r.get('req_path')} -> {'no response' if status is None else status}"
        if r.get("grpc_status") is not None:
            what += f" grpc={r['grpc_status']}"
        proto = "HTTP/" + str(r.get("http_version"))
    else:
        status = r.get("resp_status")
        what = f"{r.get('req_cmd')} {(r.get('req_body') or '')[:80]!r} -> {'no response' if status is None else status}"
        proto = "MySQL" if table == "mysql_events" else "PgSQL"
    return f"{r.get('service', '')[:16]:16} {r['pid']:>7} {role} {proto:8} {lat} {what}"


def _all(watchers: list[Callable[[str, list[dict]], None]]) -> Callable[[str, list[dict]], None] | None:
    """One on_rows callback that calls each watcher (None when there are none: the pipeline skips the call)."""
    if not watchers:
        return None
    if len(watchers) == 1:
        return watchers[0]

    def each(table: str, rows: list[dict]) -> None:
        for watch in watchers:
            watch(table, rows)

    return each


class _Requested:
    """A signal handler that only remembers the signal came."""

    requested = False

    def __call__(self, *_: object) -> None:
        self.requested = True



class Follower:
    """The spool, run by run, into the store: which pipeline reads which run, and what each commit holds.

    Every commit stores the rows drawn since the last one together with where reading stopped
    and the pipeline's state there (``checkpoint``); a segment is deleted only after a commit
    that reaches past it. A run's last commit says it was analysed whole (state None); its
    progress row goes once its segments are deleted.
    """

    def __init__(self, cfg: AnalysisConfig, store: Store | None, reader: SpoolReader,
                 on_rows: Callable[[str, list[dict]], None] | None, log: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.store = store
        self.sink = store if store is not None else NullSink()
        self.reader = reader
        self.on_rows = on_rows
        self.log = log
        self.progress = store.checkpoints() if store is not None else {}
        self.pipeline: Pipeline | None = None
        self.ended_totals = Totals()  # of the runs this process finished
        self.ended_connections = 0
        self.snapshot_s = 0.0  # how long the last state snapshot took
        self._ended: list[tuple[CheckpointRow, list[int]]] = []  # runs analysed whole, awaiting their commit
        self._forget: list[str] = []  # runs whose segments are all gone: their progress rows go next commit
        self._committed: tuple[Position, Totals] | None = None

    def open_run(self) -> bool:
        """A pipeline for the run the reader is at: restored from its last commit, or new. False: no segment yet."""
        reader = self.reader
        while reader.at_run():
            assert reader.run is not None and reader.header is not None
            saved = self.progress.pop(reader.run, None)
            if saved is not None and saved[2] is None:
                # Analysed whole before a crash took its files' deletion with it.
                reader.skip_run()
                reader.release(reader.take_done())
                self._forget.append(reader.run)
                if not reader.next_run():
                    return False
                continue
            if saved is not None:
                reader.seek(Position(saved[0], saved[1]))
                self.pipeline = checkpoint.restore(saved[2], self.sink, service_rules=self.cfg.service_rules,
                                                   on_rows=self.on_rows)
                self.log(f"apptrace: analysis resumes {'an earlier' if reader.run != self.cfg.run else 'this'} "
                         f"run from its last commit ({self.pipeline.totals.records} rows stored, "
                         f"{reader.backlog_bytes()} bytes of spool to go)")
            else:
                header = reader.header
                body = header.max_body if header.max_body is not None else self.cfg.max_body
                self.pipeline = Pipeline(self.sink, clock_offset_ns=header.clock_offset_ns,
                                         parser_config=ParserConfig(max_body=body),
                                         max_capture_per_call=header.max_capture_per_call,
                                         service_rules=self.cfg.service_rules, host=header.host or self.cfg.host,
                                         on_rows=self.on_rows)
            self._committed = (reader.position(), dataclasses.replace(self.pipeline.totals))
            return True
        return False

    def end_run(self) -> None:
        """The run has nothing more: its connections end here, and the commit says it is analysed whole."""
        pipeline, reader = self.pipeline, self.reader
        assert pipeline is not None and reader.run is not None
        pipeline.finish()
        if reader.cut_bytes:
            self.log(f"apptrace: the last {reader.cut_bytes} bytes spooled by a tracer that died were cut short "
                     "and are lost; the whole records before them were analysed")
            reader.cut_bytes = 0
        for k, v in dataclasses.asdict(pipeline.totals).items():
            setattr(self.ended_totals, k, getattr(self.ended_totals, k) + v)
        self.ended_connections += pipeline.connection_count
        pos = reader.position()
        self._ended.append(((reader.run, pos.seq, pos.offset, None), reader.take_done()))
        self.pipeline = None
        self.commit()

    def commit(self) -> bool:
        """Hand the rows to the store with where reading stopped and the state there; then delete what it covers."""
        pipeline, reader, store = self.pipeline, self.reader, self.store
        if pipeline is not None:
            pipeline.drain()
        if store is None:
            reader.release(reader.take_done())
            for _, segments in self._ended:
                reader.release(segments)
            self._ended = []
            return True
        progress = [p for p, _ in self._ended]
        now = None
        if pipeline is not None:
            assert reader.run is not None
            now = (reader.position(), dataclasses.replace(pipeline.totals))
            if now != self._committed:  # else nothing moved since: the last commit still holds
                started = time.perf_counter()
                progress.append((reader.run, now[0].seq, now[0].offset, checkpoint.snapshot(pipeline)))
                self.snapshot_s = time.perf_counter() - started
        done = reader.take_done()
        forget = self._forget
        was_full = store.disk_full
        ok = store.flush(checkpoints=progress, forget=forget)
        dropped = store.take_dropped_rows()
        if dropped:
            (pipeline.totals if pipeline is not None else self.ended_totals).disk_full_dropped_rows += dropped
        if store.disk_full and not was_full:
            self.log(f"apptrace: no room left for {store.path}: rows are dropped (counted as disk_full_dropped_rows) "
                     "until there is")
        elif was_full and not store.disk_full:
            self.log(f"apptrace: room again for {store.path}: storing resumed")
        if not ok:
            reader.give_back(done)
            return False
        reader.release(done)
        self._forget = []
        for (run, *_), segments in self._ended:
            reader.release(segments)
            self._forget.append(run)
        self._ended = []
        self._committed = now
        return True

    def totals(self) -> Totals:
        out = dataclasses.replace(self.ended_totals)
        if self.pipeline is not None:
            for k, v in dataclasses.asdict(self.pipeline.totals).items():
                setattr(out, k, getattr(out, k) + v)
        return out

    def connections(self) -> int:
        return self.ended_connections + (self.pipeline.connection_count if self.pipeline is not None else 0)


def _log(line: str) -> None:
    """A line on stderr (capture's, which this process shares), if anyone still reads it."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass


def analyse(cfg: AnalysisConfig, report: Callable[[Status], None]) -> int:
    """Follow the spool until the capture process ends it (or dies, or SIGTERM); returns an exit code."""

    abandon = _Requested()  # SIGTERM: stop reading the spool now
    finish = _Requested()  # SIGUSR1: capture has stopped; stop yielding and finish the backlog
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closed terminal reaches the whole group too
    signal.signal(signal.SIGTERM, abandon)
    signal.signal(signal.SIGUSR1, finish)
    store = None
    if cfg.db is not None:
        from apptrace.store.writer import Store, StoreError

        try:
            store = Store(cfg.db, retain=cfg.retain, max_size=cfg.max_size, redact=cfg.redact,
                          redact_headers=cfg.redact_headers, redact_params=cfg.redact_params)
            store.serve(while_serving(os.getpid(), cfg.priority))
        except StoreError as exc:
            report(Status(error=str(exc)))
            return 1
    reader = SpoolReader(cfg.spool, live_run=cfg.run)
    live = {"backlog_bytes": 0, "lag_s": 0.0}  # what the tick last saw, for the metrics exporter
    exporter = otlp = None
    try:
        printer = RowPrinter(Redactor(cfg.redact_headers, cfg.redact_params) if cfg.redact else None)
        watchers: list[Callable[[str, list[dict]], None]] = [printer] if cfg.print_rows else []
        if cfg.metrics is not None:
            from apptrace.analysis.metrics import Exporter, health_path

            def analysis_health() -> dict:
                t = follower.totals()
                return {"gap_bytes": t.gap_bytes, "parse_errors": t.parse_errors, "records": t.records, **live}

            try:
                exporter = Exporter(cfg.metrics, health_path(cfg.spool), analysis_health)
            except OSError as exc:
                raise ValueError(f"--metrics {cfg.metrics}: {exc.strerror or exc}") from None
            watchers.append(exporter.observe)
        if cfg.otlp is not None:
            from apptrace.analysis.metrics import RequestMetrics
            from apptrace.analysis.otlp import OtlpConfig, OtlpExporter

            request_metrics = exporter.requests if exporter is not None else RequestMetrics()
            if exporter is None:
                watchers.append(request_metrics.observe)
            otlp = OtlpExporter(OtlpConfig(**cfg.otlp), request_metrics)
            watchers.append(otlp.observe)
        parse_service_rules(cfg.service_rules)
        follower = Follower(cfg, store, reader, _all(watchers), _log)
        have_run = follower.open_run()
    except ValueError as exc:  # a bad --service or --metrics
        report(Status(error=str(exc)))
        if store is not None:
            store.close()
        return 2
    except (RawFormatError, pickle.UnpicklingError, zlib.error) as exc:
        report(Status(error=f"spool {cfg.spool}: {exc}"))
        if store is not None:
            store.close()
        return 2
    if store is not None:
        # pyarrow imports pandas on its first conversion of Python rows (~0.4 s of CPU): paid here, before
        # tracing starts, not in the first second of the first load, when it ran beside the traced server
        # (bench_overhead on the Go server: ~50 ticks of analysis in the first load's first second, ~5 in later ones).
        import pandas  # noqa: F401
    # Only now: started at normal priority, so a saturated machine cannot keep tracing from
    # starting; every thread so far (DuckDB's, the query server's) is covered, later ones inherit.
    cpugroup.sweep()
    set_priority(os.getpid(), cfg.priority)
    report(Status(ready=True))

    parent = os.getppid()
    error = None
    next_tick = time.monotonic() + TICK_S
    next_look = time.monotonic() + LOOK_S
    gauge = BusyGauge()
    yielding = False
    backlog = 0
    last_commit = time.monotonic()
    caught_up = True
    try:
        while not abandon.requested:
            orphaned = os.getppid() != parent
            if orphaned:
                reader.writer_gone = True  # nothing more will come: what is on disk is complete as it is
            if not have_run:
                # No segment to read yet (a full disk kept capture from starting one), or a run just ended.
                if orphaned or (finish.requested and os.path.exists(os.path.join(reader.directory, END_MARKER))):
                    break
                time.sleep(IDLE_SLEEP_S)
                have_run = follower.open_run()
                continue
            pipeline = follower.pipeline
            assert pipeline is not None
            if caught_up and not (finish.requested or orphaned) and reader.backlog_bytes():
                # Records after a quiet spell: a load may have just begun. Look at it for LOOK_S before
                # parsing any, or the first read and the first look after it ran beside the load's start,
                # every time one began (h2c: ~60 ms of CPU each). An idle machine's rows come LOOK_S later.
                gauge.others_busy()
                time.sleep(LOOK_S)
                yielding = gauge.others_busy() > cfg.yield_above and backlog < cfg.yield_backlog_max
                next_look = time.monotonic() + LOOK_S
            if yielding:
                time.sleep(max(min(next_look, next_tick) - time.monotonic(), 0.0))
                frames = []
            else:
                frames = reader.read(FRAMES_PER_READ)
            pipeline.take(frames)
            if reader.run_over:
                ended_live = reader.run == cfg.run
                follower.end_run()
                if ended_live:
                    break  # the capture process ended the spool, or died: nothing more will come
                have_run = reader.next_run() and follower.open_run()
                continue
            caught_up = not frames and not yielding
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
                live["backlog_bytes"] = backlog
                live["lag_s"] = (time.monotonic_ns() - pipeline.last_ts) / 1e9 if backlog and pipeline.last_ts else 0.0
                if not yielding or now - last_commit >= YIELD_COMMIT_S:
                    follower.commit()
                    last_commit = now
                report(Status(progress=Progress(
                    records=pipeline.totals.records, events=pipeline.totals.events,
                    last_event_ns=pipeline.last_ts, backlog_bytes=backlog, yielding=yielding)))
                # A big state costs its snapshot at every commit: commits space out so that it stays
                # a small part of the work (rows then trail the spool by a little more).
                next_tick = now + max(TICK_S, 20 * follower.snapshot_s)
            if caught_up:
                time.sleep(IDLE_SLEEP_S)
    except (RawFormatError, ValueError, KeyError, IndexError, TypeError) as exc:
        error = f"spool {cfg.spool}: {exc}"
        if follower.pipeline is not None:
            # The rest of this run cannot be read: what came before the damage is kept, and the run ends here.
            follower.end_run()
    left = reader.backlog_bytes()
    if follower.pipeline is not None:
        # Stopped early (SIGTERM): the progress is committed, and the next tracer on this DB goes on from it.
        follower.pipeline.backlog_bytes = left
    follower.commit()
    reader.close()
    if exporter is not None:
        exporter.close()
    otlp_counts = otlp.close() if otlp is not None else None
    if store is not None:
        store.close()
    report(Status(summary=AnalysisSummary(totals=follower.totals(), connections=follower.connections(),
                                          left_in_spool=left, error=error, otlp=otlp_counts)))
    return 1 if error else 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    status = os.fdopen(int(args[0]), "w")

    def report(msg: Status) -> None:
        status.write(msg.line())
        status.flush()

    try:
        try:
            cfg = AnalysisConfig.from_json(sys.stdin.read())
        except (ValueError, TypeError) as exc:
            report(Status(error=f"bad analysis configuration: {exc}"))
            return 2
        return analyse(cfg, report)
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
