"""``apptrace report``: per-service latency, errors and throughput."""

from __future__ import annotations

import argparse

from apptrace.cli.options import add_limit, add_query_source
from apptrace.query.rules import DEFAULT_WINDOW

REPORT_EPILOG = """\
examples:
  apptrace report
  apptrace report --since 15m
  apptrace report --since 24h --html report.html
  apptrace report --service checkout --protocol http -o json
  apptrace report --since 24h --parquet '/srv/apptrace-export/**'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="per-service latency, errors and throughput",
                              description="Per-service p50/p90/p99 latency, error rate and throughput across "
                              "HTTP, gRPC, MySQL and PostgreSQL for a time window.",
                              epilog=REPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_query_source(p)
    p.add_argument("--since", default=DEFAULT_WINDOW, metavar="DURATION",
                   help=f"the window: 15m, 1h, 24h (default {DEFAULT_WINDOW}, as watch and the shipped scripts)")
    p.add_argument("--service", action="append", default=[], help="only this service (repeatable)")
    p.add_argument("--protocol", action="append", default=[], choices=("http", "mysql", "pgsql"),
                   help="only this protocol (repeatable)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    p.add_argument("--format", "-o", choices=("table", "csv", "json"), default="table", help="output format")
    add_limit(p)
    p.add_argument("--print-sql", action="store_true", help="print the SQL and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apptrace.query import report

    return report.main(args)
