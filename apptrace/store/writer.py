"""DuckDB storage for traced records: buffered columnar inserts, upserts, retention, schema version, redaction.

The tracer is the only writer. It calls `add_events` / `upsert_*` / `add_capture_stats` as records arrive, and
`flush()` at least once a second; each flush turns every buffer into one Arrow table and inserts it with one
`INSERT … SELECT` (never row by row). `serve()` starts the query server on `<db>.sock` so that `apptrace
run/sql/report/watch` can query while the tracer holds the file.

The database file and its WAL are created with mode 0600.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from apptrace.common.units import parse_duration, parse_size
from apptrace.store import schema
from apptrace.store.redact import COLUMNS as REDACTED_COLUMNS
from apptrace.store.redact import Redactor
from apptrace.store.wire import LOCKED_DOWN, QueryError, check_db_file, open_error, run_query


class StoreError(Exception):
    """A one-line, user-facing problem with the database (version mismatch, bad size, locked file)."""


#: where analysis stood in a spool run, committed with the rows: (run, segment, offset, state or None)
CheckpointRow = tuple[str, int, int, bytes | None]


def is_disk_full(e: BaseException) -> bool:
    """DuckDB could not write for lack of room (ENOSPC or a quota), as opposed to a real fault."""
    text = str(e)
    return "No space left on device" in text or "Disk quota exceeded" in text


_ARROW_TYPES: dict[str, pa.DataType] = {
    "TIMESTAMP_NS": pa.timestamp("ns"),
    "INTEGER": pa.int32(),
    "BIGINT": pa.int64(),
    "VARCHAR": pa.string(),
    "BOOLEAN": pa.bool_(),
    "DOUBLE": pa.float64(),
}

def _parse(parse: Callable[[str], int], text: str) -> int:
    try:
        return parse(text)
    except ValueError as exc:
        raise StoreError(str(exc)) from None


@contextlib.contextmanager
def private_umask() -> Iterator[None]:
    """Files created inside (the DB, its WAL, spill files) get mode 0600. umask is per process, so keep it short."""
    old = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(old)


def _to_text(v: Any) -> Any:
    if isinstance(v, bytes | bytearray | memoryview):
        return bytes(v).decode("utf-8", "replace")
    return v


def _coerce(v: Any, typ: str) -> Any:
    """One value the fast path rejected, made to fit `typ` — or None if it cannot be."""
    if v is None:
        return None
    try:
        if typ in ("INTEGER", "BIGINT", "TIMESTAMP_NS"):
            if hasattr(v, "timestamp") and typ == "TIMESTAMP_NS":  # a datetime
                return int(v.timestamp() * 1e9)
            n = int(v)
            limit = 2**31 if typ == "INTEGER" else 2**63
            return n if -limit <= n < limit else None
        if typ == "BOOLEAN":
            return bool(v)
        if typ == "DOUBLE":
            return float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return v


_STRUCTS: dict[str, tuple[pa.StructType, tuple[tuple[int, str], ...]]] = {}


def _struct(table: str) -> tuple[pa.StructType, tuple[tuple[int, str], ...]]:
    """`table`'s columns as one Arrow struct type, and the positions and kinds of the columns redaction reads."""
    got = _STRUCTS.get(table)
    if got is None:
        cols = schema.TABLES[table]
        kinds = REDACTED_COLUMNS.get(table, {})
        got = _STRUCTS[table] = (pa.struct([(c, _ARROW_TYPES[t]) for c, t in cols]),
                                 tuple((i, kinds[c]) for i, (c, _) in enumerate(cols) if c in kinds))
    return got


def _redact_column(arr: pa.Array, kind: str, redactor: Redactor) -> pa.Array:
    """The column's values as `redactor.value(kind, ...)` makes them, with Python only where a secret may be.

    Arrow's regex engine finds the values that hold one of the kind's trigger words (the same test as the
    redactor's own fast path); only those distinct values go through the rules, so a batch of ordinary rows
    costs one scan in C.
    """
    if arr.null_count == len(arr):
        return arr
    if kind == "headers":
        # Every HTTP/2 block holds a trigger (":authority"), and blocks repeat: hashing the column once and
        # redacting each distinct block costs less than a regex scan that would pick them all anyway.
        enc = arr.dictionary_encode()
        distinct = enc.dictionary.to_pylist()
        redacted = [redactor.headers(v) for v in distinct]
        if redacted == distinct:
            return arr
        return pa.DictionaryArray.from_arrays(enc.indices, pa.array(redacted, type=pa.string())).cast(pa.string())
    mask = pc.match_substring_regex(arr, redactor.pattern(kind), ignore_case=True)
    if not pc.any(mask).as_py():
        return arr
    mask = pc.fill_null(mask, False)
    picked = arr.filter(mask)
    enc = picked.dictionary_encode()  # header blocks and statements repeat: each distinct value once
    rules = redactor.function(kind)
    distinct = enc.dictionary.to_pylist()
    redacted = [rules(v) for v in distinct]
    if redacted == distinct:
        return arr
    new = pa.DictionaryArray.from_arrays(enc.indices, pa.array(redacted, type=pa.string())).cast(pa.string())
    return pc.replace_with_mask(arr, mask, new)


def arrow_table(table: str, rows: Sequence[dict], errors: list[str] | None = None,
                redactor: Redactor | None = None) -> pa.Table:
    """Rows (dicts; missing keys are NULL, extra keys ignored) → an Arrow table typed as `table`'s schema.

    A value of the wrong type is converted when it can be ("200" → 200) and stored as NULL when it cannot; each
    such column is named in `errors`, so a bad value never costs the rest of the batch. With a `redactor`, the
    columns that can hold secrets (apptrace.store.redact.COLUMNS) are redacted.
    """
    struct, redacted_idx = _struct(table)
    try:
        # The fast path: one conversion reads every row's values in C, for rows whose values already
        # have the right Python types (what the pipeline produces).
        whole = pa.array(rows, type=struct)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        whole = None
    if whole is not None:
        arrays = whole.flatten()
        if redactor is not None:
            for i, kind in redacted_idx:
                arrays[i] = _redact_column(arrays[i], kind, redactor)
        return pa.Table.from_arrays(arrays, names=[f.name for f in struct])
    arrays, names = [], []
    kinds = REDACTED_COLUMNS.get(table, {}) if redactor is not None else {}
    for col, typ in schema.TABLES[table]:
        values = [r.get(col) for r in rows]
        kind = kinds.get(col)
        if kind is not None:
            values = [redactor.value(kind, v) for v in values]  # type: ignore[union-attr]
        at = _ARROW_TYPES[typ]
        try:
            arr = pa.array(values, type=at)  # the values of this column have the right Python types
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            arr = None
        if arr is None and typ == "VARCHAR":  # bytes (bodies) and other objects become text
            values = [v if v is None or isinstance(v, str) else _to_text(v) for v in values]
            values = [v if v is None or isinstance(v, str) else str(v) for v in values]
            arr = pa.array(values, type=at)
        if arr is None:
            fixed = [_coerce(v, typ) for v in values]
            if errors is not None:
                bad = sum(1 for a, b in zip(values, fixed, strict=True) if a is not None and b is None)
                errors.append(f"{table}.{col}: {bad} value(s) stored as NULL" if bad else f"{table}.{col}")
            arr = pa.array(fixed, type=at)
        arrays.append(arr)
        names.append(col)
    return pa.Table.from_arrays(arrays, names=names)


def _merge_keyed(rows: Sequence[dict], key: tuple[str, ...]) -> list[dict]:
    """Collapse rows with the same key: later non-NULL values win."""
    merged: dict[tuple, dict] = {}
    for r in rows:
        k = tuple(r.get(c) for c in key)
        cur = merged.get(k)
        if cur is None:
            merged[k] = dict(r)
        else:
            cur.update({c: v for c, v in r.items() if v is not None})
    return list(merged.values())


class Store:
    """The tracer's handle on the DuckDB file. Thread-safe: inserts and the query server may run concurrently."""

    #: how often (at most) retention and the size cap are checked, in seconds
    retention_interval: float = 30.0

    def __init__(self, path: str, *, retain: str | None = None, max_size: str | None = None,
                 redact: bool = True, redact_headers: Sequence[str] = (), redact_params: Sequence[str] = (),
                 memory_limit: str = "512MB",
                 checkpoint_threshold: str = "64MB") -> None:
        self.path = str(path)
        self.memory_limit = memory_limit
        self.retain_ns = _parse(parse_duration, retain) if retain else None
        self.max_size = _parse(parse_size, max_size) if max_size else None
        self.redactor = Redactor(redact_headers, redact_params) if redact else None
        self._lock = threading.RLock()
        self._events: dict[str, list[dict]] = {t: [] for t in schema.EVENT_TABLES}
        self._keyed: dict[str, list[dict]] = {t: [] for t in schema.KEYS}
        self._stats: list[dict] = []
        self._last_retention = 0.0
        #: the last flush found no room on the DB's filesystem; rows are dropped until one succeeds
        self.disk_full = False
        self._dropped_rows = 0  # rows dropped for lack of room, not yet collected (take_dropped_rows)
        #: columns that needed type conversion (or lost values) since the Store opened; for `doctor`
        self.type_errors: list[str] = []
        self._server: Any = None
        self._closed = False
        try:
            check_db_file(self.path)
        except QueryError as e:
            raise StoreError(str(e)) from None
        with private_umask():
            try:
                # A tracer runs for days: DuckDB's cache may not grow with the data (its default is 80%
                # of RAM). Past the limit it evicts, and big queries spill to a temp dir beside the file.
                # Each checkpoint recompresses the row group that flushes keep appending to, so at
                # DuckDB's default (a checkpoint per 16 MB of WAL, a few flushes at load) the commits
                # cost twice the inserts; 64 MB halves the store's time per row (bench_pipeline).
                # The WAL counts toward --max-size, so a small cap keeps a proportionally small WAL.
                wal = _parse(parse_size, checkpoint_threshold)
                if self.max_size:
                    wal = min(wal, max(self.max_size // 8, 16 << 20))
                self.con = duckdb.connect(self.path, config={**LOCKED_DOWN, "memory_limit": self.memory_limit,
                                                             "checkpoint_threshold": f"{wal >> 20}MiB"})
            except duckdb.Error as e:
                raise StoreError(open_error(self.path, e)) from None
        self._chmod()
        with private_umask():
            self._init_schema()
        self._chmod()
        # Readers (the query server's threads) never touch the writer's connection: they take cursors from
        # this one, made here in the owning thread.
        self._reader = self.con.cursor()
        self._reader_lock = threading.Lock()

    # -- schema ------------------------------------------------------------------------------------------------
    def _init_schema(self) -> None:
        con = self.con
        con.execute(f"CREATE TABLE IF NOT EXISTS {schema.META_TABLE} (key VARCHAR PRIMARY KEY, value VARCHAR)")
        con.execute(schema.CHECKPOINT_SQL)
        rows = con.execute(f"SELECT value FROM {schema.META_TABLE} WHERE key = 'schema_version'").fetchall()
        row = rows[0] if rows else None
        existing = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main'").fetchall()}
        if row is None:
            if existing & set(schema.TABLES):
                raise StoreError(f"{self.path} has apptrace tables but no schema version; move it aside")
            version = schema.SCHEMA_VERSION
        else:
            try:
                version = int(row[0])
            except ValueError:
                raise StoreError(f"{self.path}: unreadable schema version {row[0]!r}") from None
        if version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has schema version {version}, newer than this apptrace "
                f"(version {schema.SCHEMA_VERSION}); upgrade apptrace or use another --db")
        for table in schema.TABLES:
            con.execute(schema.create_sql(table))
        if version < schema.SCHEMA_VERSION:
            self._migrate(version)
        con.execute(f"INSERT OR REPLACE INTO {schema.META_TABLE} VALUES ('schema_version', ?)",
                    [str(schema.SCHEMA_VERSION)])
        # An export keeps its place per database, by this id: a DB made anew at the same path starts afresh.
        con.execute(f"INSERT OR IGNORE INTO {schema.META_TABLE} VALUES ('db_id', ?)", [uuid.uuid4().hex])
        self._next_seq = self._first_free_seq()

    def _first_free_seq(self) -> int:
        """The next store_seq: past every one stored and every one handed out before (retention may have deleted
        the newest rows; reusing their numbers would hide new rows from an export that already passed them)."""
        con = self.con
        rows = con.execute(f"SELECT value FROM {schema.META_TABLE} WHERE key = 'next_store_seq'").fetchall()
        recorded = int(rows[0][0]) if rows and rows[0][0] and rows[0][0].isdigit() else 1
        stored = con.execute("SELECT max(s) FROM (" + " UNION ALL ".join(
            f"SELECT max({schema.STORE_SEQ}) AS s FROM {t}" for t in schema.TABLES) + ")").fetchall()[0][0]
        return max(recorded, (stored or 0) + 1)

    def _migrate(self, version: int) -> None:
        """Bring an older database up to date: add the columns newer versions added (they read as NULL)."""
        con = self.con
        for table, cols in schema.TABLES.items():
            have = {r[0] for r in con.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = ?", [table]).fetchall()}
            for col, typ in cols:
                if col not in have:
                    con.execute(f'ALTER TABLE {table} ADD COLUMN "{col}" {typ}')
        # Rows stored before store_seq existed get numbers in their stored order, each table after the last.
        base = 0
        for table in schema.TABLES:
            con.execute(f"UPDATE {table} SET {schema.STORE_SEQ} = rowid + 1 + ? WHERE {schema.STORE_SEQ} IS NULL",
                        [base])
            base = max(base, con.execute(f"SELECT coalesce(max({schema.STORE_SEQ}), 0) FROM {table}").fetchall()[0][0])

    def _chmod(self) -> None:
        for p in (self.path, self.path + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                if os.stat(p).st_mode & 0o077:
                    os.chmod(p, 0o600)

    # -- buffering ---------------------------------------------------------------------------------------------
    def add_events(self, table: str, rows: list[dict]) -> None:
        """Buffer event rows for `table` (http_events, mysql_events or pgsql_events) until the next flush."""
        if table not in self._events:
            raise ValueError(f"unknown event table {table!r}; expected one of {', '.join(self._events)}")
        with self._lock:
            self._events[table].extend(rows)

    def upsert_connections(self, rows: list[dict]) -> None:
        """Buffer connection rows keyed by conn_id; later non-NULL values update earlier ones."""
        with self._lock:
            self._keyed["connections"].extend(rows)

    def upsert_processes(self, rows: list[dict]) -> None:
        """Buffer process rows keyed by (pid, start_time); later non-NULL values update earlier ones."""
        with self._lock:
            self._keyed["processes"].extend(rows)

    def add_capture_stats(self, rows: list[dict]) -> None:
        with self._lock:
            self._stats.extend(rows)

    # -- writing -----------------------------------------------------------------------------------------------
    def flush(self, checkpoints: Sequence[CheckpointRow] = (), forget: Sequence[str] = ()) -> bool:
        """Insert everything buffered (one columnar insert per table, in one transaction); apply retention.

        ``checkpoints`` (where analysis stood when it drew these rows) are stored in the same transaction, and
        the progress of runs in ``forget`` deleted. With no room on the DB's filesystem nothing is stored: the
        event rows are dropped and counted (``take_dropped_rows``), the capture stats and connection and
        process updates kept for the next flush, and False returned.
        """
        with self._lock:
            if self._closed:
                return False
            events, self._events = self._events, {t: [] for t in schema.EVENT_TABLES}
            keyed, self._keyed = self._keyed, {t: [] for t in schema.KEYS}
            stats, self._stats = self._stats, []
            work = [(t, rows) for t, rows in events.items() if rows]
            if stats:
                work.append(("capture_stats", stats))
            with private_umask():
                if work or any(keyed.values()) or checkpoints or forget:
                    next_seq = self._next_seq
                    try:
                        self._commit(work, keyed, checkpoints, forget)
                    except duckdb.Error as e:
                        if not is_disk_full(e):
                            raise
                        self._next_seq = next_seq  # nothing was stored: the numbers are still free
                        self.disk_full = True
                        self._dropped_rows += sum(len(rows) for rows in events.values())
                        self._stats[:0] = stats
                        for table, rows in keyed.items():
                            self._keyed[table][:0] = _merge_keyed(rows, schema.KEYS[table])
                        return False
                    self.disk_full = False
                now = time.monotonic()
                if (self.retain_ns or self.max_size) and now - self._last_retention >= self.retention_interval:
                    self._last_retention = now
                    try:
                        self.apply_retention()
                    except duckdb.Error as e:
                        if not is_disk_full(e):
                            raise
            self._chmod()
        return True

    def _commit(self, work: list[tuple[str, list[dict]]], keyed: dict[str, list[dict]],
                checkpoints: Sequence[CheckpointRow], forget: Sequence[str]) -> None:
        self.con.execute("BEGIN TRANSACTION")
        try:
            for table, rows in work:
                self._insert(table, rows)
            for table, rows in keyed.items():
                if rows:
                    self._upsert(table, rows)
            for progress in checkpoints:
                self.con.execute(f"INSERT OR REPLACE INTO {schema.CHECKPOINT_TABLE} VALUES (?, ?, ?, ?)",
                                 list(progress))
            for run in forget:
                self.con.execute(f"DELETE FROM {schema.CHECKPOINT_TABLE} WHERE run = ?", [run])
            self.con.execute(f"INSERT OR REPLACE INTO {schema.META_TABLE} VALUES ('next_store_seq', ?)",
                             [str(self._next_seq)])
            self.con.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(duckdb.Error):
                self.con.execute("ROLLBACK")
            raise

    def take_dropped_rows(self) -> int:
        """Rows dropped for lack of room since last asked."""
        with self._lock:
            n, self._dropped_rows = self._dropped_rows, 0
        return n

    def runs_in_progress(self) -> set[str]:
        """The spool runs whose analysis has committed part of them, and not yet their end."""
        with self._lock:
            rows = self.con.execute(f"SELECT run FROM {schema.CHECKPOINT_TABLE} WHERE state IS NOT NULL").fetchall()
        return {run for (run,) in rows}

    def checkpoints(self) -> dict[str, tuple[int, int, bytes | None]]:
        """Each spool run's committed progress: run -> (segment, offset, state or None once analysed whole)."""
        with self._lock:
            rows = self.con.execute(f'SELECT run, seq, "offset", state FROM {schema.CHECKPOINT_TABLE}').fetchall()
        return {run: (seq, offset, state) for run, seq, offset, state in rows}

    def _numbered(self, buf: pa.Table) -> pa.Table:
        """`buf` with store_seq set: the next numbers, in order. One writer, one transaction at a time: a row
        committed later always has a larger number, which is what lets an export resume after the last one."""
        n = buf.num_rows
        seqs = pa.array(np.arange(self._next_seq, self._next_seq + n, dtype=np.int64))
        self._next_seq += n
        return buf.set_column(buf.schema.get_field_index(schema.STORE_SEQ), schema.STORE_SEQ, seqs)

    def _insert(self, table: str, rows: list[dict]) -> None:
        buf = self._numbered(arrow_table(table, rows, self.type_errors, self.redactor))
        self.con.register("_apptrace_buf", buf)
        try:
            cols = ", ".join(f'"{c}"' for c in buf.column_names)
            self.con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _apptrace_buf")
        finally:
            self.con.unregister("_apptrace_buf")

    def _upsert(self, table: str, rows: list[dict]) -> None:
        key = schema.KEYS[table]
        buf = self._numbered(arrow_table(table, _merge_keyed(rows, key), self.type_errors, self.redactor))
        cols = schema.columns(table)
        on = " AND ".join(f'b."{k}" IS NOT DISTINCT FROM o."{k}"' for k in key)
        merged = ", ".join(f'COALESCE(b."{c}", o."{c}") AS "{c}"' for c in cols)
        self.con.register("_apptrace_buf", buf)
        try:
            self.con.execute(f"CREATE OR REPLACE TEMP TABLE _apptrace_merged AS "
                             f"SELECT {merged} FROM _apptrace_buf b LEFT JOIN {table} o ON {on}")
            self.con.execute(f"DELETE FROM {table} o USING _apptrace_buf b WHERE {on}")
            self.con.execute(f"INSERT INTO {table} SELECT * FROM _apptrace_merged")
            self.con.execute("DROP TABLE _apptrace_merged")
        finally:
            self.con.unregister("_apptrace_buf")

    def replayed(self, digest: str) -> str | None:
        """When and from where a capture with this digest was replayed into this DB, or None."""
        with self._lock:
            rows = self.con.execute(f"SELECT value FROM {schema.META_TABLE} WHERE key = ?",
                                    [f"replayed:{digest}"]).fetchall()
        return rows[0][0] if rows else None

    def mark_replayed(self, digest: str, path: str) -> None:
        """Remember that this capture's rows are in: replaying it again would store them twice."""
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        with self._lock, private_umask():
            self.con.execute(f"INSERT OR REPLACE INTO {schema.META_TABLE} VALUES (?, ?)",
                             [f"replayed:{digest}", f"{when} from {path}"])

    def apply_retention(self, now_ns: int | None = None) -> None:
        """Delete rows older than now − retain; if the file is over the size cap, drop the oldest quarter."""
        with self._lock, private_umask():
            if self.retain_ns:
                now_ns = time.time_ns() if now_ns is None else now_ns
                self._delete_before(now_ns - self.retain_ns)
            if self.max_size and self.size() > self.max_size:
                t = self.con.execute(
                    "SELECT quantile_disc(t, 0.25) FROM (" + " UNION ALL ".join(
                        f"SELECT epoch_ns(time_) AS t FROM {tb}" for tb in schema.EVENT_TABLES) + ")").fetchall()[0]
                if t and t[0] is not None:
                    self._delete_before(int(t[0]) + 1)
                self.con.execute("CHECKPOINT")

    def _delete_before(self, cutoff_ns: int) -> None:
        for table, col in schema.TIME_COLUMN.items():
            self.con.execute(f'DELETE FROM {table} WHERE "{col}" < make_timestamp_ns(?)', [cutoff_ns])

    def size(self) -> int:
        """Bytes on disk: the DB file plus its WAL."""
        total = 0
        for p in (self.path, self.path + ".wal"):
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(p)
        return total

    # -- reading -----------------------------------------------------------------------------------------------
    def query_arrow(self, sql: str) -> pa.Table:
        """Run a query on its own cursor (safe from any thread while the tracer inserts)."""
        with self._reader_lock:
            if self._closed:
                raise duckdb.ConnectionException("the store is closed")
            cur = self._reader.cursor()
        try:
            return run_query(cur, sql)
        finally:
            cur.close()

    @contextlib.contextmanager
    def query_reader(self, sql: str, batch_rows: int = 65536,
                     on_cursor: Callable[[duckdb.DuckDBPyConnection], None] | None = None,
                     ) -> Iterator[pa.RecordBatchReader]:
        """Run a query on its own cursor and stream the result in batches (the tracer never holds it whole).

        ``on_cursor`` gets the cursor before the query starts, so that another thread can interrupt it.
        """
        with self._reader_lock:
            if self._closed:
                raise duckdb.ConnectionException("the store is closed")
            cur = self._reader.cursor()
        if on_cursor is not None:
            on_cursor(cur)
        try:
            rel = cur.sql(sql)
            if rel is None:
                yield pa.RecordBatchReader.from_batches(pa.schema([]), [])
            else:
                yield rel.to_arrow_reader(batch_rows)
        finally:
            cur.close()

    def serve(self, while_serving: Callable[[], AbstractContextManager[object]] | None = None) -> None:
        """Start the query server on `<db>.sock` (mode 0600) in a background thread; ``while_serving`` is
        entered around each query."""
        from apptrace.store.server import QueryServer  # only a tracer serves: replay never loads it

        if self._server is None:
            server = QueryServer(self, self.path + ".sock", while_serving)
            try:
                server.start()
            except OSError as e:
                raise StoreError(f"cannot serve queries on {server.path}: {e.strerror or e}") from None
            self._server = server

    def close(self) -> None:
        """Flush, stop the query server, checkpoint and close the file."""
        if self._closed:
            return
        self.flush()
        if self._server is not None:
            self._server.stop()
            self._server = None
        with self._lock, self._reader_lock:
            self._closed = True
            with contextlib.suppress(duckdb.Error):
                self._reader.close()
            with private_umask():
                with contextlib.suppress(duckdb.Error):
                    self.con.execute("CHECKPOINT")
                self.con.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
