"""``apptrace trace``: capture with eBPF (this process) and analyse into the DB (a child process)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from apptrace.cli.options import add_store_options, bounded_int, positive_float, positive_int, power_of_two

if TYPE_CHECKING:
    from apptrace.analysis.config import AnalysisSummary
    from apptrace.capture.tracer import CaptureSummary
    from apptrace.contract.rawfile import CaptureHeader
    from apptrace.contract.spool import SpoolWriter

TRACE_EPILOG = """examples:
  apptrace trace                                  trace every process into ./apptrace.duckdb
  apptrace trace --pid 1234 --duration 60         one process (and what it forks), one minute
  apptrace trace --comm nginx --comm node         by process name
  apptrace trace --raw capture.raw                also record every raw event, for replay
  apptrace trace --raw cap.raw --capture-only     record only (cheapest); parse later with replay
  apptrace trace --service api='gunicorn.*api'    name a service by a regex on its command line
  apptrace trace --spool-max 8G                   let analysis fall further behind a long peak before dropping

Parsing and storing run in a child process under SCHED_IDLE that follows an on-disk spool
(<db>.spool/): the traced programs keep the CPU, and rows arrive when they leave some idle.
"""


def _yield_percent(text: str) -> float:
    """'auto' or a whole percentage, as a fraction."""
    if text == "auto":
        from apptrace.analysis.priority import auto_yield_above

        return auto_yield_above()
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole percentage or 'auto': {text!r}") from None
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100: {text!r}")
    return v / 100


def _priority(text: str) -> str:
    from apptrace.analysis.priority import parse_priority

    try:
        return parse_priority(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    t = subparsers.add_parser("trace", help="capture TLS plaintext with eBPF and store decoded requests",
                       description="Attach uprobes to SSL_read/SSL_write[_ex] in OpenSSL and BoringSSL "
                       "(shared or static) and Go's crypto/tls, and watch plaintext TCP and Unix sockets "
                       "(HTTP/1, h2c, gRPC, MySQL, PostgreSQL, told apart in the kernel by their first bytes); "
                       "store decoded requests and responses.",
                       epilog=TRACE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--pid", type=positive_int, action="append", default=[],
                   help="trace only this process, and the processes it forks from now on (repeatable)")
    t.add_argument("--no-follow-forks", dest="follow_forks", action="store_false",
                   help="with --pid, leave the processes it forks untraced. Following them attaches the probes "
                   "for every process that maps the same TLS library (filtered in the kernel), so without it "
                   "other processes do not pay an SSL-call trap")
    t.add_argument("--comm", action="append", default=[], help="trace only processes with this name (repeatable)")
    t.add_argument("--no-plaintext", dest="plaintext", action="store_false",
                   help="capture TLS only: leave plaintext (non-TLS) sockets alone. By default a socket a traced "
                   "process connects or accepts is copied when its first bytes are HTTP/1, HTTP/2 (h2c), MySQL "
                   "or PostgreSQL; other protocols are counted (unknown_protocol_conns), never copied")
    t.add_argument("--no-pause", dest="pause", action="store_const", const="report", default="stop",
                   help="do not stop late processes. By default a process that opens a libssl file apptrace has not "
                        "probed yet (a wheel's or a container's own copy, a dlopen), or execs a program it has not "
                        "seen (a Go or static binary), is stopped (SIGSTOP) for about a millisecond while its probes "
                        "go on, then continued (SIGCONT; never longer than --pause-max-ms): that buys its first "
                        "request. It costs that pause once per new file, and a shell's job control may print "
                        "'Stopped' for a job it runs. With --no-pause such files are probed late and the process is "
                        "named as possibly missed in the summary")
    t.add_argument("--pause-max-ms", type=bounded_int(10, 10000), default=200, metavar="MS",
                   help="the longest a late process stays stopped, whatever capture is doing (default 200)")
    t.add_argument("--duration", type=positive_float, metavar="S", help="stop after S seconds")
    t.add_argument("--raw", metavar="FILE", help="also record every raw capture event to FILE (for 'apptrace replay')")
    t.add_argument("--max-chunk", type=power_of_two(256, 65536), default=16384, metavar="BYTES",
                   help="plaintext bytes per ring-buffer record, a power of two (default 16384)")
    t.add_argument("--max-chunks", type=bounded_int(1, 256), default=64, metavar="N",
                   help="records per SSL call; bytes beyond max-chunk*N are counted as a gap (default 64)")
    t.add_argument("--ring-mb", type=power_of_two(1, 4096), default=16, metavar="MB",
                   help="ring buffer size in MiB, a power of two (default 16)")
    t.add_argument("--drain-ms", type=positive_int, default=20, metavar="MS",
                   help="drain the ring at least every MS milliseconds (default 20). Lower values wake capture "
                   "more often: more capture CPU beside the traced server, and (measured on nghttpd) no better "
                   "tail latency (README: Overhead)")
    t.add_argument("--lib", action="append", default=[], metavar="PATH",
                   help="also probe this TLS library or binary (repeatable)")
    t.add_argument("--no-store", action="store_true", help="do not write the DB")
    t.add_argument("--spool", metavar="DIR",
                   help="where captured records wait for analysis (default: <db>.spool, or a temporary directory "
                   "with --no-store)")
    t.add_argument("--spool-max", default="2G", metavar="SIZE",
                   help="cap on records waiting for analysis; past it, data records are dropped and counted as "
                   "backlog_dropped_events (default 2G)")
    t.add_argument("--analysis-priority", type=_priority, default="idle", metavar="idle|N",
                   help="CPU priority of the parsing and storing process: 'idle' (SCHED_IDLE, in an idle cpu cgroup "
                   "where the kernel offers one: it runs only when "
                   "nothing else wants the CPU, so the traced programs keep it under load) or a nice value 0-19 "
                   "(default idle; raised to normal once capture stops, to finish the backlog)")
    t.add_argument("--analysis-yield-above", type=_yield_percent, default="auto", metavar="PCT|auto",
                   help="pause parsing while other processes keep the CPUs more than PCT%% busy, until the "
                   "backlog reaches a quarter of --spool-max (default auto: pause unless a whole CPU is left "
                   "idle, i.e. (CPUs-1)/CPUs and at least 50%%; 100: never pause)")
    t.add_argument("--capture-only", action="store_true",
                   help="with --raw: only record raw events, no parsing or DB (parse later with 'apptrace replay')")
    t.add_argument("--ebpf", action="store_true", help="print the BPF C program and exit")
    t.add_argument("--metrics", metavar="ADDR:PORT",
                   help="serve Prometheus metrics here (e.g. 127.0.0.1:9464 or :9464): request duration and body "
                   "size histograms named as OpenTelemetry's (http_server_request_duration_seconds, …), and the "
                   "tracer's own health (losses, backlog, lag, ring fill, BPF run time). Off by default")
    t.add_argument("--otlp", nargs="?", const="", metavar="ENDPOINT",
                   help="send a span per request and the request metrics over OTLP/HTTP (protobuf), or OTLP/gRPC "
                   "with OTEL_EXPORTER_OTLP_PROTOCOL=grpc, to ENDPOINT or as the standard OTEL_EXPORTER_OTLP_* "
                   "variables say (default http://localhost:4318; gRPC :4317). "
                   "Batched and retried from a bounded queue: a slow or absent collector never slows capture, "
                   "and what cannot be sent is counted in the summary")
    t.add_argument("--quiet", action="store_true",
                   help="no per-record output and no status line, only the summary. The status line (stderr) "
                   "says events/s, rows/s, the spool backlog, how far analysis is behind, and losses so far: "
                   "redrawn every second on a terminal, a line every 10 s otherwise")
    add_store_options(t)
    t.set_defaults(func=run)


def _option(parse: Callable[..., int], flag: str, text: str, **kw: bool) -> int:
    """``parse(text)``, its ValueError naming the option as the user typed it."""
    try:
        return parse(text, **kw)
    except ValueError as exc:
        raise ValueError(f"{flag}: {exc}") from None


def _check_scope(pids: list[int], libs: list[str]) -> None:
    """Refuse, before anything is attached, a --pid that is no process and a --lib that holds no TLS to probe."""
    from apptrace.capture.elfsyms import TlsObject, Unprobeable, inspect

    for pid in pids:
        if not os.path.exists(f"/proc/{pid}"):
            raise ValueError(f"--pid {pid}: no such process")
    for path in libs:
        if not os.path.isfile(path):
            raise ValueError(f"--lib {path}: no such file")
        found = inspect(path)
        if isinstance(found, Unprobeable):
            raise ValueError(f"--lib {path}: {found.reason}")
        if not isinstance(found, TlsObject):
            raise ValueError(f"--lib {path}: no SSL_read/SSL_write functions in it")


def summary_lines(capture: CaptureSummary, analysis: AnalysisSummary | None, spool_note: str = "") -> list[str]:
    """The end-of-run summary: what capture saw and lost, and what analysis made of it."""
    libs = ", ".join(f"{p} ({k})" for p, k in sorted(capture.libraries.items())) or "none"
    connections = analysis.connections if analysis else 0
    records = analysis.totals.records if analysis else 0
    gap_bytes = analysis.totals.gap_bytes if analysis else 0
    parse_errors = analysis.totals.parse_errors if analysis else 0
    out = [
        f"apptrace: traced {len(capture.processes)} processes for {capture.duration_s:.1f}s; probed "
        f"{len(capture.libraries)} TLS objects: {libs}",
        f"apptrace: {capture.events} events, {capture.bytes} plaintext bytes, {connections} connections, "
        f"{records} records",
        "apptrace: losses: "
        + ", ".join(f"{k}={v}" for k, v in capture.losses.items())
        + f", backlog_dropped_events={capture.backlog_dropped_events}"
        + f", disk_full_dropped_events={capture.disk_full_dropped_events}"
        + f", disk_full_dropped_rows={analysis.totals.disk_full_dropped_rows if analysis else 0}"
        + f", gap_bytes={gap_bytes}, parse_errors={parse_errors}",
    ]
    if analysis is not None and analysis.otlp is not None:
        o = analysis.otlp
        out.append(f"apptrace: OpenTelemetry: {o.get('exported', 0)} spans exported, {o.get('dropped', 0)} dropped "
                   f"(queue full), {o.get('failed', 0)} failed (the collector did not take them)")
    out.append(plaintext_line(capture))
    if capture.paused:
        out.append(f"apptrace: stopped {capture.paused} late processes until their TLS object was probed "
                   f"(mean {capture.pause_ms_mean:.1f} ms, longest {capture.pause_ms_max:.1f} ms)")
    if capture.missed:
        out.append(f"apptrace: missed {len(capture.missed)} processes (their first TLS requests may be missing): "
                   + "; ".join(f"pid {pid} ({comm}): {why}" for pid, (comm, why) in sorted(capture.missed.items())))
    if capture.unprobeable:
        out.append("apptrace: seen, not captured: " + "; ".join(
            f"{path} ({why})" for path, why in sorted(capture.unprobeable.items())))
    if spool_note:
        out.append(f"apptrace: {spool_note}")
    if capture.raw_frames:
        out.append(f"apptrace: wrote {capture.raw_frames} raw frames")
    return out


def plaintext_line(capture: CaptureSummary) -> str:
    """What the summary says about plaintext sockets: on or off, and what was seen and not captured."""
    if not capture.plaintext:
        return "apptrace: plaintext capture: off (--no-plaintext): only TLS traffic was captured"
    total = sum(n for _comm, n in capture.unknown_protocol.values())
    line = (f"apptrace: plaintext capture: on (HTTP/1, h2c, gRPC, MySQL, PostgreSQL over TCP and Unix sockets); "
            f"unknown_protocol_conns={total}")
    if total:
        top = sorted(capture.unknown_protocol.items(), key=lambda kv: -kv[1][1])[:5]
        line += " (not copied: " + ", ".join(f"{comm} pid {pid}: {n}" for pid, (comm, n) in top) + ")"
    return line


def _process_state(pid: int) -> str:
    """'alive', 'exiting' (killed: its memory is gone, its threads and files may not be yet) or 'gone'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except (OSError, IndexError):
        return "gone"
    return "exiting" if state in ("Z", "X") or not cmdline else "alive"


def _open_spool(directory: str, header: CaptureHeader, max_bytes: int) -> SpoolWriter:
    """The spool's writer. The lock of a tracer that was killed is waited for while its processes finish
    exiting; an analysis process it left running is asked to commit and stop first."""
    from apptrace.analysis import cpugroup
    from apptrace.analysis.priority import set_priority
    from apptrace.contract.spool import SpoolInUse, SpoolWriter

    try:
        return SpoolWriter(directory, header, max_bytes=max_bytes)
    except SpoolInUse as exc:
        if not exc.holders or _process_state(exc.holders[0]) == "alive":
            raise  # a running tracer
        orphan = exc.holders[1] if len(exc.holders) > 1 else None
        if orphan is not None and _process_state(orphan) == "alive":
            with open(f"/proc/{orphan}/cmdline", "rb") as f:
                if b"apptrace.analysis.loop" not in f.read():
                    raise
            _say(f"apptrace: the analysis process (pid {orphan}) of a tracer that died is still working through "
                 f"{directory}: asking it to commit and stop; this run goes on from there")
            with contextlib.suppress(OSError):
                cpugroup.leave(orphan)  # at normal priority: it stops at once, even on a busy machine
                set_priority(orphan, "0")
                os.kill(orphan, signal.SIGTERM)
        else:
            _say(f"apptrace: waiting for the processes of a tracer that was killed (pid {exc.holders[0]}) to exit")
        return SpoolWriter(directory, header, max_bytes=max_bytes, wait_for_lock=True)


def run(args: argparse.Namespace) -> int:
    from apptrace.analysis.config import AnalysisConfig
    from apptrace.analysis.process import Analysis
    from apptrace.analysis.services import parse_service_rules
    from apptrace.capture.loader import CaptureConfig, LoadError, bpf_source, check_privileges
    from apptrace.capture.tracer import Tracer, clock_offset_ns
    from apptrace.cli.status_line import StatusLine
    from apptrace.common.units import parse_duration, parse_size
    from apptrace.contract.rawfile import CaptureHeader, RawWriter
    from apptrace.contract.spool import HEALTH, remove_spool

    ring_bytes = args.ring_mb * 1024 * 1024
    config = CaptureConfig(max_chunk=args.max_chunk, max_chunks=args.max_chunks, ring_pages=ring_bytes // 4096,
                           pids=tuple(args.pid), comms=tuple(args.comm), follow_forks=args.follow_forks,
                           plaintext=args.plaintext, pause=args.pause, pause_max_ms=args.pause_max_ms)
    try:
        config.validate()
        spool_max = _option(parse_size, "--spool-max", args.spool_max, positive=True)
        if args.max_size is not None:
            _option(parse_size, "--max-size", args.max_size, positive=True)
        if args.retain is not None:
            _option(parse_duration, "--retain", args.retain)
        parse_service_rules(args.service)
        _check_scope(args.pid, args.lib)
        if args.metrics is not None:
            from apptrace.analysis.metrics import parse_listen

            _option(parse_listen, "--metrics", args.metrics)
            if args.capture_only:
                raise ValueError("--metrics needs analysis; it cannot go with --capture-only")
        otlp = None
        if args.otlp is not None:
            import dataclasses

            from apptrace.analysis.otlp import config_from_env

            otlp = dataclasses.asdict(config_from_env(endpoint=args.otlp or None))
            if args.capture_only:
                raise ValueError("--otlp needs analysis; it cannot go with --capture-only")
    except (LoadError, ValueError) as exc:
        print(f"apptrace: {exc}", file=sys.stderr)
        return 2
    if args.ebpf:
        print(bpf_source(config))
        return 0
    if args.capture_only and not args.raw:
        print("apptrace: --capture-only needs --raw FILE (what else would it keep?)", file=sys.stderr)
        return 2
    why = check_privileges()
    if why:
        print(f"apptrace: {why}", file=sys.stderr)
        return 1
    clock_offset = clock_offset_ns()
    header = CaptureHeader(clock_offset_ns=clock_offset, max_capture_per_call=config.max_capture_per_call,
                           max_body=args.max_body, started=time.time_ns(), host=os.uname().nodename)
    raw = spool = analysis = None
    try:
        if args.raw:
            raw = RawWriter(args.raw, header)
        if not args.capture_only:
            db = None if args.no_store else args.db
            spool_dir = args.spool or (f"{db}.spool" if db else tempfile.mkdtemp(prefix="apptrace-spool-"))
            spool = _open_spool(spool_dir, header, spool_max)
            if spool.leftover_segments:
                _say(f"apptrace: {spool_dir} holds {spool.leftover_bytes} bytes ({spool.leftover_segments} segments) "
                     "spooled by a tracer that did not stop cleanly: analysing them first, from their last commit")
            analysis = Analysis(AnalysisConfig(
                spool=spool_dir, db=db, clock_offset_ns=clock_offset, max_capture_per_call=config.max_capture_per_call,
                host=header.host,
                max_body=args.max_body, service_rules=args.service, retain=args.retain, max_size=args.max_size,
                redact=not args.no_redact, redact_headers=args.redact_header, redact_params=args.redact_param,
                print_rows=not args.quiet, priority=args.analysis_priority, yield_above=args.analysis_yield_above,
                metrics=args.metrics, otlp=otlp, yield_backlog_max=spool_max // 4, run=header.run_id),
                keep_fds=(spool.lock_fd,))
            spool.note_reader(analysis.pid)
    except OSError as exc:  # SpoolInUse included: another tracer on this DB
        print(f"apptrace: {exc}", file=sys.stderr)
        if raw is not None:
            raw.close()
        if spool is not None:  # nothing traced into it
            spool.remove_own()
        return 2
    except KeyboardInterrupt:  # while waiting for an orphaned analysis to stop
        return 1
    status = None if args.quiet else StatusLine()
    tracer = Tracer(config=config, spool=spool, raw=raw, analysis=analysis, duration=args.duration,
                    extra_libs=args.lib, drain_ms=args.drain_ms, log=status.say if status else None,
                    on_tick=status.tick if status else None,
                    health_file=os.path.join(spool.directory, HEALTH) if args.metrics and spool is not None else None)
    try:
        captured = tracer.run()
    except LoadError as exc:
        print(f"apptrace: {exc}", file=sys.stderr)
        if analysis is not None:
            analysis.finish(lambda msg: None)
        if spool is not None:
            spool.remove_own()  # nothing was traced yet; a dead run's leftovers stay for the next start
        return 1
    failed = tracer.failed
    analysed = None
    spool_note = ""
    if analysis is not None and spool is not None:
        analysed = analysis.finish(status.say if status else _say, on_progress=status.draining if status else None)
        failed = failed or analysed.error
        left = analysed.left_in_spool
        if left == 0:
            remove_spool(spool.directory)
        else:
            spool_note = (f"{left if left is not None else 'some'} bytes of capture were not analysed; they are "
                          f"kept in {spool.directory}, and the next 'apptrace trace' on this DB analyses them first")
    if status is not None:
        status.clear()
    for line in summary_lines(captured, analysed, spool_note) + ([f"apptrace: {failed}"] if failed else []):
        _say(line)
    return 1 if failed else 0


def _say(line: str) -> None:
    """A line on stderr, if anyone still reads it: after SIGHUP the terminal may be gone."""
    try:
        print(line, file=sys.stderr, flush=True)
    except OSError:
        pass
