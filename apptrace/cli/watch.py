"""``apptrace watch``: decoded requests and responses as they are captured (hubble-style filters)."""

from __future__ import annotations

import argparse
from typing import Any

from apptrace.cli.options import add_db

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


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("watch", help="live decoded requests and responses",
                              description="Show decoded requests and responses (headers and bodies) as they are "
                              "captured: mTLS debugging without keys.", epilog=WATCH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_db(p, queries=True)
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
    p.set_defaults(func=run, not_pid=[], not_service=[], not_protocol=[], not_path=[], not_status=[])


def run(args: argparse.Namespace) -> int:
    from apptrace.query import watch

    return watch.main(args)


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
