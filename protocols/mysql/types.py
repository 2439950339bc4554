"""MySQL wire-protocol constants and the per-connection objects the stitcher keeps."""

from __future__ import annotations

from dataclasses import dataclass, field

TABLE = "mysql_events"

# Capability flags (only the ones that change how bytes are read).
CLIENT_COMPRESS = 0x20
CLIENT_PROTOCOL_41 = 0x200
CLIENT_SSL = 0x800
CLIENT_PLUGIN_AUTH = 0x80000
CLIENT_DEPRECATE_EOF = 0x1000000

SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040

PACKET_HEADER = 4  # payload length (3 bytes, little-endian) and sequence id
MAX_PACKET = 0xFFFFFF  # a payload this long continues in the next packet
SEQ_MASK = 0xFF  # sequence ids count modulo 256

# What the first byte of a server packet says it is.
OK = 0x00
ERR = 0xFF
EOF = 0xFE  # also AuthSwitchRequest while logging in
LOCAL_INFILE = 0xFB  # the server asks the client for a file (LOAD DATA LOCAL INFILE)
HANDSHAKE_V10 = 0x0A  # the server greeting starts with its protocol version, 10
EOF_LENGTH = 5  # EOF marker, warnings (2), status flags (2)
EOF_MAX = 9  # a packet starting 0xFE shorter than this ends a result set; a row starting 0xFE is longer
OK_MIN = 7  # OK marker, affected rows and last insert id (1 each at least), status flags (2), warnings (2)
PREPARE_OK_LENGTH = 9  # OK marker, statement id (4), columns (2), parameters (2)
PROGRESS_REPORT = 0xFFFF  # MariaDB: the error code of an ERR that only reports progress
SQLSTATE_MARKER = b"#"  # in an ERR packet, followed by the 5-character SQLSTATE
LOGIN_FIXED = 32  # capability flags (4), max packet (4), charset (1), filler (23)

# Length-encoded integers: a first byte below 0xFB is the value; these say how many bytes follow.
LENENC_2, LENENC_3, LENENC_8 = 0xFC, 0xFD, 0xFE
LENENC_NULL = 0xFB

COMMANDS: dict[int, str] = {
    0x01: "COM_QUIT",
    0x02: "COM_INIT_DB",
    0x03: "COM_QUERY",
    0x04: "COM_FIELD_LIST",
    0x05: "COM_CREATE_DB",
    0x06: "COM_DROP_DB",
    0x07: "COM_REFRESH",
    0x08: "COM_SHUTDOWN",
    0x09: "COM_STATISTICS",
    0x0A: "COM_PROCESS_INFO",
    0x0C: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG",
    0x0E: "COM_PING",
    0x11: "COM_CHANGE_USER",
    0x16: "COM_STMT_PREPARE",
    0x17: "COM_STMT_EXECUTE",
    0x18: "COM_STMT_SEND_LONG_DATA",
    0x19: "COM_STMT_CLOSE",
    0x1A: "COM_STMT_RESET",
    0x1B: "COM_SET_OPTION",
    0x1C: "COM_STMT_FETCH",
    0x1F: "COM_RESET_CONNECTION",
    0xFA: "COM_STMT_BULK_EXECUTE",  # MariaDB: one execute, many parameter rows
}
COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_CREATE_DB = 0x05
COM_DROP_DB = 0x06
COM_STATISTICS = 0x09
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_STMT_FETCH = 0x1C
COM_STMT_BULK_EXECUTE = 0xFA

# Commands the server never answers.
NO_RESPONSE = frozenset({COM_QUIT, COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA})
# Commands whose payload is SQL or a name we show as text.
TEXT_BODY = frozenset({COM_QUERY, COM_INIT_DB, COM_STMT_PREPARE, COM_CREATE_DB, COM_DROP_DB})
# Commands whose payload starts with a statement id.
STATEMENT_ID_BODY = frozenset({COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH, COM_STMT_BULK_EXECUTE})

# Binary-protocol column types.
T_TINY, T_SHORT, T_LONG, T_FLOAT, T_DOUBLE, T_NULL = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06
T_TIMESTAMP, T_LONGLONG, T_INT24, T_DATE, T_TIME, T_DATETIME, T_YEAR = 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0D
UNSIGNED_FLAG = 0x80


@dataclass(slots=True)
class Statement:
    """A server-side prepared statement, known from its COM_STMT_PREPARE exchange."""

    sql: str
    nparams: int
    types: list[tuple[int, int]] = field(default_factory=list)  # (type, flags) from the last new-params-bound


@dataclass(slots=True)
class Request:
    cmd: int
    ts: int  # first byte
    body: str | None
    prepare_sql: str | None = None  # COM_STMT_PREPARE: remembered once the server gives the id


@dataclass(slots=True)
class Response:
    """What the stitcher learns while reading one response."""

    phase: int = 0  # see stitch.py
    seq: int = 1  # next expected sequence id (-1: any, after the client sent a LOCAL INFILE file)
    remaining: int = 0  # column or parameter definitions still to read
    rows: int = 0
    result_sets: int = 0
    affected: int = 0
    stmt_id: int = 0
    stmt_params: int = 0
    stmt_cols: int = 0
    continued: bool = False  # the previous packet was 16 MiB long: this one is its continuation
