"""apptrace: see inside TLS traffic (HTTP/1, HTTP/2, gRPC, MySQL, PostgreSQL) without keys or code changes.

Commands: trace · replay · doctor · demo · run · sql · report · watch
"""

from __future__ import annotations

import argparse

from apptrace import __version__
from apptrace.cli import demo, doctor, replay, report, run, sql, trace, watch
from apptrace.common.defaults import default_db

#: one module per command, each registering its own options (in the order --help lists them)
COMMANDS = (trace, replay, doctor, demo, run, sql, report, watch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="apptrace", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'apptrace COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"apptrace {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if "db" in args:
        args.db = default_db(args.db)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
