"""px: a PxL-style DataFrame API over the apptrace DuckDB tables.

Lazy: every operation builds an immutable node; `px.display(df)` (or `df.to_pandas()`) compiles the whole tree
to ONE DuckDB SQL query (`df.to_sql()` shows it) and returns a pandas DataFrame.

    import px
    df = px.DataFrame('http_events', start_time='-5m')
    df = df[df.resp_status >= 500]
    px.display(df.groupby('service').agg(n=('latency', px.count), p99=('latency', px.quantiles, 0.99)))
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from apptrace.query.px.compiler import OperationNotDefinedError
from apptrace.query.px.expr import Call, Col, Duration, Expr, Lit, PxError, lift
from apptrace.query.px.frame import DataFrame, GroupBy
from apptrace.query.px.relations import AggFunc, Predicate
from apptrace.query.px.session import Session, connect, current, session

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "DataFrame", "GroupBy", "PxError", "OperationNotDefinedError", "Expr", "Session", "connect", "session",
    "display", "arg", "count", "size", "sum", "mean", "min", "max", "any", "quantiles", "fraction", "count_distinct",
    "stddev", "rate", "is_error", "gt", "ge", "lt", "le", "eq", "ne", "bin", "now", "nanoseconds", "microseconds", "milliseconds",
    "seconds", "minutes", "hours", "days", "DurationNanos", "contains", "regex_match", "select", "pluck",
    "pluck_float64", "pluck_int64", "normalize_mysql", "normalize_pgsql", "length", "tolower", "toupper",
    "substring", "coalesce", "int64", "float64", "string", "abs", "round", "log10", "strftime", "col", "lit", "Percent",
    "Bytes", "debug", "convert_arg",
]

# -- aggregates: agg(name=(column, px.fn, *args)) --------------------------------------------------------------
count = AggFunc("count")  # the rows where the column is not null
size = AggFunc("size")    # every row, null or not (pandas' 'size'): what "how many requests" means
sum = AggFunc("sum")  # noqa: A001 - PxL names
mean = AggFunc("mean")
min = AggFunc("min")  # noqa: A001
max = AggFunc("max")  # noqa: A001
any = AggFunc("any")  # noqa: A001
# with q → that quantile; with [q, …] → a struct of those (0.5 → p50); without → struct p01, p10, p50, p90, p99
quantiles = AggFunc("quantiles")
fraction = AggFunc("fraction")    # (col, px.fraction, px.gt, 499): share of rows where col > 499
count_distinct = AggFunc("count_distinct")
stddev = AggFunc("stddev")
# ('time_', px.rate): the group's rows per second over the span all groups' rows cover together (query.rules)
rate = AggFunc("rate")

# -- predicates: px.gt(a, b) is a > b; also the predicate argument of px.fraction --------------------------------
gt = Predicate("gt", ">")
ge = Predicate("ge", ">=")
lt = Predicate("lt", "<")
le = Predicate("le", "<=")
eq = Predicate("eq", "==")
ne = Predicate("ne", "!=")


# -- durations (int nanoseconds; next to a timestamp they shift it) -------------------------------------------
def nanoseconds(n: float) -> Duration:
    return Duration(int(n))


def microseconds(n: float) -> Duration:
    return Duration(int(n * 10**3))


def milliseconds(n: float) -> Duration:
    return Duration(int(n * 10**6))


def seconds(n: float) -> Duration:
    return Duration(int(n * 10**9))


def minutes(n: float) -> Duration:
    return Duration(int(n * 60 * 10**9))


def hours(n: float) -> Duration:
    return Duration(int(n * 3600 * 10**9))


def days(n: float) -> Duration:
    return Duration(int(n * 86400 * 10**9))


def DurationNanos(x: Any) -> Expr:  # noqa: N802 - PxL name
    """Mark a value as a duration in ns (an int column, or a px.minutes(...) duration)."""
    if isinstance(x, Duration):
        return x
    if isinstance(x, int):
        return Duration(x)
    return Call("duration_nanos", (lift(x),))


def Percent(x: Any) -> Expr:  # noqa: N802 - PxL semantic type: a no-op here
    return lift(x)


def Bytes(x: Any) -> Expr:  # noqa: N802 - PxL semantic type: a no-op here
    return lift(x)


# -- scalar functions -------------------------------------------------------------------------------------------
def col(name: str) -> Col:
    return Col(name)


def lit(value: Any) -> Lit:
    return Lit(value)


def now() -> Call:
    """The current time (UTC), as TIMESTAMP_NS."""
    return Call("now", ())


def bin(x: Any, size: Any) -> Call:  # noqa: A001 - PxL name
    """Round down to a multiple of size: px.bin(df.time_, px.seconds(10)) (time_bucket), or ints."""
    return Call("bin", (lift(x), lift(size)))


def is_error(df: DataFrame) -> Call:
    """True for the rows of ``df`` whose request failed: HTTP status >= 500 or gRPC status != 0 on
    http_events, ``resp_status = 'ERR'`` on mysql_events and pgsql_events (apptrace.query.rules)."""
    if not isinstance(df, DataFrame):
        raise PxError("px.is_error(df) takes the DataFrame whose rows it judges")
    return Call("is_error", ())


def contains(s: Any, sub: Any) -> Call:
    return Call("contains", (lift(s), lift(sub)))


def regex_match(pattern: Any, s: Any) -> Call:
    """True when the whole of s matches pattern (RE2 syntax), as in PxL: px.regex_match('.*/api/.*', df.req_path)."""
    return Call("regex_match", (lift(pattern), lift(s)))


def select(cond: Any, a: Any, b: Any) -> Call:
    """a where cond is true, else b."""
    return Call("select", (lift(cond), lift(a), lift(b)))


def pluck(x: Any, key: str) -> Call:
    """A field of a struct column, or of a JSON string column (e.g. a header from req_headers), as a string."""
    return Call("pluck", (lift(x), Lit(key)))


def pluck_float64(x: Any, key: str) -> Call:
    """A field as a float: px.pluck_float64(df.latency_quantiles, 'p99')."""
    return Call("pluck_float64", (lift(x), Lit(key)))


def pluck_int64(x: Any, key: str) -> Call:
    return Call("pluck_int64", (lift(x), Lit(key)))


def normalize_mysql(x: Any) -> Call:
    """The shape of a MySQL statement: literals → ?, IN lists and multi-row VALUES collapsed, spaces squeezed."""
    return Call("normalize_mysql", (lift(x),))


def normalize_pgsql(x: Any) -> Call:
    """The shape of a PostgreSQL statement: literals and $n → ?, IN lists collapsed, spaces squeezed."""
    return Call("normalize_pgsql", (lift(x),))


def length(x: Any) -> Call:
    return Call("length", (lift(x),))


def tolower(x: Any) -> Call:
    return Call("tolower", (lift(x),))


def toupper(x: Any) -> Call:
    return Call("toupper", (lift(x),))


def substring(x: Any, start: int, length: int) -> Call:
    """length characters of x from start (0-based, as in PxL)."""
    return Call("substring", (lift(x), lift(start), lift(length)))


def coalesce(x: Any, *instead: Any) -> Call:
    """The first of x, instead… that is not null: px.coalesce(df.service, '?')."""
    if not instead:
        raise PxError("px.coalesce(x, value, …) needs at least one value to use where x is null")
    return Call("coalesce", (lift(x), *(lift(v) for v in instead)))


def int64(x: Any) -> Call:
    """x as an int; a time becomes its nanoseconds since the epoch."""
    return Call("int64", (lift(x),))


def float64(x: Any) -> Call:
    return Call("float64", (lift(x),))


def string(x: Any) -> Call:
    return Call("string", (lift(x),))


def abs(x: Any) -> Call:  # noqa: A001
    return Call("abs", (lift(x),))


def round(x: Any, digits: int = 0) -> Call:  # noqa: A001
    return Call("round", (lift(x), lift(digits)))


def log10(x: Any) -> Call:
    return Call("log10", (lift(x),))


def strftime(x: Any, fmt: str) -> Call:
    return Call("strftime", (lift(x), lift(fmt)))


# -- script arguments and output --------------------------------------------------------------------------------
def arg(name: str, default: Any = None) -> Any:
    """The value of `--arg name=VALUE` given to `apptrace run`, converted to the type of `default`."""
    s = current()
    s.used_args.add(name)
    if name not in s.args:
        return default
    return convert_arg(name, s.args[name], type(default) if default is not None else str)


def convert_arg(name: str, raw: str, typ: Any) -> Any:
    try:
        if typ is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if typ in (int, float, str):
            return typ(raw)
    except ValueError:
        raise PxError(f"--arg {name}={raw}: expected {typ.__name__}") from None
    return raw


def display(df: Any, name: str = "output") -> pd.DataFrame:
    """Run df's one query and show it under `name`. Returns the pandas result."""
    import pandas as pd

    s = current()
    if s.print_sql and isinstance(df, DataFrame):
        s.sql.append((str(name), df.to_sql()))
        return pd.DataFrame(columns=df.columns)
    if isinstance(df, DataFrame):
        result = df.to_pandas()
        result.attrs["window"] = window_of(df)
    elif isinstance(df, pd.DataFrame):
        result = df
    else:
        raise PxError(f"px.display takes a px.DataFrame, not {type(df).__name__}")
    if s.collect:
        names = {n for n, _ in s.outputs}
        base, k = str(name), 2
        while name in names:
            name = f"{base}_{k}"
            k += 1
        s.outputs.append((str(name), result))
    elif "ipykernel" in sys.modules or "IPython" in sys.modules:
        try:
            from IPython.display import display as ipy_display

            ipy_display(result)
        except ImportError:  # pragma: no cover
            print(result)
    else:
        print(f"-- {name}\n{result.to_string()}")
    return result


debug = display  # PxL's px.debug shows a frame the same way


def window_of(df: DataFrame) -> str | None:
    """Which window of time a frame's rows come from, in words ('last 15m'), so that an empty result says where
    it looked. None when it reads no table with a time_ column."""
    from apptrace.query.fmt import fmt_span_ns
    from apptrace.query.px.relations import Ago, sources

    def at(t: Any, edge: str) -> str:
        if isinstance(t, Ago):
            return f"last {fmt_span_ns(t.ns)}" if edge == "since" else f"until {fmt_span_ns(t.ns)} ago"
        if isinstance(t, int):
            import datetime as dt

            return f"{edge} {dt.datetime.fromtimestamp(t / 1e9, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"
        return f"{edge} {t}"

    seen = []
    for src in sources(df._rel):
        if "time_" not in dict(src.table_schema):
            continue
        text = "all time" if src.start_ns is None else at(src.start_ns, "since")
        if src.end_ns is not None:
            text += ", " + at(src.end_ns, "until")
        if text not in seen:
            seen.append(text)
    return " and ".join(seen) or None
