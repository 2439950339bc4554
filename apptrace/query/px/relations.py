"""Relation nodes: immutable steps of a px query (source, filter, assign, project, aggregate, join, …).

Each node knows its output columns and their kinds (`schema`), computed when it is built, so a script that names a
missing column fails on its own line, before any SQL runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from apptrace.query.px.expr import Expr, PxError


def no_such_column(name: str, available: Any, what: str = "column") -> PxError:
    return PxError(f"unknown {what} {name!r}; available: {', '.join(available)}")


def check_columns(names: Any, schema: dict[str, str]) -> None:
    for n in names:
        if n not in schema:
            raise no_such_column(n, schema)


@dataclass(frozen=True, eq=False)
class Relation:
    @cached_property
    def schema(self) -> dict[str, str]:  # column → kind
        raise NotImplementedError


@dataclass(frozen=True)
class Ago:
    """A time ``ns`` nanoseconds before the query runs (start_time='-5m'). Its own type, not a negative int,
    because a window of zero ('-0s', px.seconds(0)) must mean "now", not the epoch."""

    ns: int


@dataclass(frozen=True, eq=False)
class Source(Relation):
    table: str
    table_schema: tuple[tuple[str, str], ...]
    select: tuple[str, ...] | None = None
    start_ns: int | str | Ago | None = None  # int: ns since the epoch; str: an ISO time
    end_ns: int | str | Ago | None = None

    @cached_property
    def schema(self) -> dict[str, str]:
        full = dict(self.table_schema)
        if self.select is None:
            return full
        return {c: full[c] for c in self.select}


@dataclass(frozen=True, eq=False)
class Filter(Relation):
    parent: Relation
    predicate: Expr

    @cached_property
    def schema(self) -> dict[str, str]:
        return self.parent.schema


@dataclass(frozen=True, eq=False)
class Assign(Relation):
    parent: Relation
    name: str
    expr: Expr
    kind: str = "other"

    @cached_property
    def schema(self) -> dict[str, str]:
        return {**self.parent.schema, self.name: self.kind}


@dataclass(frozen=True, eq=False)
class Project(Relation):
    parent: Relation
    cols: tuple[str, ...]

    @cached_property
    def schema(self) -> dict[str, str]:
        return {c: self.parent.schema[c] for c in self.cols}


@dataclass(frozen=True, eq=False)
class Drop(Relation):
    parent: Relation
    cols: tuple[str, ...]

    @cached_property
    def schema(self) -> dict[str, str]:
        return {c: k for c, k in self.parent.schema.items() if c not in self.cols}


@dataclass(frozen=True, eq=False)
class Head(Relation):
    parent: Relation
    n: int

    @cached_property
    def schema(self) -> dict[str, str]:
        return self.parent.schema


@dataclass(frozen=True, eq=False)
class Sort(Relation):
    parent: Relation
    by: tuple[str, ...]
    ascending: tuple[bool, ...]

    @cached_property
    def schema(self) -> dict[str, str]:
        return self.parent.schema


@dataclass(frozen=True)
class Predicate:
    """px.gt, px.eq …: usable as `px.gt(a, b)` and as the predicate of px.fraction."""

    name: str
    op: str

    def __call__(self, a: Any, b: Any) -> Any:
        from apptrace.query.px.expr import lift

        return lift(a)._bin(self.op, b)

    def __repr__(self) -> str:
        return f"px.{self.name}"


@dataclass(frozen=True)
class AggFunc:
    """px.count, px.mean, px.quantiles …: named in agg(name=(column, fn, *args))."""

    name: str

    def __repr__(self) -> str:
        return f"px.{self.name}"


@dataclass(frozen=True)
class AggSpec:
    name: str
    column: str
    fn: str
    args: tuple = ()

    @property
    def kind(self) -> str:
        return {"count": "int", "size": "int", "count_distinct": "int", "mean": "float", "fraction": "float", "stddev": "float",
                "rate": "float",
                "quantiles": "float" if self.args and not isinstance(self.args[0], list | tuple) else "struct"}.get(self.fn, "")


@dataclass(frozen=True, eq=False)
class Aggregate(Relation):
    parent: Relation
    by: tuple[str, ...]
    aggs: tuple[AggSpec, ...]

    @cached_property
    def schema(self) -> dict[str, str]:
        out = {c: self.parent.schema[c] for c in self.by}
        for s in self.aggs:
            out[s.name] = s.kind or self.parent.schema.get(s.column, "other")
        return out


@dataclass(frozen=True, eq=False)
class Join(Relation):
    left: Relation
    right: Relation
    how: str
    left_on: tuple[str, ...]
    right_on: tuple[str, ...]
    suffixes: tuple[str, str] = ("_x", "_y")
    _plan: list = field(default_factory=list, repr=False)

    def plan(self) -> list[tuple[str, str, str]]:
        """(output name, side 'l'/'r'/'coalesce', input column) per output column — pandas' merge naming."""
        if self._plan:
            return self._plan
        lcols, rcols = list(self.left.schema), list(self.right.schema)
        shared_keys = {a for a, b in zip(self.left_on, self.right_on, strict=True) if a == b}
        overlap = (set(lcols) & set(rcols)) - shared_keys
        plan = []
        for c in lcols:
            if c in shared_keys:
                side = {"inner": "l", "left": "l", "right": "r", "outer": "coalesce"}[self.how]
                plan.append((c, side, c))
            else:
                plan.append((c + self.suffixes[0] if c in overlap else c, "l", c))
        for c in rcols:
            if c in shared_keys:
                continue
            plan.append((c + self.suffixes[1] if c in overlap else c, "r", c))
        names = [p[0] for p in plan]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise PxError(f"merge would produce duplicate columns {sorted(dup)}; pick other suffixes")
        self._plan.extend(plan)
        return self._plan

    @cached_property
    def schema(self) -> dict[str, str]:
        out = {}
        for name, side, col in self.plan():
            out[name] = (self.right if side == "r" else self.left).schema[col]
        return out


@dataclass(frozen=True, eq=False)
class Union(Relation):
    parts: tuple[Relation, ...]

    @cached_property
    def schema(self) -> dict[str, str]:
        return self.parts[0].schema


def sources(rel: Relation) -> list[Source]:
    """The tables a relation reads, each as its Source (with its window), in the order they appear."""
    if isinstance(rel, Source):
        return [rel]
    out: list[Source] = []
    for child in (getattr(rel, "parent", None), getattr(rel, "left", None), getattr(rel, "right", None),
                  *getattr(rel, "parts", ())):
        if isinstance(child, Relation):
            out += sources(child)
    return out
