"""Defaults that several commands and both processes must agree on."""

from __future__ import annotations

import os

#: the database every command uses when neither --db nor $APPTRACE_DB names one
DEFAULT_DB = "apptrace.duckdb"


def default_db(given: str | None = None) -> str:
    """The database a command works on: ``given`` (its --db), else $APPTRACE_DB, else ./apptrace.duckdb."""
    return given or os.environ.get("APPTRACE_DB") or DEFAULT_DB
