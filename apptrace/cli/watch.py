"""``apptrace watch``: decoded requests and responses as they are captured (hubble-style filters)."""

from __future__ import annotations

import argparse
from typing import Any

from apptrace.cli.options import add_db, add_redact_options, bounded_int
from apptrace.query.rules import DEFAULT_WINDOW

WATCH_EPILOG = """\
A repeated flag means OR; different flags mean AND; --not negates the filter flag right after it.
On a terminal, failures (5xx, gRPC errors, SQL errors) are red and 4xx yellow; piped, there are no colours.

examples:
  apptrace watch -f                                  # follow everything, as it happens
  apptrace watch -f --protocol http --status 5+      # live 5xx responses
  apptrace watch --since 10m --path '^/api/' --status 500-599
  apptrace watch --since 1h --until 30m -o table     # one line per request, from 1h to 30m ago
  apptrace watch -f --service checkout --not --status 200
  apptrace watch -f --comm nginx --port 443 --protocol grpc
  apptrace watch --last 20 --protocol pgsql --addr 10.0.0.7
  apptrace watch -f --json | jq .req_headers.host
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="live decoded requests and responses",
                              description="Show decoded requests and responses (headers and bodies) as they are "
                              "captured: mTLS debugging without keys.", epilog=WATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db(p, queries=True)
    sel = p.add_argument_group("selectors")
    sel.add_argument("--since", default=None, metavar="DURATION", help=f"start this far back (default "
                     f"{DEFAULT_WINDOW}, as report and the shipped scripts; with -f alone: now)")
    sel.add_argument("--until", default=None, metavar="DURATION", help="end this far back (default: now); not "
                     "with -f")
    sel.add_argument("--last", type=int, default=None, metavar="N", help="only the last N events")
    sel.add_argument("-f", "--follow", action="store_true", help="keep following new events")
    flt = p.add_argument_group("filters")
    flt.add_argument("--pid", action=_FilterAction, type=int, default=[], help="process id (repeatable)")
    flt.add_argument("--comm", action=_FilterAction, default=[], metavar="NAME",
                     help="process name, as in /proc/PID/comm (repeatable)")
    flt.add_argument("--service", action=_FilterAction, default=[], help="service name (repeatable)")
    flt.add_argument("--protocol", action=_FilterAction, default=[], choices=("http", "grpc", "mysql", "pgsql"),
                     help="protocol (repeatable); http includes gRPC, grpc is only the gRPC calls")
    flt.add_argument("--addr", action=_FilterAction, default=[], metavar="IP",
                     help="an address at either end, local or remote (repeatable)")
    flt.add_argument("--port", action=_FilterAction, default=[], type=bounded_int(1, 65535), metavar="PORT",
                     help="a port at either end, local or remote (repeatable)")
    flt.add_argument("--path", "--http-path", action=_FilterAction, default=[], metavar="REGEX",
                     help="HTTP path regex (or SQL text regex for mysql/pgsql)")
    flt.add_argument("--status", "--http-status", action=_FilterAction, default=[], metavar="CODE",
                     help="HTTP status: 404, 5+ (prefix), 500-599 (range), or err (SQL errors)")
    flt.add_argument("--not", dest="negate_next", action=_NotAction, nargs=0,
                     help="negate the filter flag right after it (anywhere else: refused)")
    out = p.add_argument_group("formatting")
    out.add_argument("--json", action="store_true", help="one JSON object per line")
    out.add_argument("-o", "--output", choices=("compact", "table", "json"), default="compact",
                     help="compact (default: each request and response with headers and bodies), table (one "
                     "line per request) or json (same as --json: headers as objects)")
    out.add_argument("--no-body", action="store_true", help="headers only")
    out.add_argument("--max-body", type=int, default=2048, metavar="N", help="show at most N body bytes")
    out.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)
    out.add_argument("--print-sql", action="store_true", help="print the SQL of the filters and exit")
    add_redact_options(out, "print")
    p.set_defaults(func=run, not_pid=[], not_comm=[], not_service=[], not_protocol=[], not_path=[], not_status=[],
                   not_addr=[], not_port=[])
    for action in p._actions:
        if not isinstance(action, _FilterAction | _NotAction):
            # any other flag between --not and a filter leaves the --not without its filter
            action.__class__ = type(f"Ends{type(action).__name__}", (_EndsNot, type(action)), {})


def run(args: argparse.Namespace) -> int:
    from apptrace.query import watch

    if getattr(args, "_not_pending", False):  # --not last on the line
        args.stray_not = True
    return watch.main(args)


class _NotAction(argparse.Action):
    """`--not` marks the next filter flag as negated (hubble style)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, "_not_pending", False):  # --not --not
            namespace.stray_not = True
        namespace._not_pending = True


class _EndsNot(argparse.Action):
    """Mixed into every flag that is not a filter: coming right after --not, it leaves that --not stray."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        if getattr(namespace, "_not_pending", False):
            namespace._not_pending = False
            namespace.stray_not = True
        super().__call__(parser, namespace, values, option_string)


class _FilterAction(argparse.Action):
    """Append to `dest`, or to `not_<dest>` when the flag came right after `--not`."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        key = self.dest
        if getattr(namespace, "_not_pending", False):
            namespace._not_pending = False
            key = "not_" + self.dest
        setattr(namespace, key, [*(getattr(namespace, key, None) or []), values])
