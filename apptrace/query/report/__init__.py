"""`apptrace report`: per-service latency (p50/p90/p99), error rate and throughput across HTTP, gRPC, MySQL and
PostgreSQL for a time window — as a terminal table, JSON/CSV, or a self-contained HTML page with charts.

Errors are what apptrace.query.rules says they are: HTTP status >= 500, gRPC status other than 0, SQL responses
with status 'ERR'. The package, in the order the data flows:

    queries.py   the queries, as px DataFrames over the event tables
    data.py      `collect`: runs them and shapes the rows into a `Report`
    terminal.py  the Report as a rich table
    html.py      the Report as one HTML page, with the charts of svg.py
    svg.py       line charts, a latency histogram and sparklines as inline SVG
    (apptrace.query.fmt writes the numbers: ms, rates, percentages, counts, as every view does)
    __init__.py  `main`, the command: options in, one of the outputs out
"""

from __future__ import annotations

import argparse
import json
import sys

from apptrace.common.defaults import default_db
from apptrace.common.units import parse_window
from apptrace.query.backend import QueryError, open_query_backend
from apptrace.query.fmt import fmt_count, fmt_ms, fmt_pct, fmt_rate, fmt_window
from apptrace.query.report import queries
from apptrace.query.report.data import Report, bucket_seconds, collect
from apptrace.query.report.html import render_html
from apptrace.query.report.svg import nice_ticks
from apptrace.query.report.terminal import print_terminal

_nice_ticks = nice_ticks  # the name it had when the report was one module

__all__ = ["Report", "bucket_seconds", "collect", "fmt_count", "fmt_ms", "fmt_pct", "fmt_rate", "fmt_window",
           "main", "nice_ticks", "print_terminal", "render_html"]


def main(args: argparse.Namespace) -> int:
    db = default_db(args.db)
    try:
        since_ns = parse_window(args.since)
    except ValueError as e:
        print(f"apptrace report: {e}", file=sys.stderr)
        return 2
    if getattr(args, "print_sql", False):
        print(queries.summary(queries.Scope(since_ns, tuple(args.service), tuple(args.protocol))).to_sql())
        return 0
    try:
        parquet = getattr(args, "parquet", None)
        backend = open_query_backend(db, parquet)
        try:
            rep = collect(backend, args.since, parquet or db, args.service, args.protocol, charts=bool(args.html))
        finally:
            backend.close()
    except QueryError as e:
        print(f"apptrace report: {e}", file=sys.stderr)
        return 2
    if args.html:
        try:
            with open(args.html, "w", encoding="utf-8") as f:
                f.write(render_html(rep))
        except OSError as e:
            print(f"apptrace report: cannot write {args.html}: {e.strerror}", file=sys.stderr)
            return 2
    if args.format == "json":
        json.dump({"since": rep.since, "window_s": rep.window_s, **(rep.fresh.as_json() if rep.fresh else {}),
                   "services": rep.summary}, sys.stdout)
        sys.stdout.write("\n")
    elif args.format == "csv":
        import csv

        cols = ["service", "protocol", "role", "requests", "rps", "p50_ms", "p90_ms", "p99_ms", "errors",
                "error_rate"]
        if rep.fresh:
            print(f"{rep.db}: {rep.fresh.describe()}", file=sys.stderr)  # stdout is the CSV a program reads
        w = csv.DictWriter(sys.stdout, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rep.summary)
    else:
        print_terminal(rep, limit=args.limit)
        if args.html:
            print(f"wrote {args.html}", file=sys.stderr)
    return 0
