"""``apptrace sql``: one read-only SQL query."""

from __future__ import annotations

import argparse
import sys

from apptrace.cli.options import add_format, add_limit, add_query_source, fail

SQL_EPILOG = """\
tables: http_events, mysql_events, pgsql_events, connections, processes, capture_stats

examples:
  apptrace sql "SELECT service, count(*) FROM http_events GROUP BY ALL"
  apptrace sql "SELECT * FROM http_events WHERE resp_status >= 500 ORDER BY time_ DESC LIMIT 5" -o json
  apptrace sql "SELECT sum(lost_events) FROM capture_stats" --db trace.duckdb
  echo "DESCRIBE http_events" | apptrace sql -
  apptrace sql "SELECT host, count(*) FROM http_events GROUP BY ALL" --parquet '/srv/apptrace-export/**'
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("sql", help="run one SQL query", description="Run one read-only SQL query "
                              "against the trace database.", epilog=SQL_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("query", metavar="SQL", help='the query, e.g. "SELECT count(*) FROM http_events" (- = stdin)')
    add_query_source(p)
    add_format(p)
    add_limit(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apptrace.query.backend import QueryError, open_query_backend
    from apptrace.query.output import write_outputs

    query = args.query if args.query != "-" else sys.stdin.read()
    try:
        backend = open_query_backend(args.db, args.parquet)
        try:
            table = backend.query_arrow(query)
        finally:
            backend.close()
    except QueryError as e:
        return fail("sql", str(e))
    write_outputs([("output", table.to_pandas())], args.format, limit=args.limit)
    return 0
