"""``apptrace export --parquet DIR``: apptrace's tables as Hive-partitioned Parquet, incrementally, exactly once.

Layout: ``DIR/table=T/date=YYYY-MM-DD/host=H/part-<db_id>-<first>-<last>.parquet``, where ``first``/``last`` are
the smallest and largest ``store_seq`` in the file. ``date`` (UTC) and ``host`` are the partition, not columns of
the files; a NULL goes in ``__HIVE_DEFAULT_PARTITION__``, which readers turn back into NULL.

Where an export resumes is ``store_seq``, not time: the writer numbers rows in the order it commits them (one
writer, one transaction at a time), so a row that reaches the DB late, or an upsert's new version of a
``connections``/``processes`` row, always gets a number past every row already there. Per source DB (its
``db_id``) and table, ``DIR/_apptrace_export/<db_id>.json`` keeps the last number exported. It is replaced
atomically, and only once every Parquet file of the run is complete and synced. A run that dies before that
leaves files whose first number is past the state's: the next run deletes them first and exports those rows
again, so a crash repeats nothing and loses nothing. Keyed tables get one row per version; readers keep the
latest per key (the ``--parquet`` views do).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from apptrace.query.backend import Backend, FileBackend, QueryError, SocketBackend, socket_alive
from apptrace.store import schema

STATE_DIR = "_apptrace_export"
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
#: rows fetched per query: bounds the memory of an export of any size (each page is one snapshot)
PAGE_ROWS = 200_000
#: the time column whose UTC date is a row's `date` partition; one that never changes for a keyed row,
#: so that every version of a connection lands in the same partition
PARTITION_TIME = {"http_events": "time_", "mysql_events": "time_", "pgsql_events": "time_",
                  "capture_stats": "time_", "connections": "open_time", "processes": "start_time"}
#: tests stop an export at a chosen point, as a crash would: SIGKILL after this many Parquet files are in place,
#: or while the Nth is written (its bytes out, not yet renamed)
CRASH_AFTER_FILES_ENV = "APPTRACE_EXPORT_KILL_AFTER_FILES"
CRASH_IN_FILE_ENV = "APPTRACE_EXPORT_KILL_IN_FILE"
PART_NAME = re.compile(r"^part-(?P<db>[0-9a-f]+)-(?P<first>\d+)-(?P<last>\d+)\.parquet$")
_DATE_COLUMN = "__apptrace_export_date"


class ExportError(Exception):
    """A one-line reason the export cannot run (missing DB, unwritable DIR, unknown table, held state)."""


@dataclass
class ExportResult:
    db_id: str
    rows: dict[str, int] = field(default_factory=dict)  # table -> rows written this run
    files: int = 0
    removed_leftovers: int = 0  # files of a run that died before its state was written


def part_name(db_id: str, first: int, last: int) -> str:
    return f"part-{db_id}-{first:015d}-{last:015d}.parquet"


def _partition_value(v: str | None) -> str:
    return NULL_PARTITION if v is None else urllib.parse.quote(v, safe="")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private(path: str, write: Callable[[BinaryIO], object]) -> None:
    """Write through a temporary name beside `path`, sync, then rename: `path` is whole or absent."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.replace(tmp, path)


class ExportState:
    """``DIR/_apptrace_export/<db_id>.json``: per table, the last store_seq exported; and its lock."""

    def __init__(self, out_dir: str, db_id: str) -> None:
        self.dir = os.path.join(out_dir, STATE_DIR)
        self.path = os.path.join(self.dir, f"{db_id}.json")
        self.db_id = db_id
        self.watermarks: dict[str, int] = {}
        self.totals: dict[str, int] = {}
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """One export per source DB and DIR at a time (two would both resume from the same place)."""
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        fd = os.open(os.path.join(self.dir, f"{self.db_id}.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ExportError(f"another export of this database into {os.path.dirname(self.dir)} is running") from None
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> None:
        try:
            with open(self.path, encoding="utf-8") as f:
                obj = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as e:
            raise ExportError(f"cannot read the export state {self.path}: {e}") from None
        self.watermarks = {str(k): int(v) for k, v in obj.get("watermarks", {}).items()}
        self.totals = {str(k): int(v) for k, v in obj.get("rows", {}).items()}

    def save(self, db: str) -> None:
        body = json.dumps({"db_id": self.db_id, "db": db, "exported_at": time.time_ns(),
                           "watermarks": self.watermarks, "rows": self.totals}, indent=1).encode()
        _write_private(self.path, lambda f: f.write(body))
        _fsync_dir(self.dir)


def _meta(backend: Backend) -> dict[str, str]:
    try:
        rows = backend.query_arrow(f"SELECT key, value FROM {schema.META_TABLE}").to_pylist()
    except QueryError as e:
        raise ExportError(f"{backend.description} is not an apptrace database: {e}") from None
    return {r["key"]: r["value"] for r in rows}


def _migrate(db: str) -> None:
    """Bring a DB written by an older apptrace up to date (store_seq, host, db_id), as `trace` would on open."""
    from apptrace.store.writer import Store, StoreError

    try:
        Store(db).close()
    except StoreError as e:
        raise ExportError(str(e)) from None


@contextlib.contextmanager
def open_source(db: str) -> Iterator[tuple[Backend, str]]:
    """The DB to export and its db_id: through a running tracer's socket, else the file, read-only."""
    sock = db + ".sock"
    if socket_alive(sock):
        backend: Backend = SocketBackend(sock)
        meta = _meta(backend)
        if "db_id" not in meta:
            raise ExportError(f"the tracer holding {db} runs an older apptrace (no store_seq): restart it with "
                              "this version to export while it runs")
    else:
        if not os.path.isfile(db):
            raise ExportError(f"no database at {db}")
        try:
            backend = FileBackend(db)
        except QueryError as e:
            raise ExportError(str(e)) from None
        meta = _meta(backend)
        if "db_id" not in meta or int(meta.get("schema_version", "0") or 0) < schema.SCHEMA_VERSION:
            backend.close()
            _migrate(db)
            try:
                backend = FileBackend(db)
            except QueryError as e:
                raise ExportError(str(e)) from None
            meta = _meta(backend)
    try:
        yield backend, meta["db_id"]
    finally:
        backend.close()


def _remove_leftovers(out_dir: str, state: ExportState, tables: Sequence[str]) -> int:
    """Delete what a run that died before saving its state wrote (files past the state's watermark) and its
    temporary files: those rows are exported again by this run."""
    removed = 0
    for table in tables:
        top = os.path.join(out_dir, f"table={table}")
        mark = state.watermarks.get(table, 0)
        for dirpath, _dirs, names in os.walk(top):
            for name in names:
                m = PART_NAME.match(name[1:-4] if name.startswith(".") and name.endswith(".tmp") else name)
                if m is None or m["db"] != state.db_id:
                    continue
                if name.endswith(".tmp") or int(m["first"]) > mark:
                    os.unlink(os.path.join(dirpath, name))
                    removed += 1
    return removed


def _pages(backend: Backend, table: str, after: int) -> Iterator[pa.Table]:
    """Rows with store_seq past `after`, in store_seq order, a page per query, each with its date partition."""
    seq = schema.STORE_SEQ
    tcol = PARTITION_TIME[table]
    while True:
        page = backend.query_arrow(
            f'SELECT *, strftime(CAST("{tcol}" AS DATE), \'%Y-%m-%d\') AS {_DATE_COLUMN} FROM {table} '
            f"WHERE {seq} > {int(after)} ORDER BY {seq} LIMIT {PAGE_ROWS}")
        if page.num_rows == 0:
            return
        yield page
        after = pc.max(page[seq]).as_py()
        if page.num_rows < PAGE_ROWS:
            return


class _Files:
    """Writes the Parquet files of one run, and counts them (the crash hook counts with it)."""

    def __init__(self, out_dir: str, db_id: str) -> None:
        self.out_dir = out_dir
        self.db_id = db_id
        self.written = 0
        self.dirs: set[str] = set()
        kill_after, kill_in = os.environ.get(CRASH_AFTER_FILES_ENV), os.environ.get(CRASH_IN_FILE_ENV)
        self.kill_after = int(kill_after) if kill_after else None
        self.kill_in = int(kill_in) if kill_in else None

    def write_page(self, table: str, page: pa.Table) -> None:
        dates = page[_DATE_COLUMN]
        hosts = page["host"] if "host" in page.column_names else pa.nulls(page.num_rows, pa.string())
        data = page.drop_columns([c for c in (_DATE_COLUMN, "host") if c in page.column_names])
        keys = pa.table({"d": dates, "h": hosts}).group_by(["d", "h"]).aggregate([]).to_pylist()
        for key in keys:
            d, h = key["d"], key["h"]
            match = pc.and_kleene(pc.equal(dates, d) if d is not None else pc.is_null(dates),
                                  pc.equal(hosts, h) if h is not None else pc.is_null(hosts))
            part = data.filter(pc.fill_null(match, False))
            seqs = part[schema.STORE_SEQ]
            where = os.path.join(self.out_dir, f"table={table}", f"date={_partition_value(d)}",
                                 f"host={_partition_value(h)}")
            os.makedirs(where, mode=0o700, exist_ok=True)
            path = os.path.join(where, part_name(self.db_id, pc.min(seqs).as_py(), pc.max(seqs).as_py()))
            _write_private(path, lambda f, part=part: self._write(f, part))
            self.dirs.add(where)
            self.written += 1
            if self.kill_after is not None and self.written >= self.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

    def _write(self, f: BinaryIO, part: pa.Table) -> None:
        pq.write_table(part, f, compression="zstd")
        if self.kill_in is not None and self.written + 1 >= self.kill_in:
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    def sync(self) -> None:
        """Make the renames durable before the state says the files are there."""
        for d in sorted(self.dirs):
            _fsync_dir(d)
        self.dirs.clear()


def check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} is not a directory")
    try:
        os.makedirs(out_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ExportError(f"cannot create {out_dir}: {e.strerror or e}") from None
    if not os.path.isdir(out_dir):
        raise ExportError(f"{out_dir} is not a directory")
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise ExportError(f"{out_dir} is not writable")


def export_parquet(db: str, out_dir: str, tables: Sequence[str] | None = None) -> ExportResult:
    """Append to `out_dir` every row of `tables` (default: all) of `db` not exported there before."""
    tables = list(tables or schema.TABLES)
    unknown = [t for t in tables if t not in schema.TABLES]
    if unknown:
        raise ExportError(f"unknown table {unknown[0]!r}; tables: {', '.join(schema.TABLES)}")
    check_out_dir(out_dir)
    with open_source(db) as (backend, db_id):
        state = ExportState(out_dir, db_id)
        try:
            state.lock()
        except OSError as e:
            raise ExportError(f"cannot write in {out_dir}: {e.strerror or e}") from None
        try:
            state.load()
            # Every table, not only those asked for: a run that died may have been exporting others.
            result = ExportResult(db_id=db_id, removed_leftovers=_remove_leftovers(out_dir, state, list(schema.TABLES)))
            files = _Files(out_dir, db_id)
            marks = dict(state.watermarks)
            for table in tables:
                n = 0
                try:
                    for page in _pages(backend, table, marks.get(table, 0)):
                        files.write_page(table, page)
                        marks[table] = pc.max(page[schema.STORE_SEQ]).as_py()
                        n += page.num_rows
                except QueryError as e:
                    raise ExportError(f"reading {table}: {e}") from None
                result.rows[table] = n
            files.sync()
            result.files = files.written
            state.watermarks = marks
            for table, n in result.rows.items():
                state.totals[table] = state.totals.get(table, 0) + n
            state.save(db)
            return result
        except OSError as e:
            raise ExportError(f"cannot write in {out_dir}: {e.strerror or e}") from None
        finally:
            state.unlock()
