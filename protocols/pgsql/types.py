"""PostgreSQL v3 wire-protocol constants and the objects the stitcher keeps per connection."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .parse import Template

TABLE = "pgsql_events"

PROTOCOL_3_0 = 196608
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102

# Frontend (request side) message types we act on.
F_QUERY, F_PARSE, F_BIND, F_DESCRIBE, F_EXECUTE = ord("Q"), ord("P"), ord("B"), ord("D"), ord("E")
F_SYNC, F_FLUSH, F_CLOSE, F_TERMINATE, F_PASSWORD = ord("S"), ord("H"), ord("C"), ord("X"), ord("p")
F_FUNCTION_CALL = ord("F")
FRONTEND_TYPES = frozenset(b"QPBDESHCXpFdcf")

# Backend (response side) message types.
B_AUTH, B_PARAM_STATUS, B_KEY_DATA, B_READY = ord("R"), ord("S"), ord("K"), ord("Z")
B_ROW_DESC, B_DATA_ROW, B_COMPLETE, B_ERROR, B_NOTICE = ord("T"), ord("D"), ord("C"), ord("E"), ord("N")
B_PARSE_COMPLETE, B_BIND_COMPLETE, B_CLOSE_COMPLETE = ord("1"), ord("2"), ord("3")
B_PARAM_DESC, B_NO_DATA, B_SUSPENDED, B_EMPTY = ord("t"), ord("n"), ord("s"), ord("I")
B_FUNCTION_RESULT, B_COPY_DATA = ord("V"), ord("d")
BACKEND_TYPES = frozenset(b"RSKZTDCEN123tnsIVAGHWdcv")

# Pending operations, in the order the server answers them.
OP_QUERY, OP_PARSE, OP_BIND, OP_DESCRIBE, OP_EXECUTE, OP_SYNC, OP_CLOSE, OP_CALL = range(8)
OP_NAMES = ("QUERY", "PARSE", "BIND", "DESCRIBE", "EXECUTE", "SYNC", "CLOSE", "FUNCTION_CALL")

# Type OIDs of parameters we render.
OID_BOOL, OID_BYTEA, OID_NAME, OID_INT8, OID_INT2, OID_INT4, OID_TEXT, OID_OID = (
    16,
    17,
    19,
    20,
    21,
    23,
    25,
    26,
)
OID_JSON, OID_FLOAT4, OID_FLOAT8, OID_UNKNOWN, OID_BPCHAR, OID_VARCHAR = 114, 700, 701, 705, 1042, 1043
OID_DATE, OID_TIME, OID_TIMESTAMP, OID_TIMESTAMPTZ, OID_NUMERIC, OID_UUID, OID_JSONB = (
    1082,
    1083,
    1114,
    1184,
    1700,
    2950,
    3802,
)
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


# A bound portal: (statement, format codes, values). A tuple, not a class: one is made per
# Bind, and calling a class's __init__ costs as much as all the rest of a Bind's bookkeeping.
Portal = tuple[Statement, tuple[int, ...], list[bytes | None]]


class Op:
    """One frontend message awaiting its answer (and, for Query/Execute, the record in progress).

    A plain slotted class: one is made per message on the hot path, so its constructor
    sets only what varies.
    """

    __slots__ = (
        "kind",
        "ts",
        "sql",
        "portal",
        "name",
        "describe_stmt",
        "rows",
        "returns_rows",
        "tags",
        "error",
    )

    def __init__(
        self,
        kind: int,
        ts: int,
        sql: str = "",
        portal: Portal | None = None,
        name: bytes = b"",
        describe_stmt: bool = False,
    ) -> None:
        self.kind = kind
        self.ts = ts  # first byte of the request this op belongs to
        self.sql = sql
        self.portal = portal
        self.name = name  # statement name for Parse/Describe
        self.describe_stmt = describe_stmt
        self.rows = 0
        self.returns_rows = False
        self.tags: list[str] | None = None
        self.error: tuple[str, str] | None = None  # (SQLSTATE, message)
