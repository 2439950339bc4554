"""Bytes to PostgreSQL messages, and decoders for the messages the stitcher looks into."""

from __future__ import annotations

import datetime
import re
import struct
from collections.abc import Callable
from typing import Any

from ..common import ParserStats, ProtocolError
from ..sql_common import KEEP_OF_HUGE, Framer
from .types import (
    ERR_CODE,
    ERR_MESSAGE,
    ERR_SEVERITY,
    ERR_SEVERITY_UNLOCALIZED,
    HEADER,
    JSONB_VERSION,
    MAX_STARTUP,
    NUMERIC_NAN,
    NUMERIC_NEG,
    NUMERIC_OIDS,
    OID_BOOL,
    OID_BPCHAR,
    OID_BYTEA,
    OID_DATE,
    OID_FLOAT4,
    OID_FLOAT8,
    OID_INT2,
    OID_INT4,
    OID_INT8,
    OID_JSON,
    OID_JSONB,
    OID_NAME,
    OID_NUMERIC,
    OID_OID,
    OID_TEXT,
    OID_TIME,
    OID_TIMESTAMP,
    OID_TIMESTAMPTZ,
    OID_UNKNOWN,
    OID_UUID,
    OID_VARCHAR,
    PLAUSIBLE_MAX_LENGTH,
    ROW_TAGS,
    STARTUP_CODES,
)

# The parser's handler of one message type: (parser, chunk, payload start, payload end, time of the
# chunk that completed the message) -> the op a request message queues, or None. It gets offsets
# into the chunk, not a payload copy: most messages (DataRow, BindComplete, ReadyForQuery ...) are
# never read.
Handler = Callable[[Any, bytes, int, int, int], Any]
# The startup packet's handler: (parser, payload after the length, first-byte ts, now ts).
StartupHandler = Callable[[Any, bytes, int, int], None]

_BE32 = struct.Struct(">i")
read_header = struct.Struct(">Bi").unpack_from  # type byte and length, read in one call


class LostBoundary(Exception):
    """Raised by the handler of a type byte that cannot appear: we lost the message boundary."""


def lost_boundary(parser: object, data: bytes, start: int, end: int, ts: int) -> None:
    raise LostBoundary


def handler_table(handlers: dict[int, Handler]) -> tuple[Handler, ...]:
    """Handlers indexed by type byte; the types that cannot appear get ``lost_boundary``, so that the
    loop that cuts messages needs no test of its own for them."""
    return tuple(handlers.get(t, lost_boundary) for t in range(256))


class MessageStream(Framer):
    """One direction's framing state: the message it holds while the rest of it comes, the bytes of an
    oversized one still to skip, the startup packet the first message may be, and the handler table.

    The parser cuts each chunk into messages itself (``PgSQLParser._feed``); this class does what
    happens at a chunk's edges: the start of a chunk after something held or skipped, and a message
    that does not fit in what is left. A type byte without a handler or an impossible length means
    we lost the boundary: the rest of the chunk is dropped and the next chunk (captured chunks start
    at a send) is tried as a fresh boundary. ``handlers`` may be swapped by a handler (the owner's
    state changed): the parser reads it at the start of each chunk.
    """

    __slots__ = ("handlers", "startup", "on_startup", "max_length", "resume_at")

    def __init__(
        self,
        cap: int,
        handlers: tuple[Handler, ...],
        on_startup: StartupHandler | None,
        stats: ParserStats,
        max_length: tuple[int, ...] = (),
    ) -> None:
        super().__init__(cap, HEADER, stats)
        self.handlers = handlers
        self.max_length = max_length or (PLAUSIBLE_MAX_LENGTH,) * 256  # by type byte: see types.REQUEST_MAX_LENGTH
        self.startup = on_startup is not None  # the first message may be an untyped startup packet
        self.resume_at = 0
        self.on_startup = on_startup

    def reset(self) -> None:
        super().reset()
        self.startup = False

    def begin(self, data: bytes, ts: int, owner: object) -> tuple[bytes, int, int] | None:
        """For a stream holding or skipping part of a message, or expecting a startup packet: the bytes
        to cut, where the first message in them starts and when its first byte came; None: nothing to
        cut yet."""
        if self.skip or self.buf:
            resumed = self.resume(data, ts)
            if resumed is None:
                return None
            data, msg_ts = resumed
        else:
            msg_ts = ts
            self.fresh_at = 0
        if not self.startup:
            return data, 0, msg_ts
        total = len(data)
        if total < 8:
            self.keep(data, 0, msg_ts, 8)
            return None
        self.startup = False
        length = _BE32.unpack_from(data, 0)[0]
        code = _BE32.unpack_from(data, 4)[0]
        if 8 <= length <= MAX_STARTUP and code in STARTUP_CODES:
            if total < length:
                self.startup = True
                self.keep(data, 0, msg_ts, length)
                return None
            self.on_startup(owner, data[4:length], msg_ts, ts)
            return data, length, ts
        return data, 0, msg_ts

    def message_end(self, data: bytes, pos: int) -> int:
        """A whole message of a type this side sends, of a length it may have, at ``data[pos]``: where it ends."""
        if len(data) - pos < HEADER:
            return -1
        t, length = read_header(data, pos)
        end = pos + 1 + length
        if length < 4 or length > self.max_length[t] or self.handlers[t] is lost_boundary or end > len(data):
            return -1
        return end

    def cut_short(self, data: bytes, pos: int, msg_ts: int, t: int, length: int, fresh_at: int) -> int:
        """The message at ``pos`` reaches past the chunk or has an impossible length: the end of what of it
        is handled now (the head of one over the cap: its tail is skipped as it comes), 0 if it is
        held until more comes, -1 if the boundary is lost (counted; ``resume_at`` says where to look
        next, see Framer.bogus). A length longer than the peer would read is lost too: waiting for
        it would hide up to 1 GiB of the connection."""
        if length < 4 or self.handlers[t] is lost_boundary or length > self.max_length[t]:
            self.resume_at = self.bogus(data, pos, fresh_at)
            return -1
        if length + 1 > self.cap:
            if len(data) - pos >= HEADER + KEEP_OF_HUGE:
                self.skip = pos + 1 + length - len(data)
                return pos + HEADER + KEEP_OF_HUGE
            self.keep(data, pos, msg_ts, HEADER + KEEP_OF_HUGE)
        else:
            self.keep(data, pos, msg_ts, 1 + length)
        return 0



def cstr(p: bytes, i: int) -> tuple[bytes, int]:
    """The NUL-terminated string at ``p[i]`` and the offset after its NUL."""
    j = p.index(b"\0", i)
    return p[i:j], j + 1


class _Unpackers(dict):
    """``unpack_from`` of ``n`` big-endian items of one struct code, by ``n``: compiled at import for the
    counts real messages carry (format codes, parameter type OIDs), compiled on the spot beyond."""

    __slots__ = ("code",)

    def __init__(self, code: str, compiled: int) -> None:
        super().__init__((n, struct.Struct(f">{n}{code}").unpack_from) for n in range(compiled))
        self.code = code

    def __missing__(self, n: int) -> Callable[..., tuple[int, ...]]:
        return struct.Struct(f">{n}{self.code}").unpack_from


INT16_ARRAY = _Unpackers("h", 129)
UINT32_ARRAY = _Unpackers("I", 129)


def parse_parse(p: bytes) -> tuple[bytes, str, tuple[int, ...]]:
    name, i = cstr(p, 0)
    sql, i = cstr(p, i)
    n = p[i] << 8 | p[i + 1]
    oids = UINT32_ARRAY[n](p, i + 2) if n else ()
    return name, sql.decode("utf-8", "replace"), oids


# Clients re-prepare the same statements over and over (unnamed statements, asyncpg,
# JDBC before its prepare threshold), on every connection: the parse of a Parse payload up to
# this size is shared (see PgSQLParser: ParserCaches.memo("pgsql_parses", ...)).
PARSE_CACHE_MAX_BYTES = 4096


def small_parse(p: bytes) -> bool:
    return len(p) <= PARSE_CACHE_MAX_BYTES


def parse_bind(p: bytes) -> tuple[bytes, bytes, tuple[int, ...], list[bytes | None]]:
    # one split copies what follows the names once, yet costs a third of two finds (whose
    # argument parsing alone is most of their cost); the rest is read at offsets into that copy
    parts = p.split(b"\0", 2)
    if len(parts) < 3:
        raise ProtocolError("Bind without statement name")
    portal, stmt, rest = parts
    nf = rest[0] << 8 | rest[1]
    # one format for all values is the usual case: a plain Struct gives that 1-tuple directly
    formats = _H.unpack_from(rest, 2) if nf == 1 else INT16_ARRAY[nf](rest, 2) if nf else ()
    i = 2 + 2 * nf
    nv = rest[i] << 8 | rest[i + 1]
    if nf > 1 and nf != nv:
        # The server refuses this Bind too; kept, it would fail later, when its SQL is rendered
        # at completion, outside the guard that counts parse errors.
        raise ProtocolError(f"Bind with {nf} format codes for {nv} values")
    i += 2
    values: list[bytes | None] = []
    append = values.append
    unpack = _BE32.unpack_from
    for _ in range(nv):
        n = unpack(rest, i)[0]
        i += 4
        if n < 0:
            append(None)
        else:
            append(rest[i : i + n])
            i += n
    # a value cut short makes the next length unreadable (struct.error) or, the last one, this
    if i > len(rest):
        raise ProtocolError("truncated Bind value")
    return portal, stmt, formats, values


def command_tag(p: bytes) -> tuple[str, bool]:
    """A CommandComplete payload: its tag ('SELECT 1', 'UPDATE 3', 'COMMIT' ...), and whether that
    is the tag of a command that returns rows."""
    tag = p.rstrip(b"\0").decode("utf-8", "replace")
    return tag, tag.startswith(ROW_TAGS)


def parse_error(p: bytes) -> tuple[str, str, str]:
    """ErrorResponse fields: (severity, SQLSTATE, message)."""
    sev = code = msg = ""
    for field in p.split(b"\0"):
        if not field:
            continue
        k = field[0]
        if k == ERR_SEVERITY_UNLOCALIZED or (k == ERR_SEVERITY and not sev):
            sev = field[1:].decode("utf-8", "replace")
        elif k == ERR_CODE:
            code = field[1:].decode("ascii", "replace")
        elif k == ERR_MESSAGE:
            msg = field[1:].decode("utf-8", "replace")
    return sev, code, msg


_PG_EPOCH = datetime.datetime(2000, 1, 1)
_MICROSECOND = datetime.timedelta(microseconds=1)
_PG_EPOCH_DATE = datetime.date(2000, 1, 1)
_JSONB_V = bytes([JSONB_VERSION])
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _quote_text(raw: bytes) -> str:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "'\\x" + raw.hex() + "'"
    return "'" + s.replace("'", "''") + "'"


def _numeric(v: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack_from(">hhHh", v)
    if sign == NUMERIC_NAN:
        return "'NaN'"
    digits = struct.unpack_from(f">{ndigits}h", v, 8)
    s = "".join(f"{d:04d}" for d in digits)
    point = 4 * (weight + 1)
    if point <= 0:
        intpart, frac = "0", "0" * -point + s
    else:
        s = s.ljust(point, "0")
        intpart, frac = s[:point].lstrip("0") or "0", s[point:]
    frac = frac[:dscale].ljust(dscale, "0")
    out = intpart + ("." + frac if dscale > 0 else "")
    return "-" + out if sign == NUMERIC_NEG else out


def _hex(raw: bytes) -> str:
    return "'\\x" + raw.hex() + "'"


def _timestamp(suffix: str) -> Callable[[bytes], str]:
    """The renderer of timestamps (microseconds since 2000-01-01), one call per value."""
    end = suffix + "'"

    def render(raw: bytes) -> str:
        if len(raw) != 8:
            return _hex(raw)
        try:
            # multiplying is exact and cheaper than building a timedelta from its parts
            return "'" + (_PG_EPOCH + _MICROSECOND * _Q.unpack(raw)[0]).isoformat(" ") + end
        except (OverflowError, ValueError):  # beyond year 9999: shown raw
            return _hex(raw)

    return render


def _time(raw: bytes) -> str:
    us = _Q.unpack(raw)[0]
    return (
        f"'{datetime.time(us // 3_600_000_000, us // 60_000_000 % 60, us // 1_000_000 % 60, us % 1_000_000)}'"
    )


_Q = struct.Struct(">q")
_H = struct.Struct(">h")
_I = struct.Struct(">I")
_D = struct.Struct(">d")
_F = struct.Struct(">f")


def _safe(size: int, dec: Callable[[bytes], str]) -> Callable[[bytes], str]:
    """``dec`` for values of ``size`` bytes (0: any), hex for the wrong size or a value it cannot read."""

    def render(raw: bytes) -> str:
        if size and len(raw) != size:
            return _hex(raw)
        try:
            return dec(raw)
        except (struct.error, OverflowError, ValueError):
            return _hex(raw)

    return render


# Decoders that cannot fail on a value of the right size check the size themselves: one call
# per value. Those that can (out-of-range dates, malformed numerics) go through _safe.
def _int2(r: bytes) -> str:
    return str(_H.unpack(r)[0]) if len(r) == 2 else _hex(r)


def _int4(r: bytes) -> str:
    return str(_BE32.unpack(r)[0]) if len(r) == 4 else _hex(r)


def _int8(r: bytes) -> str:
    return str(_Q.unpack(r)[0]) if len(r) == 8 else _hex(r)


def _oid(r: bytes) -> str:
    return str(_I.unpack(r)[0]) if len(r) == 4 else _hex(r)


def _bool(r: bytes) -> str:
    return ("true" if r[0] else "false") if len(r) == 1 else _hex(r)


def _float4(r: bytes) -> str:
    return repr(_F.unpack(r)[0]) if len(r) == 4 else _hex(r)


def _float8(r: bytes) -> str:
    return repr(_D.unpack(r)[0]) if len(r) == 8 else _hex(r)


def _uuid(r: bytes) -> str:
    if len(r) != 16:
        return _hex(r)
    h = r.hex()  # what str(uuid.UUID(bytes=r)) gives, without building the UUID
    return f"'{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}'"


def _jsonb(r: bytes) -> str:
    return _quote_text(r[1:]) if r[:1] == _JSONB_V else _hex(r)


# Binary-format renderers by type OID (raw bytes -> SQL literal); other types are shown as hex.
_BINARY_RENDER: dict[int, Callable[[bytes], str]] = {
    OID_INT4: _int4,
    OID_INT8: _int8,
    OID_INT2: _int2,
    OID_OID: _oid,
    OID_BOOL: _bool,
    OID_FLOAT8: _float8,
    OID_FLOAT4: _float4,
    OID_TEXT: _quote_text,
    OID_VARCHAR: _quote_text,
    OID_BPCHAR: _quote_text,
    OID_NAME: _quote_text,
    OID_JSON: _quote_text,
    OID_UNKNOWN: _quote_text,
    OID_JSONB: _jsonb,
    OID_UUID: _uuid,
    OID_TIMESTAMP: _timestamp(""),
    OID_TIMESTAMPTZ: _timestamp("+00"),
    OID_DATE: _safe(4, lambda r: f"'{_PG_EPOCH_DATE + datetime.timedelta(days=_BE32.unpack(r)[0])}'"),
    OID_TIME: _safe(8, _time),
    OID_NUMERIC: _safe(0, lambda r: _numeric(r) if len(r) >= 8 else _hex(r)),
    OID_BYTEA: _hex,
}


def _text_number_or_quoted(raw: bytes) -> str:
    # an untyped text parameter is shown unquoted only when it reads as a number; plain
    # integers, the usual case, are told by isdigit (ASCII digits, like \d on bytes) without
    # running the regex
    if raw.isdigit() or raw[:1] == b"-" and raw[1:].isdigit() or _NUMBER.fullmatch(raw):
        return raw.decode("ascii", "replace")
    return _quote_text(raw)


def _text_number(raw: bytes) -> str:
    return raw.decode("ascii", "replace")


def _text_bool(raw: bytes) -> str:
    return "true" if raw[:1] in (b"t", b"T", b"1", b"y", b"o") else "false"


# One ready renderer per (format, OID) so that a value costs one call: the OID and format
# checks of render_value are done once here, not per value. Unknown OIDs take the default.
_TEXT_RENDER: dict[int, Callable[[bytes], str]] = {
    **{oid: _text_number for oid in NUMERIC_OIDS},
    0: _text_number_or_quoted,
    OID_UNKNOWN: _text_number_or_quoted,
    OID_BOOL: _text_bool,
}


def renderer(fmt: int, oid: int) -> Callable[[bytes], str]:
    """The function that renders non-NULL values of parameter type ``oid`` sent in format ``fmt``."""
    if fmt == 0:  # text format
        return _TEXT_RENDER.get(oid, _quote_text)
    return _BINARY_RENDER.get(oid, _hex)


def render_value(raw: bytes | None, fmt: int, oid: int) -> str:
    """One bound parameter as an SQL literal; binary values of types we do not decode as hex."""
    if raw is None:
        return "NULL"
    return renderer(fmt, oid)(raw)
