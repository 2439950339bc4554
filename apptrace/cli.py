"""apptrace command line: trace · run · sql · report · watch · replay · doctor."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apptrace", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    try:
        from apptrace import querycli
    except ImportError:  # pragma: no cover - until the query commands land
        querycli = None
    if querycli is not None:
        querycli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
