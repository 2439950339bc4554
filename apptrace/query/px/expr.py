"""Column expressions: immutable nodes built with Python operators, compiled later by `apptrace.query.px.compiler`.

A node never holds data. `df.latency / 1000 > 5` builds BinOp(">", BinOp("/", Col("latency"), Lit(1000)),
Lit(5)). `and`/`or`/`not` cannot be overloaded in Python: use `&`, `|` and `~`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


class PxError(Exception):
    """A mistake in a px script: unknown table or column, wrong argument. The message is one line."""


@dataclass(frozen=True, eq=False)
class Expr:
    """Base of all expression nodes. Operators build new nodes; nothing is evaluated."""

    def _bin(self, op: str, other: Any, reverse: bool = False) -> BinOp:
        o = lift(other)
        return BinOp(op, o, self) if reverse else BinOp(op, self, o)

    def __add__(self, o: Any) -> BinOp: return self._bin("+", o)
    def __radd__(self, o: Any) -> BinOp: return self._bin("+", o, True)
    def __sub__(self, o: Any) -> BinOp: return self._bin("-", o)
    def __rsub__(self, o: Any) -> BinOp: return self._bin("-", o, True)
    def __mul__(self, o: Any) -> BinOp: return self._bin("*", o)
    def __rmul__(self, o: Any) -> BinOp: return self._bin("*", o, True)
    def __truediv__(self, o: Any) -> BinOp: return self._bin("/", o)
    def __rtruediv__(self, o: Any) -> BinOp: return self._bin("/", o, True)
    def __floordiv__(self, o: Any) -> BinOp: return self._bin("//", o)
    def __rfloordiv__(self, o: Any) -> BinOp: return self._bin("//", o, True)
    def __mod__(self, o: Any) -> BinOp: return self._bin("%", o)
    def __rmod__(self, o: Any) -> BinOp: return self._bin("%", o, True)
    def __eq__(self, o: Any) -> BinOp: return self._bin("==", o)  # type: ignore[override]
    def __ne__(self, o: Any) -> BinOp: return self._bin("!=", o)  # type: ignore[override]
    def __lt__(self, o: Any) -> BinOp: return self._bin("<", o)
    def __le__(self, o: Any) -> BinOp: return self._bin("<=", o)
    def __gt__(self, o: Any) -> BinOp: return self._bin(">", o)
    def __ge__(self, o: Any) -> BinOp: return self._bin(">=", o)
    def __and__(self, o: Any) -> BinOp: return self._bin("and", o)
    def __rand__(self, o: Any) -> BinOp: return self._bin("and", o, True)
    def __or__(self, o: Any) -> BinOp: return self._bin("or", o)
    def __ror__(self, o: Any) -> BinOp: return self._bin("or", o, True)
    def __invert__(self) -> Unary: return Unary("not", self)
    def __neg__(self) -> Unary: return Unary("neg", self)

    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise PxError("a px expression has no truth value: use & | ~ instead of and/or/not, "
                      "and px.select(cond, a, b) instead of if")

    def children(self) -> tuple[Expr, ...]:
        return ()

    def walk(self) -> Iterator[Expr]:
        yield self
        for c in self.children():
            yield from c.walk()

    def columns(self) -> set[str]:
        return {e.name for e in self.walk() if isinstance(e, Col)}

    # a few pandas-style string helpers
    def contains(self, sub: Any) -> Call:
        return Call("contains", (self, lift(sub)))

    def startswith(self, prefix: Any) -> Call:
        return Call("starts_with", (self, lift(prefix)))

    def isin(self, values: Any) -> Call:
        return Call("isin", (self, *[lift(v) for v in values]))

    def isnull(self) -> Call:
        return Call("isnull", (self,))

    def notnull(self) -> Call:
        return Call("notnull", (self,))


@dataclass(frozen=True, eq=False)
class Col(Expr):
    name: str

    def __repr__(self) -> str:
        return f"Col({self.name!r})"


@dataclass(frozen=True, eq=False)
class Lit(Expr):
    value: Any

    def __repr__(self) -> str:
        return f"Lit({self.value!r})"


@dataclass(frozen=True, eq=False)
class Duration(Expr):
    """A length of time in nanoseconds (px.minutes(5) …). An int ns, or an interval next to a timestamp."""

    ns: int


@dataclass(frozen=True, eq=False)
class BinOp(Expr):
    op: str
    left: Expr
    right: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.left, self.right)


@dataclass(frozen=True, eq=False)
class Unary(Expr):
    op: str
    operand: Expr

    def children(self) -> tuple[Expr, ...]:
        return (self.operand,)


@dataclass(frozen=True, eq=False)
class Call(Expr):
    """A scalar function; `fn` is a name the compiler has a rule for."""

    fn: str
    args: tuple[Expr, ...]

    def children(self) -> tuple[Expr, ...]:
        return self.args


def lift(v: Any) -> Expr:
    """Python values become literals; expressions pass through."""
    if isinstance(v, Expr):
        return v
    if isinstance(v, list | tuple | set | dict) or callable(v):
        raise PxError(f"cannot use {type(v).__name__} {v!r} in a px expression")
    return Lit(v)


# -- types -----------------------------------------------------------------------------------------------------
# Column types are kept as coarse kinds: time, int, float, str, bool, struct, list, interval, other.

def kind_of(duckdb_type: str) -> str:
    t = duckdb_type.upper()
    if t.startswith("TIMESTAMP") or t == "DATE":
        return "time"
    if t.startswith("STRUCT"):
        return "struct"
    if t.endswith("[]") or t.startswith("LIST") or t.startswith("MAP"):
        return "list"
    if t in {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "UBIGINT", "UHUGEINT"}:
        return "int"
    if t in {"DOUBLE", "FLOAT", "REAL"} or t.startswith("DECIMAL"):
        return "float"
    if t in {"VARCHAR", "JSON", "UUID"} or t.startswith("VARCHAR"):
        return "str"
    if t == "BOOLEAN":
        return "bool"
    if t == "INTERVAL":
        return "interval"
    return "other"


_CALL_KINDS = {
    "contains": "bool", "starts_with": "bool", "regex_match": "bool", "isin": "bool", "isnull": "bool",
    "notnull": "bool", "normalize_mysql": "str", "normalize_pgsql": "str", "pluck": "str",
    "pluck_float64": "float", "pluck_int64": "int", "length": "int", "tolower": "str", "toupper": "str",
    "substring": "str", "now": "time", "duration_nanos": "int", "int64": "int", "float64": "float",
    "string": "str", "is_error": "bool", "abs": None, "round": "float", "log10": "float", "strftime": "str",
}


def infer(e: Expr, schema: dict[str, str]) -> str:
    """The kind of value `e` produces over a relation whose columns have the kinds in `schema`."""
    if isinstance(e, Col):
        return schema.get(e.name, "other")
    if isinstance(e, Duration):
        return "int"
    if isinstance(e, Lit):
        v = e.value
        if isinstance(v, bool):
            return "bool"
        if isinstance(v, int):
            return "int"
        if isinstance(v, float):
            return "float"
        if isinstance(v, str):
            return "str"
        if v is None:
            return "null"
        import datetime as _dt

        if isinstance(v, _dt.datetime) or (hasattr(v, "value") and hasattr(v, "tz_localize")):
            return "time"
        return "other"
    if isinstance(e, Unary):
        return "bool" if e.op == "not" else infer(e.operand, schema)
    if isinstance(e, BinOp):
        if e.op in {"==", "!=", "<", "<=", ">", ">=", "and", "or"}:
            return "bool"
        lk, rk = infer(e.left, schema), infer(e.right, schema)
        if e.op == "-" and lk == "time" and rk == "time":
            return "int"
        if "time" in (lk, rk) and e.op in {"+", "-"}:
            return "time"
        if e.op == "+" and "str" in (lk, rk):
            return "str"
        if e.op == "/":
            return "float"
        if "float" in (lk, rk):
            return "float"
        return "int" if lk in ("int", "bool") and rk in ("int", "bool") else lk
    if isinstance(e, Call):
        if e.fn == "bin":
            return infer(e.args[0], schema)
        if e.fn == "select":
            k = infer(e.args[1], schema)
            return k if k != "null" else infer(e.args[2], schema)
        if e.fn == "abs":
            return infer(e.args[0], schema)
        if e.fn == "coalesce":  # the kind of its first argument that is not a bare NULL
            return next((k for k in (infer(a, schema) for a in e.args) if k != "null"), "null")
        return _CALL_KINDS.get(e.fn) or "other"
    return "other"


# -- type checks -------------------------------------------------------------------------------------------------
# Done when an expression joins a frame, so that the mistake is reported on the script's own line, in px's terms,
# rather than by DuckDB at px.display, in the terms of SQL it never wrote.

_KIND_WORDS = {"str": "text", "int": "a number", "float": "a number", "bool": "true/false", "time": "a time",
               "interval": "an interval"}
_ARITHMETIC = {"+", "-", "*", "/", "//", "%"}
_COMPARISONS = {"==", "!=", "<", "<=", ">", ">="}
_NUMBERS = {"int", "float", "bool"}


def show(e: Expr) -> str:
    """An expression as a script would write it: df.latency / 1000, px.string(df.resp_status)."""
    if isinstance(e, Col):
        return f"df.{e.name}" if e.name.isidentifier() else f"df[{e.name!r}]"
    if isinstance(e, Lit):
        return repr(e.value)
    if isinstance(e, Duration):
        return f"px.nanoseconds({e.ns})"
    if isinstance(e, BinOp):
        op = {"and": "&", "or": "|"}.get(e.op, e.op)
        return f"({show(e.left)} {op} {show(e.right)})"
    if isinstance(e, Unary):
        return f"~{show(e.operand)}" if e.op == "not" else f"-{show(e.operand)}"
    if isinstance(e, Call):
        return f"px.{e.fn}({', '.join(show(a) for a in e.args)})"
    return type(e).__name__


def _what(e: Expr, kind: str) -> str:
    return f"{show(e)} ({_KIND_WORDS.get(kind, kind)})"


def check_types(e: Expr, schema: dict[str, str]) -> str:
    """The kind of ``e``, after checking that every operator in it is given values it can take (PxError if not)."""
    for child in e.children():
        check_types(child, schema)
    if isinstance(e, BinOp):
        lk, rk = infer(e.left, schema), infer(e.right, schema)
        both = (lk, rk)
        if e.op in _ARITHMETIC and "str" in both and both != ("str", "str"):
            hint = " (px.string(x) makes text of a number)" if e.op == "+" else ""
            raise PxError(f"type error: cannot compute {_what(e.left, lk)} {e.op} {_what(e.right, rk)}{hint}")
        if e.op in _COMPARISONS and "str" in both and ({lk, rk} & _NUMBERS):
            raise PxError(f"type error: cannot compare {_what(e.left, lk)} with {_what(e.right, rk)}")
        if e.op in ("and", "or"):
            for side, k in ((e.left, lk), (e.right, rk)):
                if k in ("int", "float", "str", "time"):
                    raise PxError(f"type error: {'&' if e.op == 'and' else '|'} joins conditions, and "
                                  f"{_what(side, k)} is not one (compare it: x > 0, x == 'a')")
    elif isinstance(e, Unary):
        k = infer(e.operand, schema)
        if e.op == "not" and k in ("int", "float", "str", "time"):
            raise PxError(f"type error: ~ negates a condition, and {_what(e.operand, k)} is not one")
        if e.op == "neg" and k == "str":
            raise PxError(f"type error: cannot negate {_what(e.operand, k)}")
    return infer(e, schema)
