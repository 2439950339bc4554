"""One compiler from px relation and expression nodes to a single DuckDB SQL query.

Each relation node becomes one CTE (`t0`, `t1`, …) reading the previous one; DuckDB inlines CTEs used once, so the
plan is the same as hand-written SQL. There is one `visit_<Node>` per relation node and one `expr_<Node>` per
expression node; a node with no rule raises `OperationNotDefinedError`.
"""

from __future__ import annotations

from typing import Any

from apptrace.query import rules
from apptrace.query.px import relations as R
from apptrace.query.px.expr import BinOp, Call, Col, Duration, Expr, Lit, PxError, Unary, infer
from apptrace.query.rules import NOW_SQL, error_sql_for, since_sql

QUANTILES = (("p01", 0.01), ("p10", 0.10), ("p50", 0.50), ("p90", 0.90), ("p99", 0.99))

# SQL shape normalisation, as regexp_replace calls so it stays inside the one query (no Python UDF).
# Applied in order; each is (pattern, replacement, flags).
_NORMALIZE_COMMON: list[tuple[str, str, str]] = [
    (r"'(?:[^'\\]|\\.|'')*'", "?", "g"),                          # string literals
    (r"\b0x[0-9a-fA-F]+\b", "?", "g"),                            # hex literals
    (r"\b\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b", "?", "g"),            # numbers (not inside identifiers like t1)
    (r"(?i)\b(IN)\s*\(\s*\?(?:\s*,\s*\?)*\s*\)", r"\1 (?)", "g"),  # IN (?, ?, ?) → IN (?)
    (r"\(\s*\?(?:\s*,\s*\?)*\s*\)(?:\s*,\s*\(\s*\?(?:\s*,\s*\?)*\s*\))+", "(?)", "g"),  # VALUES (..),(..)
    (r"\s+", " ", "g"),
]
NORMALIZE_MYSQL = [(r'"(?:[^"\\]|\\.|"")*"', "?", "g"), *_NORMALIZE_COMMON]  # "…" is a string in MySQL
NORMALIZE_PGSQL = [(r"\$\d+", "?", "g"), *_NORMALIZE_COMMON]               # $1 placeholders


class OperationNotDefinedError(PxError):
    pass


def quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "TRUE" if v else "FALSE"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "'NaN'::DOUBLE"
        if v in (float("inf"), float("-inf")):
            return f"'{v}'::DOUBLE"
        return repr(v)
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    ns = _datetime_ns(v)
    if ns is not None:
        return f"make_timestamp_ns({ns})"
    raise PxError(f"cannot use {type(v).__name__} {v!r} as a SQL literal")


def _datetime_ns(v: Any) -> int | None:
    """A datetime (naive = UTC) or pandas.Timestamp as ns since the epoch; None for anything else."""
    import datetime as dt

    if hasattr(v, "value") and hasattr(v, "tz_localize"):  # pandas.Timestamp
        return int(v.value)
    if isinstance(v, dt.datetime):
        if v.tzinfo is None:
            v = v.replace(tzinfo=dt.UTC)
        delta = v - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
        return (delta.days * 86400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    return None



_BIN_SQL = {"+": "+", "-": "-", "*": "*", "/": "/", "//": "//", "%": "%", "==": "=", "!=": "<>", "<": "<",
            "<=": "<=", ">": ">", ">=": ">=", "and": "AND", "or": "OR"}


class ExprCompiler:
    """Compiles an expression against a relation's column kinds."""

    def __init__(self, schema: dict[str, str]) -> None:
        self.schema = schema

    def __call__(self, e: Expr) -> str:
        rule = getattr(self, "expr_" + type(e).__name__, None)
        if rule is None:
            raise OperationNotDefinedError(f"no SQL rule for expression {type(e).__name__}")
        return rule(e)

    def kind(self, e: Expr) -> str:
        return infer(e, self.schema)

    def expr_Col(self, e: Col) -> str:
        return quote(e.name)

    def expr_Lit(self, e: Lit) -> str:
        return sql_literal(e.value)

    def expr_Duration(self, e: Duration) -> str:
        return str(int(e.ns))

    def expr_Unary(self, e: Unary) -> str:
        if e.op == "not":
            return f"(NOT {self(e.operand)})"
        return f"(-{self(e.operand)})"

    def expr_BinOp(self, e: BinOp) -> str:
        lk, rk = self.kind(e.left), self.kind(e.right)
        ls, rs = self(e.left), self(e.right)
        op = e.op
        if lk == "time" or rk == "time":
            numeric = ("int", "float")
            if op == "-" and lk == "time" and rk == "time":
                return f"(epoch_ns({ls}) - epoch_ns({rs}))"
            if op in ("+", "-") and lk == "time" and rk in numeric:
                return f"make_timestamp_ns(epoch_ns({ls}) {op} CAST({rs} AS BIGINT))"
            if op == "+" and rk == "time" and lk in numeric:
                return f"make_timestamp_ns(CAST({ls} AS BIGINT) + epoch_ns({rs}))"
            if op in ("==", "!=", "<", "<=", ">", ">="):
                if lk == "time" and rk in numeric:
                    ls = f"epoch_ns({ls})"
                elif rk == "time" and lk in numeric:
                    rs = f"epoch_ns({rs})"
        if op == "+" and (lk == "str" or rk == "str"):
            return f"({ls} || {rs})"
        if op in ("and", "or") and (lk != "bool" or rk != "bool"):
            pass  # DuckDB casts or rejects; keep SQL's rules
        return f"({ls} {_BIN_SQL[op]} {rs})"

    def expr_Call(self, e: Call) -> str:
        rule = getattr(self, "call_" + e.fn, None)
        if rule is None:
            raise OperationNotDefinedError(f"no SQL rule for function {e.fn}")
        return rule(*e.args)

    # -- functions ---------------------------------------------------------------------------------------------
    def call_now(self) -> str:
        return NOW_SQL

    def call_bin(self, x: Expr, size: Expr) -> str:
        if not isinstance(size, Duration | Lit) or not isinstance(getattr(size, "ns", getattr(size, "value", 0)),
                                                                  int):
            raise PxError("px.bin(column, size): size must be a duration such as px.seconds(10), or an int")
        n = size.ns if isinstance(size, Duration) else size.value
        if n <= 0:
            raise PxError("px.bin: the bin size must be positive")
        if self.kind(x) == "time":
            if n % 1000:
                return f"make_timestamp_ns(epoch_ns({self(x)}) // {n} * {n})"
            return f"time_bucket(INTERVAL {n // 1000} MICROSECOND, {self(x)})"
        return f"(CAST(floor({self(x)} / {n}) AS BIGINT) * {n})"

    def call_is_error(self) -> str:
        pred = error_sql_for(self.schema)
        if pred is None:
            raise PxError("px.is_error(df): df has no request outcome (resp_status, and grpc_status for HTTP)")
        return pred

    def call_contains(self, s: Expr, sub: Expr) -> str:
        return f"contains({self(s)}, {self(sub)})"

    def call_starts_with(self, s: Expr, prefix: Expr) -> str:
        return f"starts_with({self(s)}, {self(prefix)})"

    def call_regex_match(self, pattern: Expr, s: Expr) -> str:
        return f"regexp_full_match({self(s)}, {self(pattern)})"

    def call_isin(self, x: Expr, *values: Expr) -> str:
        if not values:
            return "FALSE"
        return f"({self(x)} IN ({', '.join(self(v) for v in values)}))"

    def call_isnull(self, x: Expr) -> str:
        return f"({self(x)} IS NULL)"

    def call_notnull(self, x: Expr) -> str:
        return f"({self(x)} IS NOT NULL)"

    def call_select(self, cond: Expr, a: Expr, b: Expr) -> str:
        return f"(CASE WHEN {self(cond)} THEN {self(a)} ELSE {self(b)} END)"

    def _normalize(self, x: Expr, rules: list[tuple[str, str, str]]) -> str:
        sql = self(x)
        for pattern, repl, flags in rules:
            sql = f"regexp_replace({sql}, {sql_literal(pattern)}, {sql_literal(repl)}, {sql_literal(flags)})"
        return f"trim({sql})"

    def call_normalize_mysql(self, x: Expr) -> str:
        return self._normalize(x, NORMALIZE_MYSQL)

    def call_normalize_pgsql(self, x: Expr) -> str:
        return self._normalize(x, NORMALIZE_PGSQL)

    def _pluck(self, x: Expr, key: Expr) -> str:
        if not isinstance(key, Lit) or not isinstance(key.value, str):
            raise PxError("px.pluck*: the key must be a string")
        if self.kind(x) == "struct":
            return f"struct_extract({self(x)}, {sql_literal(key.value)})"
        path = "$." + '"' + key.value.replace('"', '\\"') + '"'
        return f"json_extract_string({self(x)}, {sql_literal(path)})"

    def call_pluck(self, x: Expr, key: Expr) -> str:
        return f"CAST({self._pluck(x, key)} AS VARCHAR)"

    def call_pluck_float64(self, x: Expr, key: Expr) -> str:
        return f"CAST({self._pluck(x, key)} AS DOUBLE)"

    def call_pluck_int64(self, x: Expr, key: Expr) -> str:
        return f"CAST({self._pluck(x, key)} AS BIGINT)"

    def call_duration_nanos(self, x: Expr) -> str:
        return f"CAST({self(x)} AS BIGINT)"

    def call_int64(self, x: Expr) -> str:
        if self.kind(x) == "time":  # DuckDB has no TIMESTAMP_NS → BIGINT cast; ns since the epoch is the int
            return f"epoch_ns({self(x)})"
        return f"CAST({self(x)} AS BIGINT)"

    def call_coalesce(self, x: Expr, *instead: Expr) -> str:
        return f"coalesce({', '.join(self(a) for a in (x, *instead))})"

    def call_float64(self, x: Expr) -> str:
        return f"CAST({self(x)} AS DOUBLE)"

    def call_string(self, x: Expr) -> str:
        return f"CAST({self(x)} AS VARCHAR)"

    def call_length(self, x: Expr) -> str:
        return f"length({self(x)})"

    def call_tolower(self, x: Expr) -> str:
        return f"lower({self(x)})"

    def call_toupper(self, x: Expr) -> str:
        return f"upper({self(x)})"

    def call_substring(self, x: Expr, start: Expr, length: Expr) -> str:
        return f"substring({self(x)}, ({self(start)}) + 1, {self(length)})"

    def call_abs(self, x: Expr) -> str:
        return f"abs({self(x)})"

    def call_round(self, x: Expr, digits: Expr) -> str:
        return f"round({self(x)}, {self(digits)})"

    def call_log10(self, x: Expr) -> str:
        return f"log10({self(x)})"

    def call_strftime(self, x: Expr, fmt: Expr) -> str:
        return f"strftime({self(x)}, {self(fmt)})"


# -- aggregates ------------------------------------------------------------------------------------------------
def _quantile(q: Any) -> float:
    try:
        v = float(q)
    except (TypeError, ValueError):
        v = -1.0
    if not 0.0 <= v <= 1.0:
        raise PxError(f"px.quantiles: q must be between 0 and 1, not {q!r}")
    return v


def quantile_name(q: float) -> str:
    """The struct field px.quantiles names quantile q: 0.5 → p50, 0.01 → p01, 0.999 → p99.9."""
    pct = q * 100
    return f"p{round(pct):02d}" if abs(pct - round(pct)) < 1e-9 else f"p{pct:g}"


def compile_agg(spec: R.AggSpec, ec: ExprCompiler) -> str:
    col = quote(spec.column)
    kind = ec.schema.get(spec.column, "other")
    fn, args = spec.fn, spec.args
    if fn == "count":
        return f"count({col})"
    if fn == "size":
        return "count(*)"
    if fn == "sum":
        if kind in ("bool", "int"):  # BIGINT, not DuckDB's HUGEINT (which pandas would see as objects)
            return f"CAST(sum({col}) AS BIGINT)"
        return f"sum({col})"
    if fn == "mean":
        return f"avg(CAST({col} AS DOUBLE))" if kind == "bool" else f"avg({col})"
    if fn in ("min", "max"):
        return f"{fn}({col})"
    if fn == "any":
        return f"any_value({col})"
    if fn == "count_distinct":
        return f"count(DISTINCT {col})"
    if fn == "stddev":
        return f"stddev_samp({col})"
    if fn == "rate":
        if kind != "time":
            raise PxError(f"px.rate: give a time column, e.g. ('time_', px.rate), not {spec.column!r}")
        return rules.rate_sql("count(*)", col)
    if fn == "quantiles":
        if args and not isinstance(args[0], list | tuple):
            return f"quantile_cont({col}, {_quantile(args[0])!r})"
        # a struct of the quantiles asked for, from one quantile_cont (each quantile is a selection pass over the
        # group's values, so asking for fewer is cheaper)
        wanted = [(quantile_name(q), q) for q in map(_quantile, args[0])] if args else list(QUANTILES)
        if not wanted or len({n for n, _ in wanted}) < len(wanted):
            raise PxError("px.quantiles: give a list of different quantiles, e.g. [0.5, 0.9, 0.99]")
        qs = ", ".join(repr(q) for _, q in wanted)
        agg = f"quantile_cont({col}, [{qs}]::DOUBLE[])"
        fields = ", ".join(f"{sql_literal(n)}: {agg}[{i}]" for i, (n, _) in enumerate(wanted, 1))
        return "{" + fields + "}"
    if fn == "fraction":
        if args:
            pred = args[0]
            if not isinstance(pred, R.Predicate):
                raise PxError("px.fraction: the second argument must be a predicate such as px.gt, px.eq")
            if len(args) < 2:
                raise PxError(f"px.fraction: px.{pred.name} needs a value, e.g. (col, px.fraction, px.gt, 499)")
            cond = ec(BinOp(pred.op, Col(spec.column), Lit(args[1])))
        else:
            cond = col
        return f"avg(CASE WHEN {cond} THEN 1.0 ELSE 0.0 END)"
    raise OperationNotDefinedError(f"no SQL rule for aggregate {fn}")


# -- relations -------------------------------------------------------------------------------------------------
class Compiler:
    """Compiles a relation tree to one SQL query made of CTEs."""

    def __init__(self) -> None:
        self.ctes: list[tuple[str, str]] = []
        self._memo: dict[int, tuple[str, tuple]] = {}

    def compile(self, rel: R.Relation) -> str:
        name, order = self.visit(rel)
        body = f"SELECT * FROM {name}"
        if order:
            body += " ORDER BY " + _order_sql(order)
        if not self.ctes:
            return body
        ctes = ",\n".join(f"{n} AS (\n  {sql}\n)" for n, sql in self.ctes)
        return f"WITH {ctes}\n{body}"

    def emit(self, sql: str) -> str:
        name = f"t{len(self.ctes)}"
        self.ctes.append((name, sql))
        return name

    def visit(self, rel: R.Relation) -> tuple[str, tuple]:
        key = id(rel)
        if key in self._memo:  # the same sub-relation used twice (self-join) is one CTE
            return self._memo[key]
        rule = getattr(self, "visit_" + type(rel).__name__, None)
        if rule is None:
            raise OperationNotDefinedError(f"no SQL rule for relation {type(rel).__name__}")
        out = rule(rel)
        self._memo[key] = out
        return out

    def visit_Source(self, r: R.Source) -> tuple[str, tuple]:
        cols = "*" if r.select is None else ", ".join(quote(c) for c in r.select)
        where = []
        if r.start_ns is not None:
            where.append(f"time_ >= {_time_sql(r.start_ns)}")
        if r.end_ns is not None:
            where.append(f"time_ < {_time_sql(r.end_ns)}")
        sql = f"SELECT {cols} FROM {quote(r.table)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return self.emit(sql), ()

    def visit_Filter(self, r: R.Filter) -> tuple[str, tuple]:
        src, order = self.visit(r.parent)
        pred = ExprCompiler(r.parent.schema)(r.predicate)
        return self.emit(f"SELECT * FROM {src} WHERE {pred}"), order

    def visit_Assign(self, r: R.Assign) -> tuple[str, tuple]:
        src, order = self.visit(r.parent)
        value = ExprCompiler(r.parent.schema)(r.expr)
        if r.name in r.parent.schema:
            sql = f"SELECT * REPLACE ({value} AS {quote(r.name)}) FROM {src}"
            order = tuple(o for o in order if o[0] != r.name)
        else:
            sql = f"SELECT *, {value} AS {quote(r.name)} FROM {src}"
        return self.emit(sql), order

    def visit_Project(self, r: R.Project) -> tuple[str, tuple]:
        src, order = self.visit(r.parent)
        cols = ", ".join(quote(c) for c in r.cols)
        return self.emit(f"SELECT {cols} FROM {src}"), tuple(o for o in order if o[0] in r.cols)

    def visit_Drop(self, r: R.Drop) -> tuple[str, tuple]:
        src, order = self.visit(r.parent)
        cols = ", ".join(quote(c) for c in r.cols)
        return self.emit(f"SELECT * EXCLUDE ({cols}) FROM {src}"), tuple(o for o in order if o[0] not in r.cols)

    def visit_Head(self, r: R.Head) -> tuple[str, tuple]:
        src, order = self.visit(r.parent)
        ob = f" ORDER BY {_order_sql(order)}" if order else ""
        return self.emit(f"SELECT * FROM {src}{ob} LIMIT {int(r.n)}"), order

    def visit_Sort(self, r: R.Sort) -> tuple[str, tuple]:
        src, _ = self.visit(r.parent)
        return src, tuple(zip(r.by, r.ascending, strict=True))

    def visit_Aggregate(self, r: R.Aggregate) -> tuple[str, tuple]:
        src, _ = self.visit(r.parent)
        ec = ExprCompiler(r.parent.schema)
        items = [quote(c) for c in r.by] + [f"{compile_agg(s, ec)} AS {quote(s.name)}" for s in r.aggs]
        sql = f"SELECT {', '.join(items)} FROM {src}"
        if r.by:
            sql += " GROUP BY " + ", ".join(quote(c) for c in r.by)
        return self.emit(sql), ()

    def visit_Join(self, r: R.Join) -> tuple[str, tuple]:
        left, _ = self.visit(r.left)
        right, _ = self.visit(r.right)
        how = {"inner": "INNER", "left": "LEFT", "right": "RIGHT", "outer": "FULL OUTER"}[r.how]
        on = " AND ".join(f"l.{quote(a)} = r.{quote(b)}" for a, b in zip(r.left_on, r.right_on, strict=True))
        items = []
        for out, side, col in r.plan():
            if side == "coalesce":
                items.append(f"COALESCE(l.{quote(col)}, r.{quote(col)}) AS {quote(out)}")
            else:
                items.append(f"{side}.{quote(col)} AS {quote(out)}")
        return self.emit(f"SELECT {', '.join(items)} FROM {left} AS l {how} JOIN {right} AS r ON {on}"), ()

    def visit_Union(self, r: R.Union) -> tuple[str, tuple]:
        names = [self.visit(p)[0] for p in r.parts]
        cols = ", ".join(quote(c) for c in r.schema)
        return self.emit(" UNION ALL BY NAME ".join(f"SELECT {cols} FROM {n}" for n in names)), ()


def _order_sql(order: tuple) -> str:
    return ", ".join(f"{quote(c)} {'ASC' if asc else 'DESC'} NULLS LAST" for c, asc in order)


def _time_sql(t: int | str | R.Ago) -> str:
    """Absolute ns → literal; relative (R.Ago, from '-5m') → now() minus it, as every window is (rules)."""
    if isinstance(t, R.Ago):
        return since_sql(t.ns)
    if isinstance(t, str):
        return f"CAST({sql_literal(t)} AS TIMESTAMP_NS)"
    return f"make_timestamp_ns({t})"


def to_sql(rel: R.Relation) -> str:
    return Compiler().compile(rel)
