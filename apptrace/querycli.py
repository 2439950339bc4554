"""The query commands: run · sql · report · watch.

They read the database through a running tracer's socket (`<db>.sock`) when there is one, else the file
read-only. Bad input (a broken script, bad SQL, an unknown table or column) prints one line on stderr, nothing on
stdout, and exits 2.
"""

from __future__ import annotations

import argparse
import importlib.resources
import inspect
import json
import math
import os
import sys
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

EXIT_BAD_INPUT = 2


class UserError(Exception):
    """A one-line message for the user; exit status 2."""


def db_path(args: argparse.Namespace) -> str:
    return args.db or os.environ.get("APPTRACE_DB") or "apptrace.duckdb"


def _add_db(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="PATH", default=None,
                   help="the database (default: $APPTRACE_DB or ./apptrace.duckdb); while a tracer holds it, "
                        "queries go through its socket PATH.sock")


def _add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-o", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table); json is one object mapping each display name to rows")


# -- output ----------------------------------------------------------------------------------------------------
def _cell(v: Any) -> str:
    import pandas as pd

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if v is pd.NaT:
        return ""
    if isinstance(v, pd.Timestamp):
        return v.isoformat(sep=" ")
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.6g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) + "}"
    s = str(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _jsonable(v: Any) -> Any:
    import pandas as pd

    if v is None or v is pd.NaT:
        return None
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, pd.Timedelta):
        return int(v.value)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def records(df: pd.DataFrame) -> list[dict]:
    cols = list(df.columns)
    return [{c: _jsonable(v) for c, v in zip(cols, row, strict=True)}
            for row in df.astype(object).itertuples(index=False, name=None)]


def write_outputs(outputs: Sequence[tuple[str, pd.DataFrame]], fmt: str, out: Any = None) -> None:
    import pandas as pd

    out = out or sys.stdout
    if fmt == "json":
        json.dump({name: records(df) for name, df in outputs}, out, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        for i, (name, df) in enumerate(outputs):
            if len(outputs) > 1:
                out.write(("\n" if i else "") + f"# {name}\n")
            df.to_csv(out, index=False)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(file=out, width=None if out.isatty() else 200, soft_wrap=False)
    for name, df in outputs:
        t = Table(title=f"{name} ({len(df)} rows)", title_justify="left", header_style="bold cyan")
        for c in df.columns:
            t.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left",
                         overflow="fold")
        for row in df.astype(object).itertuples(index=False, name=None):
            t.add_row(*(_cell(v) for v in row))
        console.print(t)


# -- scripts ---------------------------------------------------------------------------------------------------
def shipped_scripts() -> dict[str, Any]:
    """name → Traversable of each queries/*.pxl."""
    root = importlib.resources.files("apptrace.queries")
    return {p.name[:-4]: p for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".pxl")}


def script_description(source: str) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        return "(does not parse)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def resolve_script(spec: str) -> tuple[str, str]:
    """SCRIPT as given → (display path, source). A path on disk wins over a shipped name."""
    if os.path.exists(spec):
        try:
            with open(spec, encoding="utf-8") as f:
                return spec, f.read()
        except OSError as e:
            raise UserError(f"cannot read {spec}: {e.strerror}") from None
    scripts = shipped_scripts()
    name = spec[:-4] if spec.endswith(".pxl") else spec
    if name in scripts:
        return f"queries/{name}.pxl", scripts[name].read_text(encoding="utf-8")
    raise UserError(f"no script {spec!r}: not a file, and not a shipped script ({', '.join(scripts)})")


def parse_kv(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--arg {it!r}: expected NAME=VALUE")
        out[k.strip()] = v
    return out


def _script_error(path: str, e: BaseException) -> UserError:
    from apptrace.px import PxError

    if isinstance(e, SyntaxError) and (e.filename in (path, None)):
        return UserError(f"{path}:{e.lineno}: SyntaxError: {e.msg}")
    line = None
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename == path:
            line = fs.lineno
    msg = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, PxError):
        msg = f"{type(e).__name__}: {msg}"
    where = f"{path}:{line}: " if line else f"{path}: "
    return UserError(where + msg)


def run_script(spec: str, db: str, args: dict[str, str] | None = None, backend: Any = None,
               print_sql: bool = False) -> list[tuple[str, Any]]:
    """Run a px script; the list of (display name, result) — or, with print_sql, of (display name, SQL) without
    running any query. Raises UserError with the script's line."""
    import apptrace.px as px
    from apptrace.px.session import session

    sys.modules.setdefault("px", px)
    path, source = resolve_script(spec)
    args = dict(args or {})
    with session(db=db, backend=backend, collect=True, args=args, print_sql=print_sql) as s:
        g: dict[str, Any] = {"px": px, "__name__": "__pxl__", "__file__": path, "__builtins__": __builtins__}
        try:
            code = compile(source, path, "exec")
            exec(code, g)  # noqa: S102 - running the user's script is the point
            main = g.get("main")
            if callable(main):
                kwargs = _main_kwargs(main, args, path)
                result = main(**kwargs)
                if isinstance(result, px.DataFrame):
                    px.display(result)
                elif isinstance(result, dict):
                    for name, df in result.items():
                        px.display(df, name=name)
            else:
                unused = sorted(set(args) - s.used_args)
                if unused:
                    raise UserError(f"{path}: unknown --arg {', '.join(unused)}; this script reads "
                                    f"{', '.join(sorted(s.used_args)) or 'no arguments'}")
        except UserError:
            raise
        except Exception as e:
            raise _script_error(path, e) from None
        return list(s.sql) if print_sql else list(s.outputs)


def _main_kwargs(main: Any, args: dict[str, str], path: str) -> dict[str, Any]:
    from apptrace.px import convert_arg

    sig = inspect.signature(main)
    params = sig.parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise UserError(f"{path}: unknown --arg {', '.join(unknown)}; main() takes "
                        f"{', '.join(params) or 'no arguments'}")
    out = {}
    for name, p in params.items():
        if name in args:
            ann = p.annotation
            if isinstance(ann, str):
                ann = {"int": int, "float": float, "str": str, "bool": bool}.get(ann, str)
            if ann is inspect.Parameter.empty:
                ann = type(p.default) if p.default not in (inspect.Parameter.empty, None) else str
            out[name] = convert_arg(name, args[name], ann)
        elif p.default is inspect.Parameter.empty:
            raise UserError(f"{path}: main() needs --arg {name}=VALUE")
    return out


# -- handlers --------------------------------------------------------------------------------------------------
def _fail(cmd: str, msg: str) -> int:
    print(f"apptrace {cmd}: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def cmd_run(args: argparse.Namespace) -> int:
    if args.list:
        for name, p in shipped_scripts().items():
            print(f"{name:<22} {script_description(p.read_text(encoding='utf-8'))}")
        return 0
    if not args.script:
        return _fail("run", "give a SCRIPT (a path or a shipped name; see --list)")
    try:
        outputs = run_script(args.script, db_path(args), parse_kv(args.arg), print_sql=args.print_sql)
    except UserError as e:
        return _fail("run", str(e))
    if args.print_sql:
        for name, sql in outputs:
            print(f"-- {name}\n{sql};\n")
        return 0
    write_outputs(outputs, args.format)
    return 0


def cmd_sql(args: argparse.Namespace) -> int:
    from apptrace.queryserver import QueryError, open_backend

    query = args.query if args.query != "-" else sys.stdin.read()
    try:
        backend = open_backend(db_path(args))
        try:
            table = backend.query_arrow(query)
        finally:
            backend.close()
    except QueryError as e:
        return _fail("sql", str(e))
    write_outputs([("output", table.to_pandas())], args.format)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from apptrace import report

    return report.main(args)


def cmd_watch(args: argparse.Namespace) -> int:
    from apptrace import watch

    return watch.main(args)


RUN_EPILOG = """\
scripts:
  A script is Python with `px` imported (`import px` works too); it ends with px.display(df, 'name').
  Arguments: define `def main(start_time: str = '-5m', service: str = '')` and it is called with --arg values
  converted to the annotated types, or read them anywhere with px.arg('service', '').

examples:
  apptrace run --list
  apptrace run http_stats
  apptrace run http_stats --arg start_time=-1h --arg service=checkout
  apptrace run slow_requests --format json | jq '.slowest[0]'
  apptrace run ./my_query.pxl --db /var/lib/apptrace/trace.duckdb --format csv
  apptrace run service_map --print-sql
"""

SQL_EPILOG = """\
tables: http_events, mysql_events, pgsql_events, connections, processes, capture_stats

examples:
  apptrace sql "SELECT service, count(*) FROM http_events GROUP BY ALL"
  apptrace sql "SELECT * FROM http_events WHERE resp_status >= 500 ORDER BY time_ DESC LIMIT 5" -o json
  apptrace sql "SELECT sum(lost_events) FROM capture_stats" --db trace.duckdb
  echo "DESCRIBE http_events" | apptrace sql -
"""

REPORT_EPILOG = """\
examples:
  apptrace report
  apptrace report --since 15m
  apptrace report --since 24h --html report.html
  apptrace report --service checkout --protocol http -o json
"""

WATCH_EPILOG = """\
A repeated flag means OR; different flags mean AND; --not negates the next filter flag.

examples:
  apptrace watch -f                                  # follow everything, as it happens
  apptrace watch -f --protocol http --status 5+      # live 5xx responses
  apptrace watch --since 10m --path '^/api/' --status 500-599
  apptrace watch -f --service checkout --not --status 200
  apptrace watch --last 20 --protocol pgsql
  apptrace watch -f --json | jq .req_path
"""


def register(subparsers: Any) -> None:
    """Add run, sql, report and watch to the `apptrace` argparse subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter

    p = subparsers.add_parser("run", help="run a PxL-style px script", description="Run a px script (a path, or "
                              "the name of a shipped script) and print each px.display.",
                              epilog=RUN_EPILOG, formatter_class=fmt)
    p.add_argument("script", nargs="?", metavar="SCRIPT", help="a .pxl path or a shipped script name")
    _add_db(p)
    _add_format(p)
    p.add_argument("--arg", action="append", default=[], metavar="K=V", help="a script argument (repeatable)")
    p.add_argument("--list", action="store_true", help="list the shipped scripts and what each answers")
    p.add_argument("--print-sql", action="store_true", help="print the one SQL query of each display; run nothing")
    p.set_defaults(func=cmd_run)

    p = subparsers.add_parser("sql", help="run one SQL query", description="Run one read-only SQL query "
                              "against the trace database.", epilog=SQL_EPILOG, formatter_class=fmt)
    p.add_argument("query", metavar="SQL", help='the query, e.g. "SELECT count(*) FROM http_events" (- = stdin)')
    _add_db(p)
    _add_format(p)
    p.set_defaults(func=cmd_sql)

    p = subparsers.add_parser("report", help="per-service latency, errors and throughput",
                              description="Per-service p50/p90/p99 latency, error rate and throughput across "
                              "HTTP, gRPC, MySQL and PostgreSQL for a time window.",
                              epilog=REPORT_EPILOG, formatter_class=fmt)
    _add_db(p)
    p.add_argument("--since", default="1h", metavar="DURATION", help="the window: 15m, 1h, 24h (default 1h)")
    p.add_argument("--service", action="append", default=[], help="only this service (repeatable)")
    p.add_argument("--protocol", action="append", default=[], choices=("http", "mysql", "pgsql"),
                   help="only this protocol (repeatable)")
    p.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    p.add_argument("--format", "-o", choices=("table", "csv", "json"), default="table", help="output format")
    p.add_argument("--print-sql", action="store_true", help="print the SQL and exit")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser("watch", help="live decoded requests and responses",
                              description="Show decoded requests and responses (headers and bodies) as they are "
                              "captured: mTLS debugging without keys.", epilog=WATCH_EPILOG, formatter_class=fmt)
    _add_db(p)
    sel = p.add_argument_group("selectors")
    sel.add_argument("--since", default=None, metavar="DURATION", help="start this far back (default 5m, "
                     "or now with -f)")
    sel.add_argument("--last", type=int, default=None, metavar="N", help="only the last N events")
    sel.add_argument("-f", "--follow", action="store_true", help="keep following new events")
    flt = p.add_argument_group("filters")
    flt.add_argument("--pid", action=_FilterAction, type=int, default=[], help="process id (repeatable)")
    flt.add_argument("--service", action=_FilterAction, default=[], help="service name (repeatable)")
    flt.add_argument("--protocol", action=_FilterAction, default=[], choices=("http", "mysql", "pgsql"),
                     help="protocol (repeatable)")
    flt.add_argument("--path", "--http-path", action=_FilterAction, default=[], metavar="REGEX",
                     help="HTTP path regex (or SQL text regex for mysql/pgsql)")
    flt.add_argument("--status", "--http-status", action=_FilterAction, default=[], metavar="CODE",
                     help="HTTP status: 404, 5+ (prefix), 500-599 (range), or err (SQL errors)")
    flt.add_argument("--not", dest="negate_next", action=_NotAction, nargs=0,
                     help="negate the next filter flag")
    out = p.add_argument_group("formatting")
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("-o", "--output", choices=("compact", "json"), default="compact",
                     help="compact (default, readable) or json (same as --json)")
    out.add_argument("--no-body", action="store_true", help="headers only")
    out.add_argument("--max-body", type=int, default=2048, metavar="N", help="show at most N body bytes")
    out.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    out.add_argument("--print-sql", action="store_true", help="print the SQL of the filters and exit")
    p.set_defaults(func=cmd_watch, not_pid=[], not_service=[], not_protocol=[], not_path=[], not_status=[])


class _NotAction(argparse.Action):
    """`--not` marks the next filter flag as negated (hubble style)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        namespace._not_pending = True


class _FilterAction(argparse.Action):
    """Append to `dest`, or to `not_<dest>` when the flag came right after `--not`."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        key = self.dest
        if getattr(namespace, "_not_pending", False):
            namespace._not_pending = False
            key = "not_" + self.dest
        setattr(namespace, key, [*(getattr(namespace, key, None) or []), values])
