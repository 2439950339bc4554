"""``apptrace run``: a px script, shipped (queries/*.pxl) or the user's own."""

from __future__ import annotations

import argparse

from apptrace.cli.options import add_format, add_limit, add_query_source, fail

RUN_EPILOG = """\
scripts:
  A script is Python with `px` imported (`import px` works too); it ends with px.display(df, 'name').
  Arguments: define `def main(start_time: str = '-15m', service: str = '')` and it is called with --arg values
  converted to the annotated types, or read them anywhere with px.arg('service', '').

examples:
  apptrace run --list
  apptrace run http_stats
  apptrace run http_stats --arg start_time=-1h --arg service=checkout
  apptrace run slow_requests --format json | jq '.slowest[0]'
  apptrace run ./my_query.pxl --db /var/lib/apptrace/trace.duckdb --format csv
  apptrace run service_map --print-sql
  apptrace run http_stats --parquet '/srv/apptrace-export/**'   (every host's export at once)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("run", help="run a PxL-style px script", description="Run a px script (a path, or "
                              "the name of a shipped script) and print each px.display.",
                              epilog=RUN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("script", nargs="?", metavar="SCRIPT", help="a shipped script name, or your own script as a path with a slash (./mine.pxl); a bare name is never looked up in the current directory")
    add_query_source(p)
    add_format(p)
    add_limit(p)
    p.add_argument("--arg", action="append", default=[], metavar="K=V", help="a script argument (repeatable)")
    p.add_argument("--list", action="store_true", help="list the shipped scripts and what each answers")
    p.add_argument("--print-sql", action="store_true", help="print the one SQL query of each display; run nothing")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apptrace.query.output import write_outputs
    from apptrace.query.scripts import UserError, parse_kv, run_script, script_description, shipped_scripts

    if args.list:
        for name, p in shipped_scripts().items():
            print(f"{name:<22} {script_description(p.read_text(encoding='utf-8'))}")
        return 0
    if not args.script:
        return fail("run", "give a SCRIPT (a path or a shipped name; see --list)")
    from apptrace.query.backend import ParquetBackend, QueryError

    try:
        backend = ParquetBackend(args.parquet) if args.parquet and not args.print_sql else None
    except QueryError as e:
        return fail("run", str(e))
    try:
        outputs = run_script(args.script, args.db, parse_kv(args.arg), backend=backend, print_sql=args.print_sql)
    except UserError as e:
        return fail("run", str(e))
    if args.print_sql:
        for name, sql in outputs:
            print(f"-- {name}\n{sql};\n")
        return 0
    write_outputs(outputs, args.format, limit=args.limit, header=rows_header(args.db, args.parquet))
    return 0


def rows_header(db: str, parquet: str | None = None) -> str | None:
    """How current the rows are (apptrace.query.freshness), for the header of the output; None if unknown."""
    from apptrace.query.backend import QueryError, open_query_backend
    from apptrace.query.freshness import freshness

    try:
        backend = open_query_backend(db, parquet)
    except QueryError:
        return None
    try:
        return f"{parquet or db}: {freshness(backend).describe()}"
    finally:
        backend.close()
