"""How the query commands reach the database: a running tracer's socket, else the file read-only, or the Parquet
files of ``apptrace export`` (``--parquet 'DIR/**'``).

``open_backend(db)`` is what every command (and px) uses. Nothing here writes the database.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import threading
from typing import Protocol

import duckdb
import pyarrow as pa

from apptrace.store import schema as static_schema
from apptrace.store.wire import (
    ERROR,
    ERROR_LENGTH,
    LOCKED_DOWN,
    REQUEST_LENGTH,
    RESULT,
    QueryError,
    check_db_file,
    one_line,
    open_error,
    recv_exact,
    run_query,
)


class Backend(Protocol):
    description: str

    def query_arrow(self, sql: str) -> pa.Table: ...

    def close(self) -> None: ...


def socket_query(path: str, sql: str, timeout: float | None = 300.0) -> pa.Table:
    """One query over the tracer's socket. Raises QueryError for query errors, OSError if nobody is there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        body = json.dumps({"sql": sql}).encode("utf-8")
        s.sendall(REQUEST_LENGTH.pack(len(body)) + body)
        status = recv_exact(s, 1)
        if status == RESULT:
            try:
                with s.makefile("rb") as f:
                    return pa.ipc.open_stream(f).read_all()
            except pa.ArrowInvalid as e:
                raise QueryError(f"the tracer stopped sending the result: {one_line(e)}") from None
        if status != ERROR:
            raise QueryError(f"unexpected answer from the tracer ({status!r})")
        (n,) = ERROR_LENGTH.unpack(recv_exact(s, ERROR_LENGTH.size))
        raise QueryError(recv_exact(s, n).decode("utf-8", "replace"))


class SocketBackend:
    def __init__(self, path: str) -> None:
        self.path = path
        self.description = f"tracer socket {path}"

    def query_arrow(self, sql: str) -> pa.Table:
        try:
            return socket_query(self.path, sql)
        except OSError as e:
            raise QueryError(f"lost the tracer at {self.path}: {e}") from None

    def close(self) -> None:
        pass


class FileBackend:
    """The DB file opened read-only (no tracer running), or any open DuckDB connection."""

    def __init__(self, path: str | None = None, con: duckdb.DuckDBPyConnection | None = None) -> None:
        self.description = f"file {path}" if path else "connection"
        if con is None:
            check_db_file(path)
            try:
                con = duckdb.connect(path, read_only=True, config=LOCKED_DOWN)
            except duckdb.Error as e:
                raise QueryError(open_error(path, e)) from None
        self.con = con
        self._lock = threading.Lock()

    def query_arrow(self, sql: str) -> pa.Table:
        with self._lock:
            try:
                return run_query(self.con, sql)
            except duckdb.Error as e:
                raise QueryError(one_line(e)) from None

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.con.close()


def socket_alive(path: str) -> bool:
    """True if something accepts connections on `path` (a stale socket file refuses)."""
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(2.0)
        try:
            s.connect(path)
        except OSError:
            return False
    return True


def open_backend(db: str) -> Backend:
    """The way to query `db`: through a running tracer's socket, else the file read-only."""
    sock = db + ".sock"
    if socket_alive(sock):
        return SocketBackend(sock)
    if not os.path.exists(db):
        raise QueryError(f"no database at {db} (run `apptrace trace --db {db}` first, or pass --db / set "
                         f"APPTRACE_DB)")
    return FileBackend(db)


_TABLE_SEGMENT = re.compile(r"(?:^|/)table=([^/]+)/")


def parquet_files(pattern: str) -> dict[str, list[str]]:
    """apptrace table -> the Parquet files of `pattern` (a glob, or a directory) that hold it, by their
    ``table=`` directory. Files that are not an export's (no such directory, hidden, unfinished) are left out."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "**")
    out: dict[str, list[str]] = {}
    for path in sorted(glob.glob(pattern, recursive=True)):
        name = os.path.basename(path)
        if not name.endswith(".parquet") or name.startswith(".") or not os.path.isfile(path):
            continue
        m = _TABLE_SEGMENT.findall(os.path.abspath(path))
        if m and m[-1] in static_schema.TABLES:
            out.setdefault(m[-1], []).append(os.path.abspath(path))
    return out


def _sql_text(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class ParquetBackend(FileBackend):
    """``apptrace export``'s Parquet files, read-only, as views named like apptrace's tables.

    The views read exactly the files apptrace found for the pattern, and DuckDB may open those and nothing
    else (``allowed_paths``, then external access off and the configuration locked, as every query
    connection has it): the user's SQL still cannot read other files. Statements other than SELECT are
    refused, as on the tracer's socket, so nothing can be written over an export either.
    """

    def __init__(self, pattern: str) -> None:
        files = parquet_files(pattern)
        if not files:
            raise QueryError(f"no apptrace Parquet files match {pattern} (expected DIR/table=T/…/*.parquet, "
                             f"written by `apptrace export --parquet DIR`)")
        con = duckdb.connect(":memory:")
        try:
            every = [f for fs in files.values() for f in fs]
            con.execute(f"SET allowed_paths = [{', '.join(_sql_text(f) for f in every)}]")
            for key, value in LOCKED_DOWN.items():
                con.execute(f"SET {key} = {str(value).lower()}")
            for table in static_schema.TABLES:
                con.execute(f"CREATE VIEW {table} AS {_view_sql(con, table, files.get(table, []))}")
        except duckdb.Error as e:
            con.close()
            raise QueryError(f"cannot read the Parquet files of {pattern}: {one_line(e)}") from None
        super().__init__(con=con)
        self.description = f"Parquet {pattern} ({len(every)} files)"

    def query_arrow(self, sql: str) -> pa.Table:
        from apptrace.store.server import check_read_only

        check_read_only(sql, where="on Parquet exports")
        return super().query_arrow(sql)


def _view_sql(con: duckdb.DuckDBPyConnection, table: str, files: list[str]) -> str:
    """The SELECT behind `table`'s view: apptrace's columns in apptrace's order (NULL where the files predate
    one), then any the files have beyond them; for keyed tables, the latest version of each row per source DB."""
    cols = static_schema.TABLES[table]
    if not files:
        return "SELECT " + ", ".join(f'CAST(NULL AS {t}) AS "{c}"' for c, t in cols) + " WHERE false"
    source = (f"read_parquet([{', '.join(_sql_text(f) for f in files)}], hive_partitioning = true, "
              "hive_types_autocast = false, union_by_name = true, filename = true)")
    have = {r[0]: r[1] for r in con.execute(f"DESCRIBE SELECT * FROM {source}").fetchall()}
    select = [f'"{c}"' if c in have else f'CAST(NULL AS {t}) AS "{c}"' for c, t in cols]
    known = {c for c, _ in cols} | {"table", "date", "filename"}
    select += [f'"{c}"' for c in have if c not in known]
    sql = f"SELECT {', '.join(select)} FROM {source}"
    key = static_schema.KEYS.get(table)
    if key:
        # Each export adds a keyed row's new version (a connection's bytes grow); the part file's name
        # says which DB it came from, and keys are unique only within one DB.
        by = ", ".join(["regexp_extract(filename, 'part-([0-9a-f]+)-', 1)", *(f'"{k}"' for k in key)])
        sql += f' QUALIFY row_number() OVER (PARTITION BY {by} ORDER BY "{static_schema.STORE_SEQ}" DESC) = 1'
    return sql


def open_query_backend(db: str, parquet: str | None = None) -> Backend:
    """The backend a query command asked for: `--parquet` files, else `db` (socket or file)."""
    return ParquetBackend(parquet) if parquet else open_backend(db)
