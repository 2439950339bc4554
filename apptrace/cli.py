"""apptrace: see inside TLS traffic (HTTP/1, HTTP/2, gRPC, MySQL, PostgreSQL) without keys or code changes.

Commands: trace · replay · doctor · demo · run · sql · report · watch
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

DEFAULT_DB = "apptrace.duckdb"

TRACE_EPILOG = """examples:
  apptrace trace                                  trace every process into ./apptrace.duckdb
  apptrace trace --pid 1234 --duration 60         one process, one minute
  apptrace trace --comm nginx --comm node         by process name
  apptrace trace --raw capture.raw                also record every raw event, for replay
  apptrace trace --raw cap.raw --capture-only     record only (cheapest); parse later with replay
  apptrace trace --service api='gunicorn.*api'    name a service by a regex on its command line
  apptrace trace --spool-max 8G                   let analysis fall further behind a long peak before dropping

Parsing and storing run in a child process under SCHED_IDLE that follows an on-disk spool
(<db>.spool/): the traced programs keep the CPU, and rows arrive when they leave some idle.
"""

REPLAY_EPILOG = """examples:
  apptrace replay capture.raw                     parse a recorded capture into ./apptrace.duckdb
  apptrace replay capture.raw --streams           print each connection's plaintext, both ways
  apptrace replay capture.raw --db other.duckdb --max-body 4096
"""

DOCTOR_EPILOG = """examples:
  apptrace doctor                                 check this machine can trace, list TLS libraries in use
"""


def default_db() -> str:
    return os.environ.get("APPTRACE_DB") or DEFAULT_DB


def _positive(kind: type[int] | type[float]):
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


_positive_int = _positive(int)


def _yield_percent(text: str) -> float:
    """'auto' or a whole percentage, as a fraction."""
    if text == "auto":
        from apptrace.analyzer import auto_yield_above

        return auto_yield_above()
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole percentage or 'auto': {text!r}") from None
    if not 1 <= v <= 100:
        raise argparse.ArgumentTypeError(f"must be between 1 and 100: {text!r}")
    return v / 100


def _priority(text: str) -> str:
    from apptrace.analyzer import parse_priority

    try:
        return parse_priority(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None

_positive_float = _positive(float)


def _add_store_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", default=None, help=f"DuckDB file (default: $APPTRACE_DB or ./{DEFAULT_DB})")
    p.add_argument("--max-body", type=_positive_int, default=1024, metavar="N",
                   help="bytes of each body kept; *_body_size keeps the full size (default 1024)")
    p.add_argument("--no-redact", action="store_true",
                   help="store Authorization, Cookie, Set-Cookie, Proxy-Authorization values as captured")
    p.add_argument("--redact-header", action="append", default=[], metavar="NAME",
                   help="also redact this header's values (repeatable)")
    p.add_argument("--retain", metavar="DURATION", help="drop rows older than this, e.g. 24h")
    p.add_argument("--max-size", metavar="SIZE", help="keep the DB file under this size, e.g. 2G")
    p.add_argument("--service", action="append", default=[], metavar="NAME=RULE",
                   help="name a service: RULE is pid:N, comm:NAME or a regex on the command line (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apptrace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'apptrace COMMAND --help' for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("trace", help="capture TLS plaintext with eBPF and store decoded requests",
                       description="Attach uprobes to SSL_read/SSL_write[_ex] in OpenSSL and BoringSSL "
                       "(shared or static) and store decoded requests and responses.",
                       epilog=TRACE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--pid", type=_positive_int, action="append", default=[], help="trace only this process (repeatable)")
    t.add_argument("--comm", action="append", default=[], help="trace only processes with this name (repeatable)")
    t.add_argument("--duration", type=_positive_float, metavar="S", help="stop after S seconds")
    t.add_argument("--raw", metavar="FILE", help="also record every raw capture event to FILE (for 'apptrace replay')")
    t.add_argument("--max-chunk", type=_positive_int, default=16384, metavar="BYTES",
                   help="plaintext bytes per ring-buffer record, a power of two (default 16384)")
    t.add_argument("--max-chunks", type=_positive_int, default=64, metavar="N",
                   help="records per SSL call; bytes beyond max-chunk*N are counted as a gap (default 64)")
    t.add_argument("--ring-mb", type=_positive_int, default=16, metavar="MB",
                   help="ring buffer size in MiB, a power of two (default 16)")
    t.add_argument("--drain-ms", type=_positive_int, default=20, metavar="MS",
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
    t.add_argument("--quiet", action="store_true", help="no per-record output, only the summary")
    _add_store_options(t)
    t.set_defaults(func=cmd_trace)

    r = sub.add_parser("replay", help="run a raw capture (trace --raw) through the parsers into the DB",
                       epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", help="raw capture written by 'apptrace trace --raw'")
    r.add_argument("--streams", action="store_true", help="print each connection's plaintext instead of storing")
    _add_store_options(r)
    r.set_defaults(func=cmd_replay)

    d = sub.add_parser("doctor", help="check that this machine can trace; list TLS libraries in use",
                       epilog=DOCTOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="trace real local TLS traffic for a few seconds and show the report")
    demo.add_argument("--db", default="demo.duckdb", help="DuckDB file for the demo (default ./demo.duckdb)")
    demo.set_defaults(func=cmd_demo)

    try:
        from apptrace import querycli
    except ImportError:  # pragma: no cover - only while the query commands are missing
        querycli = None
    if querycli is not None:
        querycli.register(sub)
    return parser


def _open_store(args: argparse.Namespace):
    from apptrace.store import Store

    return Store(args.db or default_db(), retain=args.retain, max_size=args.max_size,
                 redact=not args.no_redact, redact_headers=args.redact_header)


def cmd_trace(args: argparse.Namespace) -> int:
    from apptrace.analyzer import Analysis, AnalysisConfig
    from apptrace.conns import parse_service_rules
    from apptrace.loader import CaptureConfig, LoadError, bpf_source, check_privileges
    from apptrace.rawlog import RawWriter
    from apptrace.spool import SpoolWriter, remove_spool
    from apptrace.tracer import Tracer, clock_offset_ns
    from apptrace.units import parse_size

    ring_bytes = args.ring_mb * 1024 * 1024
    config = CaptureConfig(max_chunk=args.max_chunk, max_chunks=args.max_chunks, ring_pages=ring_bytes // 4096,
                           pids=tuple(args.pid), comms=tuple(args.comm))
    try:
        config.validate()
        spool_max = parse_size(args.spool_max, positive=True)
        parse_service_rules(args.service)
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
    header = {"clock_offset_ns": clock_offset, "max_capture_per_call": config.max_capture_per_call,
              "max_body": args.max_body, "started": time.time_ns(), "host": os.uname().nodename}
    raw = spool = analysis = None
    try:
        if args.raw:
            raw = RawWriter(args.raw, header)
        if not args.capture_only:
            db = None if args.no_store else (args.db or default_db())
            spool_dir = args.spool or (f"{db}.spool" if db else tempfile.mkdtemp(prefix="apptrace-spool-"))
            spool = SpoolWriter(spool_dir, header, max_bytes=spool_max)
            analysis = Analysis(AnalysisConfig(
                spool=spool_dir, db=db, clock_offset_ns=clock_offset, max_capture_per_call=config.max_capture_per_call,
                max_body=args.max_body, service_rules=args.service, retain=args.retain, max_size=args.max_size,
                redact=not args.no_redact, redact_headers=args.redact_header, print_rows=not args.quiet,
                priority=args.analysis_priority, yield_above=args.analysis_yield_above,
                yield_backlog_max=spool_max // 4))
    except OSError as exc:  # FileExistsError included: a spool left by an earlier run
        print(f"apptrace: {exc}", file=sys.stderr)
        if raw is not None:
            raw.close()
        if spool is not None:  # ours and still empty: left behind, the next start would refuse it
            spool.close()
            remove_spool(spool.directory)
        return 2
    tracer = Tracer(config=config, spool=spool, raw=raw, analysis=analysis, duration=args.duration,
                    extra_libs=args.lib, drain_ms=args.drain_ms)
    try:
        summary = tracer.run()
    except LoadError as exc:
        print(f"apptrace: {exc}", file=sys.stderr)
        if analysis is not None:
            analysis.finish(lambda msg: None)
        if spool is not None:
            remove_spool(spool.directory)  # nothing was traced yet
        return 1
    failed = tracer.failed
    if analysis is not None and spool is not None:
        result = analysis.finish(lambda msg: print(msg, file=sys.stderr, flush=True))
        summary.connections = result.get("connections", 0)
        summary.records = result.get("records", 0)
        summary.gap_bytes = result.get("gap_bytes", 0)
        summary.parse_errors = result.get("parse_errors", 0)
        failed = failed or result.get("error")
        left = result.get("left_in_spool")
        if left == 0:
            remove_spool(spool.directory)
        else:
            summary.analysis = (f"{left if left is not None else 'some'} bytes of capture were not analysed; they "
                                f"are kept in {spool.directory} (apptrace replay each segment, then remove it)")
    for line in summary.lines():
        print(line, file=sys.stderr)
    if failed:
        print(f"apptrace: {failed}", file=sys.stderr)
        return 1
    return 0


def _print_stream(conn, egress: bool, data: bytes, ts: int) -> None:
    arrow = ">>" if egress else "<<"
    print(f"--- {conn.conn_id} pid={conn.pid} role={conn.role or '?'} {arrow} {len(data)} bytes "
          f"{conn.local_addr}:{conn.local_port} -> {conn.remote_addr}:{conn.remote_port}")
    sys.stdout.write(data.decode("utf-8", "backslashreplace"))
    sys.stdout.write("\n")


def cmd_replay(args: argparse.Namespace) -> int:
    from apptrace.rawlog import RawFormatError
    from apptrace.replay import NullSink, replay_file

    if not os.path.exists(args.file):
        print(f"apptrace: {args.file}: no such file", file=sys.stderr)
        return 2
    store = None
    try:
        if args.streams:
            pipeline, error = replay_file(args.file, NullSink(), tap=_print_stream, max_body=args.max_body)
        else:
            from apptrace.store import StoreError

            try:
                store = _open_store(args)
            except StoreError as exc:
                print(f"apptrace: {exc}", file=sys.stderr)
                return 1
            pipeline, error = replay_file(args.file, store, max_body=args.max_body, service_rules=args.service,
                                          flush=store.flush)
            store.close()
    except RawFormatError as exc:
        print(f"apptrace: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"apptrace: {exc}", file=sys.stderr)
        return 2
    t = pipeline.totals
    print(f"apptrace: replayed {t.events} events, {t.bytes} bytes, {pipeline.connection_count} connections, "
          f"{t.records} records; gap_bytes={t.gap_bytes} parse_errors={t.parse_errors} "
          f"lost_events={t.lost_events}", file=sys.stderr)
    if error:
        print(f"apptrace: {error}", file=sys.stderr)
        return 1
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from apptrace.doctor import run_doctor

    return run_doctor()


def cmd_demo(args: argparse.Namespace) -> int:
    from apptrace.demo import run_demo

    return run_demo(args.db)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "db", None) is None and "db" in args:
        args.db = default_db()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
