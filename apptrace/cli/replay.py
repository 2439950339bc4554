"""``apptrace replay``: a raw capture (``trace --raw``, or a spool segment) through the pipeline into the DB."""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from typing import TYPE_CHECKING

from apptrace.cli.options import add_store_options

if TYPE_CHECKING:
    from collections.abc import Callable

    from apptrace.analysis.pipeline import Connection
    from apptrace.store.redact import Redactor

REPLAY_EPILOG = """examples:
  apptrace replay capture.raw                     parse a recorded capture into ./apptrace.duckdb
  apptrace replay capture.raw --streams           print each connection's plaintext, both ways
  apptrace replay capture.raw --db other.duckdb --max-body 4096
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    r = subparsers.add_parser("replay", help="run a raw capture (trace --raw) through the parsers into the DB",
                              epilog=REPLAY_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("file", help="raw capture written by 'apptrace trace --raw'")
    r.add_argument("--streams", action="store_true", help="print each connection's plaintext instead of storing")
    add_store_options(r)
    r.set_defaults(func=run)


def _stream_printer(redactor: Redactor | None) -> Callable[[Connection, bool, bytes, int], None]:
    """Prints each chunk of plaintext; with a redactor, through its text and SQL rules (a secret split
    between two chunks, or inside HPACK-compressed HTTP/2 headers, is beyond them: the raw file is the
    place for exact bytes)."""

    def print_stream(conn: Connection, egress: bool, data: bytes, ts: int) -> None:
        arrow = ">>" if egress else "<<"
        print(f"--- {conn.conn_id} pid={conn.pid} role={conn.role or '?'} {arrow} {len(data)} bytes "
              f"{conn.local_addr}:{conn.local_port} -> {conn.remote_addr}:{conn.remote_port}")
        text = data.decode("utf-8", "backslashreplace")
        if redactor is not None:
            text = redactor.sql(redactor.text(text))
        sys.stdout.write(text)
        sys.stdout.write("\n")

    return print_stream


def file_digest(path: str) -> str:
    """The capture's identity: the same bytes, replayed again, would be the same rows again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(args: argparse.Namespace) -> int:
    from apptrace.analysis.replay import replay_file
    from apptrace.analysis.sinks import NullSink
    from apptrace.contract.rawfile import RawFormatError

    if not os.path.exists(args.file):
        print(f"apptrace: {args.file}: no such file", file=sys.stderr)
        return 2
    try:
        if args.streams:
            from apptrace.store.redact import Redactor

            redactor = None if args.no_redact else Redactor(args.redact_header, args.redact_param)
            pipeline, error = replay_file(args.file, NullSink(), tap=_stream_printer(redactor),
                                          max_body=args.max_body)
        else:
            from apptrace.store.writer import Store, StoreError

            try:
                store = Store(args.db, retain=args.retain, max_size=args.max_size, redact=not args.no_redact,
                              redact_headers=args.redact_header, redact_params=args.redact_param)
            except StoreError as exc:
                print(f"apptrace: {exc}", file=sys.stderr)
                return 1
            from apptrace.contract.rawfile import read_raw

            run = read_raw(args.file)[0].run_id
            if run in store.runs_in_progress():
                store.close()
                print(f"apptrace: {args.file} comes from a tracer run that {args.db} is still taking in (its "
                      f"analysis committed part of it): 'apptrace trace --db {args.db}' finishes it; a replay "
                      "would store those rows twice", file=sys.stderr)
                return 2
            digest = file_digest(args.file)
            done = store.replayed(digest)
            if done is not None:
                store.close()
                print(f"apptrace: {args.file} was already replayed into {args.db} ({done}); nothing added",
                      file=sys.stderr)
                return 2
            pipeline, error = replay_file(args.file, store, max_body=args.max_body, service_rules=args.service,
                                          flush=store.flush)
            store.flush()
            store.mark_replayed(digest, args.file)  # damaged or not: what came before the damage is stored
            store.close()
    except (RawFormatError, ValueError) as exc:
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
