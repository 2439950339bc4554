"""The analysis process: follows the spool, parses, stores, serves queries.

``apptrace trace`` runs as two processes. The capture process (``apptrace.capture``) drains the
ring buffer and appends to the spool; it must never fall behind the kernel. This one turns
the spool into rows: ``pipeline.Pipeline`` → ``apptrace.protocols`` → the store. It is the only
process that opens the DuckDB file, and by default it runs under SCHED_IDLE (``priority``), so on a
busy machine the traced programs keep the CPU and analysis catches up when they idle.

Run as ``python -m apptrace.analysis.loop STATUS_FD`` by ``process.Analysis``: the configuration
comes on stdin, ``config.Status`` lines go back on STATUS_FD. SIGINT and SIGHUP are ignored (a Ctrl-C or a
closed terminal reaches the whole process group; the parent decides); SIGTERM means "stop reading the spool now", leaving
what is left of it on disk; SIGUSR1 means capture has stopped: stop yielding and finish.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable

from apptrace.analysis import cpugroup
from apptrace.analysis.config import AnalysisConfig, AnalysisSummary, Progress, Status
from apptrace.analysis.pipeline import Pipeline
from apptrace.analysis.priority import BusyGauge, set_priority
from apptrace.analysis.sinks import NullSink
from apptrace.contract.rawfile import RawFormatError
from apptrace.contract.spool import SpoolReader
from apptrace.protocols import ParserConfig
from apptrace.store.redact import Redactor

TICK_S = 1.0
LOOK_S = 0.1  # how often analysis looks at how busy the machine is
IDLE_SLEEP_S = 0.05  # how often an idle analysis looks for new records: rows trail traffic by about this


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
            store.serve()
        except StoreError as exc:
            report(Status(error=str(exc)))
            return 1
    live = {"backlog_bytes": 0, "lag_s": 0.0}  # what the tick last saw, for the metrics exporter
    exporter = otlp = None
    try:
        printer = RowPrinter(Redactor(cfg.redact_headers, cfg.redact_params) if cfg.redact else None)
        watchers: list[Callable[[str, list[dict]], None]] = [printer] if cfg.print_rows else []
        if cfg.metrics is not None:
            from apptrace.analysis.metrics import Exporter, health_path

            def analysis_health() -> dict:
                t = pipeline.totals
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
        pipeline = Pipeline(store or NullSink(), clock_offset_ns=cfg.clock_offset_ns,
                            parser_config=ParserConfig(max_body=cfg.max_body),
                            max_capture_per_call=cfg.max_capture_per_call, service_rules=cfg.service_rules,
                            host=cfg.host,
                            on_rows=_all(watchers))
    except ValueError as exc:
        report(Status(error=str(exc)))
        if store is not None:
            store.close()
        return 2
    # Only now: started at normal priority, so a saturated machine cannot keep tracing from
    # starting; every thread so far (DuckDB's, the query server's) is covered, later ones inherit.
    cpugroup.sweep()
    set_priority(os.getpid(), cfg.priority)
    report(Status(ready=True))

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
            pipeline.take(frames)
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
                live["backlog_bytes"] = backlog
                live["lag_s"] = (time.monotonic_ns() - pipeline.last_ts) / 1e9 if backlog and pipeline.last_ts else 0.0
                pipeline.drain()
                if store is not None:
                    store.flush()
                report(Status(progress=Progress(
                    records=pipeline.totals.records, events=pipeline.totals.events,
                    last_event_ns=pipeline.last_ts, backlog_bytes=backlog, yielding=yielding)))
                next_tick = now + TICK_S
            if caught_up:
                time.sleep(IDLE_SLEEP_S)
    except (RawFormatError, ValueError, KeyError, IndexError, TypeError) as exc:
        error = f"spool {cfg.spool}: {exc}"
    left = reader.backlog_bytes()
    reader.close()
    pipeline.backlog_bytes = left
    pipeline.finish()
    if exporter is not None:
        exporter.close()
    otlp_counts = otlp.close() if otlp is not None else None
    if store is not None:
        store.close()
    report(Status(summary=AnalysisSummary(totals=pipeline.totals, connections=pipeline.connection_count,
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
