"""px.DataFrame: a thin handle on an immutable relation tree. Every method returns a new DataFrame, except
`df.col = expr`, which (as in PxL) rebinds this handle to a new tree with the column added or replaced."""

from __future__ import annotations

import datetime as _dt
import os
import re
import sys
from collections.abc import Sequence
from typing import Any

from apptrace.common.units import parse_duration
from apptrace.query.px import relations as R
from apptrace.query.px.compiler import to_sql
from apptrace.query.px.expr import Col, Expr, PxError, check_types, infer, lift, show
from apptrace.query.px.session import current as current_session


def parse_time(t: Any) -> int | str | R.Ago | None:
    """start_time/end_time → absolute ns, a time before now (R.Ago: '-5m', px.minutes(5), a negative int of ns),
    or an ISO string."""
    if t is None:
        return None
    from apptrace.query.px.expr import Duration

    if isinstance(t, Duration):
        return R.Ago(abs(t.ns))
    if isinstance(t, bool):
        raise PxError(f"bad time {t!r}")
    if isinstance(t, int):
        return R.Ago(-t) if t < 0 else t
    if isinstance(t, _dt.datetime):
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.UTC)
        return int(t.timestamp()) * 10**9 + t.microsecond * 1000
    if hasattr(t, "value") and hasattr(t, "tz_localize"):  # pandas.Timestamp
        return int(t.value)
    if isinstance(t, str):
        s = t.strip()
        if s.lower() == "now":
            return None
        if s.startswith("-"):
            try:
                return R.Ago(parse_duration(s[1:]))
            except ValueError:
                pass  # an ISO time before 1970, or a mistake: fromisoformat below says which
        try:
            _dt.datetime.fromisoformat(s)
        except ValueError:
            raise PxError(f"bad time {t!r}: use a relative time like '-5m' or '-1h', or an ISO time") from None
        return s
    raise PxError(f"bad time {t!r}")


def _names(cols: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(cols, str):
        return (cols,)
    out = tuple(cols)
    for c in out:
        if not isinstance(c, str):
            raise PxError(f"expected column names, got {c!r}")
    return out


class DataFrame:
    """A lazy table. `px.DataFrame('http_events', start_time='-5m')` reads a table; methods build on it."""

    __slots__ = ("_rel",)

    def __init__(self, table: str | None = None, select: Sequence[str] | None = None,
                 start_time: Any = None, end_time: Any = None, *, _rel: R.Relation | None = None) -> None:
        if _rel is None:
            if not isinstance(table, str):
                raise PxError("px.DataFrame(table, select=[...], start_time='-5m'): table must be a name")
            tschema = current_session().table_schema(table)
            sel = None
            if select is not None:
                sel = _names(select)
                R.check_columns(sel, dict(tschema))
            start, end = parse_time(start_time), parse_time(end_time)
            if (start is not None or end is not None) and "time_" not in dict(tschema):
                raise PxError(f"table {table!r} has no time_ column, so start_time/end_time do not apply")
            _rel = R.Source(table, tschema, sel, start, end)
        _stamp(_rel)
        object.__setattr__(self, "_rel", _rel)

    # -- columns -----------------------------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        return list(self._rel.schema)

    def _col(self, name: str) -> Col:
        if name not in self._rel.schema:
            raise R.no_such_column(name, self._rel.schema)
        return Col(name)

    def __getattr__(self, name: str) -> Col:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._col(name)

    @property
    def ctx(self) -> _Ctx:
        """PxL's metadata accessor: df.ctx['service'] is the service column here."""
        return _Ctx(self)

    def _check(self, e: Expr) -> Expr:
        R.check_columns(sorted(e.columns()), self._rel.schema)
        check_types(e, self._rel.schema)
        return e

    def _filter(self, predicate: Expr) -> DataFrame:
        kind = infer(self._check(predicate), self._rel.schema)
        if kind in ("int", "float", "str", "time"):
            raise PxError(f"type error: a filter keeps the rows where a condition holds, and {show(predicate)} is "
                          f"not a condition (compare it: df[{show(predicate)} > 0])")
        return DataFrame(_rel=R.Filter(self._rel, predicate))

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return self._col(key)
        if isinstance(key, list | tuple):
            cols = _names(key)
            R.check_columns(cols, self._rel.schema)
            return DataFrame(_rel=R.Project(self._rel, cols))
        if isinstance(key, Expr):
            return self._filter(key)
        raise PxError(f"df[...] takes a column name, a list of names or a boolean expression, not {key!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            raise PxError(f"column names starting with '_' are reserved: {name!r}")
        self[name] = value

    def __setitem__(self, name: str, value: Any) -> None:
        e = self._check(lift(value))
        kind = infer(e, self._rel.schema)
        object.__setattr__(self, "_rel", _stamp(R.Assign(self._rel, name, e, kind)))

    # -- relational operations ---------------------------------------------------------------------------------
    def filter(self, predicate: Expr) -> DataFrame:
        return self._filter(lift(predicate))

    def drop(self, columns: str | Sequence[str]) -> DataFrame:
        cols = _names(columns)
        R.check_columns(cols, self._rel.schema)
        return DataFrame(_rel=R.Drop(self._rel, cols))

    def head(self, n: int = 5) -> DataFrame:
        if not isinstance(n, int) or n < 0:
            raise PxError(f"head(n): n must be a non-negative int, not {n!r}")
        return DataFrame(_rel=R.Head(self._rel, n))

    def sort(self, by: str | Sequence[str], ascending: bool | Sequence[bool] = True) -> DataFrame:
        """Order rows (an apptrace extension; PxL leaves sorting to the UI). Kept through later steps."""
        cols = _names(by)
        R.check_columns(cols, self._rel.schema)
        asc = (ascending,) * len(cols) if isinstance(ascending, bool) else tuple(ascending)
        if len(asc) != len(cols):
            raise PxError("sort: give one ascending flag per column")
        return DataFrame(_rel=R.Sort(self._rel, cols, asc))

    sort_values = sort

    def groupby(self, by: str | Sequence[str]) -> GroupBy:
        cols = _names(by)
        R.check_columns(cols, self._rel.schema)
        return GroupBy(self, cols)

    def agg(self, **aggs: Any) -> DataFrame:
        """Aggregate the whole table into one row."""
        return GroupBy(self, ()).agg(**aggs)

    def merge(self, right: DataFrame, how: str = "inner", left_on: str | Sequence[str] | None = None,
              right_on: str | Sequence[str] | None = None, suffixes: Sequence[str] = ("_x", "_y"),
              on: str | Sequence[str] | None = None) -> DataFrame:
        if not isinstance(right, DataFrame):
            raise PxError("merge: right must be a px.DataFrame")
        if how not in ("inner", "left", "right", "outer"):
            raise PxError(f"merge: how must be inner, left, right or outer, not {how!r}")
        if on is not None:
            left_on = right_on = on
        if left_on is None or right_on is None:
            raise PxError("merge: give left_on and right_on (or on)")
        lo, ro = _names(left_on), _names(right_on)
        if len(lo) != len(ro) or not lo:
            raise PxError("merge: left_on and right_on must name the same number of columns")
        R.check_columns(lo, self._rel.schema)
        R.check_columns(ro, right._rel.schema)
        sfx = tuple(suffixes)
        if len(sfx) != 2:
            raise PxError("merge: suffixes must be two strings")
        rel = R.Join(self._rel, right._rel, how, lo, ro, (str(sfx[0]), str(sfx[1])))
        rel.plan()  # raise now (on the script's line) if names would clash
        return DataFrame(_rel=rel)

    def append(self, other: DataFrame | Sequence[DataFrame]) -> DataFrame:
        others = [other] if isinstance(other, DataFrame) else list(other)
        mine = set(self._rel.schema)
        for o in others:
            if set(o._rel.schema) != mine:
                diff = sorted(mine ^ set(o._rel.schema))
                raise PxError(f"append: both DataFrames need the same columns; they differ in {', '.join(diff)}")
        return DataFrame(_rel=R.Union((self._rel, *(o._rel for o in others))))

    # -- output ------------------------------------------------------------------------------------------------
    def to_sql(self) -> str:
        """The one DuckDB SQL query this DataFrame compiles to."""
        return to_sql(self._rel)

    def to_pandas(self) -> Any:
        """Run the query; a pandas DataFrame."""
        session = current_session()
        try:
            return session.execute(self.to_sql())
        except PxError as e:
            raise _located(e, self._rel, session) from None

    execute = to_pandas

    def __repr__(self) -> str:
        return f"<px.DataFrame columns={self.columns}>"

    def _repr_html_(self) -> str:  # Jupyter shows the result
        return self.to_pandas()._repr_html_()


_PX_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _stamp(rel: R.Relation) -> R.Relation:
    """Remember the line of the code outside px that made ``rel``: where to point if the database rejects it."""
    if "where" not in rel.__dict__:
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith(_PX_DIR):
            f = f.f_back
        if f is not None:
            object.__setattr__(rel, "where", (f.f_code.co_filename, f.f_lineno))
    return rel


def _steps(rel: R.Relation) -> list[R.Relation]:
    """Every relation under and including ``rel``, each after the ones it is built on."""
    out: list[R.Relation] = []
    for child in (getattr(rel, "parent", None), getattr(rel, "left", None), getattr(rel, "right", None),
                  *getattr(rel, "parts", ())):
        if isinstance(child, R.Relation):
            out += [r for r in _steps(child) if r not in out]
    return [*out, rel]


_SQL_CONTEXT = re.compile(r"\s*(LINE \d+:|Candidate functions:).*$", re.S)


def _located(e: PxError, rel: R.Relation, session: Any) -> PxError:
    """The database's error, without the SQL px generated, pointing at the script line whose step it rejects.

    The steps are tried in the order they were built, each with no rows to read (LIMIT 0: the database checks
    names and types, and reads nothing), until one fails: that step is the mistake."""
    message = _SQL_CONTEXT.sub("", str(e)).strip() or str(e)
    where = None
    for step in _steps(rel):
        if "where" not in step.__dict__:
            continue
        try:
            session.execute(f"SELECT * FROM ({to_sql(step)}) LIMIT 0")
        except PxError as probe:
            message = _SQL_CONTEXT.sub("", str(probe)).strip() or message
            where = step.__dict__["where"]
            break
    out = PxError(message)
    out.where = where  # type: ignore[attr-defined]
    return out


class _Ctx:
    def __init__(self, df: DataFrame) -> None:
        self.df = df

    def __getitem__(self, name: str) -> Col:
        return self.df._col(name)


#: aggregates that compute on the values themselves (count, size, min, max, any and fraction take any kind)
_NUMERIC_AGGREGATES = {"sum", "mean", "quantiles", "stddev"}


class GroupBy:
    def __init__(self, df: DataFrame, by: tuple[str, ...]) -> None:
        self.df = df
        self.by = by

    def agg(self, **aggs: Any) -> DataFrame:
        """agg(name=(column, px.fn, *args), …): one row per group."""
        schema = self.df._rel.schema
        if not aggs:
            if not self.by:
                raise PxError("agg() needs at least one name=(column, fn) when there is no groupby")
            return DataFrame(_rel=R.Aggregate(self.df._rel, self.by, ()))
        specs = []
        for name, spec in aggs.items():
            if not isinstance(spec, tuple) or len(spec) < 2:
                raise PxError(f"agg {name}=…: expected (column, px.fn, *args), e.g. ('latency', px.mean)")
            col, fn, *args = spec
            if isinstance(col, Col):
                col = col.name
            if not isinstance(col, str):
                raise PxError(f"agg {name}=…: the column must be a name, not {col!r}")
            if col not in schema:
                raise R.no_such_column(col, schema)
            if not isinstance(fn, R.AggFunc):
                raise PxError(f"agg {name}=…: {fn!r} is not an aggregate; use px.count, px.size, px.sum, px.mean, "
                              "px.min, px.max, px.any, px.quantiles, px.fraction or px.rate")
            if name in self.by:
                raise PxError(f"agg {name}=…: {name!r} is already a group column")
            if fn.name in _NUMERIC_AGGREGATES and schema[col] in ("str", "time"):
                raise PxError(f"type error: agg {name}=…: px.{fn.name} needs numbers, and df.{col} is "
                              f"{'text' if schema[col] == 'str' else 'a time'}")
            specs.append(R.AggSpec(name, col, fn.name, tuple(args)))
        return DataFrame(_rel=R.Aggregate(self.df._rel, self.by, tuple(specs)))
