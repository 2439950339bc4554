"""``apptrace demo``: trace real local TLS traffic for a few seconds and show what was captured."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser("demo", help="trace real local TLS traffic for a few seconds and show the report")
    demo.add_argument("--db", default="demo.duckdb", help="DuckDB file for the demo (default ./demo.duckdb)")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from apptrace.demo import run_demo

    return run_demo(args.db)
