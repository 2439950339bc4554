"""apptrace: see inside TLS traffic (HTTP/1, HTTP/2, gRPC, MySQL, PostgreSQL) without keys or code changes.

Commands: trace · replay · doctor · demo · run · sql · report · watch · export
"""

from __future__ import annotations

import argparse
import sys

from apptrace import __version__
from apptrace.cli import demo, doctor, export, replay, report, run, sql, trace, watch
from apptrace.common.defaults import default_db

#: one module per command, each registering its own options (in the order --help lists them)
COMMANDS = (trace, replay, doctor, demo, run, sql, report, watch, export)


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


#: options whose value may be written the px way, '-5m', which argparse would take for an option
_NEGATIVE_VALUES = ("--since",)


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--since -5m`` (px's way of saying five minutes back) → ``--since=5m``."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in _NEGATIVE_VALUES:
            value = next(it, None)
            if value is not None and value.startswith("-") and value[1:2].isdigit():
                out.append(f"{arg}={value[1:]}")
                continue
            out.append(arg)
            if value is not None:
                out.append(value)
            continue
        out.append(arg)
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(_join_negative_values(sys.argv[1:] if argv is None else argv))
    if "db" in args:
        args.db = default_db(args.db)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
