"""Where px queries run: the database (tracer socket or file), the catalog of tables, and the displayed outputs.

`apptrace run` makes a collecting session (outputs are gathered and printed at the end, in the chosen format). In a
Python shell or Jupyter, the default session opens `$APPTRACE_DB` or `./apptrace.duckdb` on first use and
`px.display` returns / shows the result at once; `px.connect(path)` picks another database.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from apptrace.common.defaults import default_db
from apptrace.query.px.expr import PxError, kind_of
from apptrace.store import schema as static_schema

if TYPE_CHECKING:
    import pandas as pd

@dataclass
class Session:
    db: str | None = None
    backend: Any = None  # apptrace.query.backend.Backend
    collect: bool = False
    print_sql: bool = False  # display() records each DataFrame's SQL instead of running it
    # resolve tables against apptrace's own schema (apptrace.store.schema), never asking the database: for code
    # that builds queries over the tables apptrace writes and wants no catalog round trip, or no database at all
    builtin_schema: bool = False
    sql: list[tuple[str, str]] = field(default_factory=list)
    args: dict[str, str] = field(default_factory=dict)
    used_args: set[str] = field(default_factory=set)
    outputs: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    _catalog: dict[str, tuple[tuple[str, str], ...]] | None = None

    def get_backend(self) -> Any:
        if self.backend is None:
            from apptrace.query.backend import QueryError, open_backend

            db = self.db or default_db()
            try:
                self.backend = open_backend(db)
            except QueryError as e:
                raise PxError(str(e)) from None
        return self.backend

    def catalog(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """table → ((column, kind), …), from the database when there is one, else the built-in schema."""
        if self._catalog is None:
            backend = None if self.builtin_schema else self.backend
            if backend is None and not self.builtin_schema:
                db = self.db or default_db()
                if os.path.exists(db) or os.path.exists(db + ".sock"):
                    backend = self.get_backend()
            if backend is None:
                cat = {t: tuple((c, kind_of(ty)) for c, ty in cols) for t, cols in static_schema.TABLES.items()}
            elif getattr(backend, "px_catalog", None) is not None:
                cat = backend.px_catalog  # one catalog query per connection, not per script
            else:
                rows = backend.query_arrow(
                    "SELECT table_name, column_name, data_type FROM information_schema.columns "
                    f"WHERE table_schema = 'main' AND table_name <> '{static_schema.META_TABLE}' "
                    "ORDER BY table_name, ordinal_position").to_pylist()
                tmp: dict[str, list[tuple[str, str]]] = {}
                for r in rows:
                    tmp.setdefault(r["table_name"], []).append((r["column_name"], kind_of(r["data_type"])))
                cat = {t: tuple(v) for t, v in tmp.items()}
                try:
                    backend.px_catalog = cat
                except AttributeError:  # pragma: no cover - a backend with __slots__
                    pass
            self._catalog = cat
        return self._catalog

    def table_schema(self, table: str) -> tuple[tuple[str, str], ...]:
        cat = self.catalog()
        if table not in cat:
            raise PxError(f"unknown table {table!r}; available tables: {', '.join(sorted(cat)) or '(none)'}")
        return cat[table]

    def execute(self, sql: str) -> pd.DataFrame:
        from apptrace.query.backend import QueryError

        try:
            table = self.get_backend().query_arrow(sql)
        except QueryError as e:
            raise PxError(str(e)) from None
        return table.to_pandas()

    def close(self) -> None:
        if self.backend is not None:
            self.backend.close()
            self.backend = None


_stack: list[Session] = []


def current() -> Session:
    if not _stack:
        _stack.append(Session())
    return _stack[-1]


@contextlib.contextmanager
def session(**kw: Any) -> Iterator[Session]:
    """Run px code against a fresh session (used by `apptrace run`, tests and the bench)."""
    s = Session(**kw)
    _stack.append(s)
    try:
        yield s
    finally:
        _stack.remove(s)
        s.close()


def connect(db: str | None = None, *, con: Any = None) -> Session:
    """Point px at another database (a path, or an open DuckDB connection) for the rest of this process."""
    from apptrace.query.backend import FileBackend

    backend = FileBackend(con=con) if con is not None else None
    s = Session(db=db, backend=backend)
    if _stack and not _stack[-1].collect:
        _stack[-1].close()
        _stack[-1] = s
    else:
        _stack.append(s)
    return s
