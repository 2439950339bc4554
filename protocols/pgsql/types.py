"""PostgreSQL v3 wire-protocol constants and the objects the stitcher keeps per connection."""

from __future__ import annotations

import operator
import re
from collections.abc import Sequence

TABLE = "pgsql_events"

# The startup packet has no type byte: length (4), then a code saying what it is.
PROTOCOL_3_0 = 196608  # StartupMessage, protocol 3.0
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
STARTUP_CODES = frozenset({PROTOCOL_3_0, SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST})
MAX_STARTUP = 10_000  # the server's own limit on a startup packet

HEADER = 5  # every other message: type byte, then its length (4, counting itself)
PLAUSIBLE_MAX_LENGTH = 1 << 30  # a longer message is not PostgreSQL (the server's limit is 1 GiB)

# Frontend (request side) message types.
F_QUERY, F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE = ord("Q"), ord("P"), ord("B"), ord("D"), ord("E")
F_SYNC, F_FLUSH, F_CLOSE, F_TERMINATE, F_PASSWORD = ord("S"), ord("H"), ord("C"), ord("X"), ord("p")
F_FUNCTION_CALL, F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL = ord("F"), ord("d"), ord("c"), ord("f")
FRONTEND_TYPES = frozenset({
    F_QUERY, F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE, F_SYNC, F_FLUSH, F_CLOSE, F_TERMINATE, F_PASSWORD,
    F_FUNCTION_CALL, F_COPY_DATA, F_COPY_DONE, F_COPY_FAIL,
})  # fmt: skip

# The longest message of each type a peer accepts, length word included: what the server reads
# (PostgreSQL 14 on: 1 GiB for messages that carry SQL, values or COPY data, 10000 bytes for the
# others, 64 KiB for a password or SASL token) and what libpq reads (30000 bytes, except for the
# types that carry rows, errors and notices). A longer length means we lost the boundary.
LARGE_MESSAGE = (1 << 30) - 2
SMALL_MESSAGE = 10_000
AUTH_TOKEN = 65_535
CLIENT_SMALL_MESSAGE = 30_000

# Backend (response side) message types.
B_AUTH, B_PARAM_STATUS, B_KEY_DATA, B_READY = ord("R"), ord("S"), ord("K"), ord("Z")
B_ROW_DESC, B_DATA_ROW, B_COMPLETE, B_ERROR, B_NOTICE = ord("T"), ord("D"), ord("C"), ord("E"), ord("N")
B_PARSE_COMPLETE, B_BIND_COMPLETE, B_CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
B_PARAM_DESC, B_NO_DATA, B_SUSPENDED, B_EMPTY = ord("t"), ord("n"), ord("s"), ord("I")
B_FUNCTION_RESULT, B_COPY_DATA, B_COPY_DONE = ord("V"), ord("d"), ord("c")
B_NOTIFICATION, B_COPY_IN, B_COPY_OUT, B_COPY_BOTH = ord("A"), ord("G"), ord("H"), ord("W")
B_NEGOTIATE_VERSION = ord("v")
BACKEND_TYPES = frozenset({
    B_AUTH, B_PARAM_STATUS, B_KEY_DATA, B_READY, B_ROW_DESC, B_DATA_ROW, B_COMPLETE, B_ERROR, B_NOTICE,
    B_PARSE_COMPLETE, B_BIND_COMPLETE, B_CLOSE_COMPLETE, B_PARAM_DESC, B_NO_DATA, B_SUSPENDED, B_EMPTY,
    B_FUNCTION_RESULT, B_COPY_DATA, B_COPY_DONE, B_NOTIFICATION, B_COPY_IN, B_COPY_OUT, B_COPY_BOTH,
    B_NEGOTIATE_VERSION,
})  # fmt: skip
REQUEST_MAX_LENGTH: tuple[int, ...] = tuple(
    LARGE_MESSAGE if t in (F_QUERY, F_PARSE, F_BIND, F_FUNCTION_CALL, F_COPY_DATA)
    else AUTH_TOKEN if t == F_PASSWORD
    else SMALL_MESSAGE
    for t in range(256)
)  # fmt: skip
RESPONSE_MAX_LENGTH: tuple[int, ...] = tuple(
    LARGE_MESSAGE if t in (B_ROW_DESC, B_DATA_ROW, B_COPY_DATA, B_FUNCTION_RESULT, B_ERROR, B_NOTICE, B_NOTIFICATION)
    else CLIENT_SMALL_MESSAGE
    for t in range(256)
)  # fmt: skip
# Messages that only answer queries: seen while logging in, they mean the login's end was lost.
QUERY_RESULTS = frozenset({
    B_ROW_DESC, B_DATA_ROW, B_COMPLETE, B_PARSE_COMPLETE, B_BIND_COMPLETE, B_CLOSE_COMPLETE, B_PARAM_DESC,
    B_NO_DATA, B_SUSPENDED, B_EMPTY, B_FUNCTION_RESULT,
})  # fmt: skip
READY_STATUSES = frozenset(b"ITE")  # ReadyForQuery: idle, in a transaction, in a failed transaction
# CommandComplete tags of commands that return rows: their record counts rows even when none came.
ROW_TAGS = ("SELECT", "FETCH", "SHOW")

# Describe and Close name a prepared statement or a portal.
TARGET_STATEMENT, TARGET_PORTAL = ord("S"), ord("P")

# ErrorResponse field codes.
ERR_SEVERITY, ERR_SEVERITY_UNLOCALIZED, ERR_CODE, ERR_MESSAGE = ord("S"), ord("V"), ord("C"), ord("M")

# Binary NUMERIC: the sign word, and JSONB: the version byte before the text.
NUMERIC_POS, NUMERIC_NEG, NUMERIC_NAN = 0x0000, 0x4000, 0xC000
JSONB_VERSION = 1

# What a request message waits for. OP_JOIN is a message that joins the request being assembled
# yet awaits no answer (Flush, CopyData, one we cannot read); the kinds after it end that request.
OP_PARSE, OP_BIND, OP_DESCRIBE, OP_CLOSE, OP_JOIN, OP_QUERY, OP_EXECUTE, OP_SYNC, OP_CALL = range(9)
OP_NAMES = ("PARSE", "BIND", "DESCRIBE", "CLOSE", "JOIN", "QUERY", "EXECUTE", "SYNC", "FUNCTION_CALL")

# Type OIDs of parameters we render.
OID_BOOL, OID_BYTEA, OID_NAME, OID_INT8, OID_INT2, OID_INT4, OID_TEXT, OID_OID = 16, 17, 19, 20, 21, 23, 25, 26
OID_JSON, OID_FLOAT4, OID_FLOAT8, OID_UNKNOWN, OID_BPCHAR, OID_VARCHAR = 114, 700, 701, 705, 1042, 1043
OID_DATE, OID_TIME, OID_TIMESTAMP, OID_TIMESTAMPTZ, OID_NUMERIC, OID_UUID, OID_JSONB = (
    1082, 1083, 1114, 1184, 1700, 2950, 3802,
)  # fmt: skip
NUMERIC_OIDS = frozenset({OID_INT2, OID_INT4, OID_INT8, OID_OID, OID_FLOAT4, OID_FLOAT8, OID_NUMERIC})


class Statement:
    """A prepared statement: its SQL and parameter type OIDs (from Parse, then ParameterDescription)."""

    __slots__ = ("sql", "oids", "template")

    def __init__(self, sql: str, oids: tuple[int, ...] = ()) -> None:
        self.sql = sql
        self.oids = oids  # a tuple: part of the key renderers are cached by
        self.template: Template | None = None  # SQL cut at its placeholders, built on first use

    def __repr__(self) -> str:
        return f"Statement({self.sql!r}, {self.oids!r})"


_DOLLAR = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|/\*.*?\*/|\$(\d+)", re.S)


def template(sql: str) -> list[str | int]:
    """``sql`` cut into literal text and 0-based parameter indexes, placeholders in quotes and comments left."""
    out: list[str | int] = []
    last = 0
    for m in _DOLLAR.finditer(sql):
        n = m.group(1)
        if n is None:
            continue
        out.append(sql[last : m.start()])
        out.append(int(n) - 1)
        last = m.end()
    out.append(sql[last:])
    return out


def fill(parts: list[str | int], values: Sequence[str]) -> str:
    n = len(values)
    return "".join([p if p.__class__ is str else values[p] if 0 <= p < n else f"${p + 1}" for p in parts])


class Template:
    """SQL cut at its placeholders, compiled once per distinct SQL text and filled per Execute."""

    __slots__ = ("parts", "fmt", "top", "count", "pick", "renderers")

    def __init__(self, sql: str) -> None:
        parts = template(sql)
        self.parts = parts
        # (OIDs, formats, count, one renderer per value) of its last fill: kept by the stitcher
        self.renderers: tuple | None = None
        indexes = [p for p in parts if p.__class__ is int and p >= 0]
        # the highest parameter index, -1 for none: with values up to it, % fills them all at once
        self.top = max(indexes, default=-1)
        # the number of values when the placeholders are $1..$n, each once and in order (the
        # usual case): % then takes the values as they come, -1 otherwise
        self.count = len(indexes) if indexes == list(range(len(indexes))) else -1
        # a %-format string, one %s per placeholder; '$0' can never be filled, so it stays text
        self.fmt = "".join(
            [p.replace("%", "%%") if p.__class__ is str else "%s" if p >= 0 else f"${p + 1}" for p in parts]
        )
        # the values in placeholder order (one index gives a bare str, which % takes as its one argument)
        self.pick = operator.itemgetter(*indexes) if indexes else None

    def fill(self, values: Sequence[str]) -> str:
        if self.top < len(values):
            return self.fmt % self.pick(values) if self.pick is not None else self.fmt % ()
        return fill(self.parts, values)  # placeholders with no value stay '$n'


# A bound portal: (statement, format codes, values). A tuple, not a class: one is made per
# Bind, and calling a class's __init__ costs as much as all the rest of a Bind's bookkeeping.
Portal = tuple[Statement, tuple[int, ...], list[bytes | None]]


# A pending op: one frontend message awaiting its answer (and, for a Query, an Execute or a
# FunctionCall, the record in progress). A list, not a class, for the reason Portal is a tuple:
# one is made for most request messages, and making and freeing an object of a slotted class
# costs three times what a list does. Its items, by index:
KIND = 0  # OP_*
TS = 1  # first byte of the request it belongs to: None until queued, -1 for an op all share
SQL = 2  # what its record shows as its SQL (a Query's, a Parse's, what stands for an unknown portal)
PORTAL = 3  # an Execute's portal (None: bound before the capture)
NAME = 4  # a Describe's statement name (None: a Describe of a portal)
ROWS = 5  # DataRows (or CopyData) of its answer so far
RETURNS_ROWS = 6  # its answer said rows come (RowDescription), however many did
TAGS = 7  # a Query's CommandComplete tags, or what stands for them; None before any
ERROR = 8  # (SQLSTATE, message) of a Query's or a FunctionCall's first error, or None
Op = list


def new_op(
    kind: int, sql: str = "", portal: Portal | None = None, name: bytes | None = None, ts: int | None = None
) -> Op:
    """An op of ``kind``; ``ts`` is left None for the queue to set, but for an op all share (-1)."""
    return [kind, ts, sql, portal, name, 0, False, None, None]
