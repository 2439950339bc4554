"""Option types and option groups more than one command takes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from apptrace.common.defaults import DEFAULT_DB
from apptrace.protocols import ParserConfig

EXIT_BAD_INPUT = 2
#: the parsers' own default: one definition, in ParserConfig
DEFAULT_MAX_BODY = ParserConfig().max_body


def fail(cmd: str, msg: str) -> int:
    """Bad input: one line on stderr, exit status 2."""
    print(f"apptrace {cmd}: {msg}", file=sys.stderr)
    return EXIT_BAD_INPUT


def positive(kind: type[int] | type[float]) -> Callable[[str], int | float]:
    def parse(text: str) -> int | float:
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if v <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return v

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    return parse


positive_int = positive(int)
positive_float = positive(float)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= v <= high:
            raise argparse.ArgumentTypeError(f"must be from {low} to {high}: {text!r}")
        return v

    parse.__name__ = "int"
    return parse


def power_of_two(low: int, high: int) -> Callable[[str], int]:
    """A whole power of two in [low, high] (the kernel's ring and the BPF copy size need one)."""
    in_range = bounded_int(low, high)

    def parse(text: str) -> int:
        v = in_range(text)
        if v & (v - 1):
            raise argparse.ArgumentTypeError(f"must be a power of two from {low} to {high}: {text!r}")
        return v

    parse.__name__ = "power of two"
    return parse



def add_db(p: argparse._ActionsContainer, *, queries: bool = False) -> None:
    extra = "; while a tracer holds it, queries go through its socket PATH.sock" if queries else ""
    p.add_argument("--db", metavar="PATH", default=None,
                   help=f"the DuckDB file (default: $APPTRACE_DB or ./{DEFAULT_DB}){extra}")


def add_query_source(p: argparse.ArgumentParser) -> None:
    """--db, or --parquet: the exports of many hosts at once (the commands that only read take either)."""
    group = p.add_mutually_exclusive_group()
    add_db(group, queries=True)
    group.add_argument("--parquet", metavar="GLOB", default=None,
                       help="read the Parquet files `apptrace export` wrote instead of a DB, e.g. 'DIR/**' "
                       "(quote it); tables are views over them, read-only")


def add_format(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", "-o", choices=("table", "csv", "json"), default="table",
                   help="output format (default: table); json is one object mapping each display name to rows")


def add_limit(p: argparse.ArgumentParser) -> None:
    from apptrace.query.output import DEFAULT_LIMIT

    p.add_argument("--limit", type=bounded_int(0, 2**31 - 1), default=DEFAULT_LIMIT, metavar="N",
                   help=f"rows of each table shown with --format table (default {DEFAULT_LIMIT}; 0: all); the rest "
                   "are counted under it. CSV and JSON have every row")


def add_redact_options(p: argparse.ArgumentParser, verb: str) -> None:
    """Redaction (apptrace.store.redact): on by default; names to add; off."""
    p.add_argument("--no-redact", action="store_true",
                   help=f"{verb} secrets as captured (auth and cookie headers, tokens and passwords in URLs, "
                   "bodies, SQL and command lines are redacted by default)")
    p.add_argument("--redact-header", action="append", default=[], metavar="NAME",
                   help="also redact this header's (or gRPC metadata key's) values (repeatable)")
    p.add_argument("--redact-param", action="append", default=[], metavar="NAME",
                   help="also redact this URL query parameter's and JSON or form body field's values (repeatable)")


def add_store_options(p: argparse.ArgumentParser) -> None:
    """What the commands that write the DB (trace, replay) take."""
    add_db(p)
    p.add_argument("--max-body", type=positive_int, default=DEFAULT_MAX_BODY, metavar="N",
                   help=f"bytes of each body kept; *_body_size keeps the full size (default {DEFAULT_MAX_BODY})")
    add_redact_options(p, "store and print")
    p.add_argument("--retain", metavar="DURATION", help="drop rows older than this, e.g. 24h")
    p.add_argument("--max-size", metavar="SIZE", help="keep the DB file under this size, e.g. 2G")
    p.add_argument("--service", action="append", default=[], metavar="NAME=RULE",
                   help="name a service: RULE is pid:N, comm:NAME or a regex on the command line (repeatable)")
