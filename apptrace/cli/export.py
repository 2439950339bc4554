"""``apptrace export``: the tables as Hive-partitioned Parquet files, adding only what is new each time."""

from __future__ import annotations

import argparse

from apptrace.cli.options import add_db, fail
from apptrace.store.schema import TABLES

EXPORT_EPILOG = f"""\
tables: {", ".join(TABLES)}

Files go to DIR/table=T/date=YYYY-MM-DD/host=H/part-*.parquet. A second export into the same DIR adds only the
rows stored since the first (late rows and updated connections included), never one twice; a run that dies is
undone and redone by the next. Works on a DB a tracer holds (through its socket) and on one no one holds.

examples:
  apptrace export --parquet /srv/apptrace-export
  apptrace export --parquet /srv/apptrace-export --db /var/lib/apptrace/trace.duckdb --table http_events
  apptrace run http_stats --parquet '/srv/apptrace-export/**'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write the tables as Parquet, incrementally",
                              description="Write apptrace's tables as Hive-partitioned Parquet (by table, date "
                              "and host), adding only what is new since the last export into DIR.",
                              epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parquet", metavar="DIR", required=True, help="the directory to write (created if missing)")
    add_db(p, queries=True)
    p.add_argument("--table", action="append", default=[], metavar="T",
                   help="only this table (repeatable; default: every table)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apptrace.query.export import ExportError, export_parquet

    try:
        result = export_parquet(args.db, args.parquet, args.table or None)
    except ExportError as e:
        return fail("export", str(e))
    rows = ", ".join(f"{t} {n}" for t, n in result.rows.items())
    undone = f"; removed {result.removed_leftovers} file(s) of an export that died" if result.removed_leftovers else ""
    print(f"apptrace export: {sum(result.rows.values())} new rows in {result.files} file(s) into {args.parquet} "
          f"({rows}){undone}")
    return 0
