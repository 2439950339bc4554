"""Bytes to MySQL packets, and the decoders for the packets the stitcher looks into.

Nothing here keeps connection state except ``PacketStream``, the per-direction framer.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable

from ..common import ParserStats, ProtocolError
from ..sql_common import KEEP_OF_HUGE, Framer
from .types import (
    CLIENT_PROTOCOL_41,
    COMMANDS,
    EOF_LENGTH,
    LENENC_2,
    LENENC_3,
    LENENC_8,
    LENENC_NULL,
    LOGIN_FIXED,
    PACKET_HEADER,
    SQLSTATE_MARKER,
    T_DATE,
    T_DATETIME,
    T_DOUBLE,
    T_FLOAT,
    T_INT24,
    T_LONG,
    T_LONGLONG,
    T_NULL,
    T_SHORT,
    T_TIME,
    T_TIMESTAMP,
    T_TINY,
    T_YEAR,
    UNSIGNED_FLAG,
)

Handler = Callable[[int, bytes, int, int, int], None]  # seq, payload, first-byte ts, now ts, full length


# Can a packet whose header is at ``data[pos]``, reaching past the bytes there, start there? (parser,
# data, pos) -> True, False (a bogus header), or None (too few bytes yet to tell).
HeadCheck = Callable[[object, bytes, int], bool | None]
# Bytes of a packet that its head check may read: the header, a command byte and the start of its SQL.
SQL_HEAD = 4
HEAD_CHECK_BYTES = PACKET_HEADER + 1 + SQL_HEAD


class PacketStream(Framer):
    """Cuts one direction's bytes into ``(seq, payload)`` packets whatever the chunking.

    A packet that reaches past the bytes at hand is held (or, over the cap, skipped) only once its
    start passed the parser's ``check``: a bogus length must not make us wait for, or skip, up to
    16 MiB of the connection's later packets.
    """

    __slots__ = ("resync", "check", "commands")

    def __init__(self, cap: int, stats: ParserStats, check: HeadCheck | None = None, commands: bool = False) -> None:
        super().__init__(cap, PACKET_HEADER, stats)
        self.resync = False  # discard the rest of this chunk: we lost the packet boundary
        self.check = check
        self.commands = commands  # the client's side: packets a command starts

    def message_end(self, data: bytes, pos: int) -> int:
        """A whole command packet (sequence id 0, a known command) at ``data[pos]``: where it ends.
        Only the client's side looks for one."""
        if not self.commands or len(data) - pos <= PACKET_HEADER or data[pos + 3] != 0:
            return -1
        end = pos + PACKET_HEADER + (data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16)
        return end if end <= len(data) and data[pos + PACKET_HEADER] in COMMANDS else -1

    def feed(self, data: bytes, ts: int, handler: Handler) -> None:
        if self.skip or self.buf:
            resumed = self.resume(data, ts)
            if resumed is None:
                return
            data, msg_ts = resumed
            fresh_at = self.fresh_at
        else:
            msg_ts = ts
            fresh_at = 0
        pos = 0
        end_all = len(data)
        self.resync = False
        while end_all - pos >= PACKET_HEADER:
            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            end = pos + PACKET_HEADER + length
            if end > end_all:
                check = self.check
                # the parser is the handler's owner: no reference to it is kept (no cycle)
                verdict = True if check is None else check(handler.__self__, data, pos)  # type: ignore[attr-defined]
                if verdict is None:
                    self.keep(data, pos, msg_ts, min(HEAD_CHECK_BYTES, PACKET_HEADER + length))
                    return
                if not verdict:
                    pos = self.bogus(data, pos, fresh_at)
                    msg_ts = ts
                    continue
                if length + PACKET_HEADER > self.cap and end_all - pos >= PACKET_HEADER + KEEP_OF_HUGE:
                    # deliver the head of a packet too big to buffer, skip its tail as it arrives
                    body = pos + PACKET_HEADER
                    handler(data[pos + 3], data[body : body + KEEP_OF_HUGE], msg_ts, ts, length)
                    # (unless the head made no sense: then the length is garbage too)
                    self.skip = 0 if self.resync else end - end_all
                    return
                huge = length + PACKET_HEADER > self.cap
                self.keep(data, pos, msg_ts, PACKET_HEADER + (KEEP_OF_HUGE if huge else length))
                return
            handler(data[pos + 3], data[pos + PACKET_HEADER : end], msg_ts, ts, length)
            if self.resync:
                self.stats.dropped_bytes += end_all - end
                self.resync = False
                return
            msg_ts = ts
            pos = end
        if pos < end_all:
            self.keep(data, pos, msg_ts, PACKET_HEADER)


def lenenc(p: bytes, i: int) -> tuple[int, int]:
    """A length-encoded integer at ``p[i]``: (value, next offset)."""
    if i >= len(p):
        raise ProtocolError("truncated length-encoded integer")
    b = p[i]
    if b < LENENC_NULL:
        return b, i + 1
    if b == LENENC_2:
        if i + 3 > len(p):
            raise ProtocolError("truncated length-encoded integer")
        return p[i + 1] | p[i + 2] << 8, i + 3
    if b == LENENC_3:
        if i + 4 > len(p):
            raise ProtocolError("truncated length-encoded integer")
        return p[i + 1] | p[i + 2] << 8 | p[i + 3] << 16, i + 4
    if b == LENENC_8:
        if i + 9 > len(p):
            raise ProtocolError("truncated length-encoded integer")
        return int.from_bytes(p[i + 1 : i + 9], "little"), i + 9
    raise ProtocolError(f"bad length-encoded integer prefix {b:#x}")


def parse_ok(p: bytes) -> tuple[int, int]:
    """OK packet (or the OK that ends a result set): (affected rows, status flags)."""
    affected, i = lenenc(p, 1)
    _, i = lenenc(p, i)
    status = p[i] | p[i + 1] << 8 if i + 2 <= len(p) else 0
    return affected, status


def parse_err(p: bytes) -> tuple[int, str]:
    """ERR packet: (code, message), the SQLSTATE marker stripped from the message."""
    if len(p) < 3:
        raise ProtocolError("short ERR packet")
    code = p[1] | p[2] << 8
    msg = p[3:]
    if msg[:1] == SQLSTATE_MARKER:
        msg = msg[1 + 5 :]
    return code, msg.decode("utf-8", "replace")


def eof_status(p: bytes) -> int:
    return p[3] | p[4] << 8 if len(p) >= EOF_LENGTH else 0


def login_caps(p: bytes) -> int | None:
    """Capability flags of a HandshakeResponse41, or None if ``p`` does not look like one.

    Only the first 32 bytes (flags, max packet, charset, zero filler) are read: the rest is
    the user name and auth data, which are never looked at nor stored.
    """
    if len(p) < LOGIN_FIXED:
        return None
    caps = int.from_bytes(p[0:4], "little")
    if not caps & CLIENT_PROTOCOL_41:
        return None
    # 19 of the 23 filler bytes are always zero (MariaDB keeps its extended flags in the last 4)
    if any(p[9:28]):
        return None
    return caps


_DT = struct.Struct("<HBBBBB")


def _datetime(p: bytes, i: int, t: int) -> tuple[str, int]:
    n = p[i]
    v = p[i + 1 : i + 1 + n]
    if len(v) != n:
        raise ProtocolError("truncated date")
    i += 1 + n
    if t == T_TIME:
        if n == 0:
            return "'00:00:00'", i
        if n not in (8, 12):
            raise ProtocolError("bad TIME length")
        neg, days, h, m, s = struct.unpack_from("<BIBBB", v)
        out = f"{'-' if neg else ''}{days * 24 + h:02d}:{m:02d}:{s:02d}"
        if n == 12:
            out += f".{int.from_bytes(v[8:12], 'little'):06d}"
        return f"'{out}'", i
    if n == 0:
        return "'0000-00-00'", i
    if n not in (4, 7, 11):
        raise ProtocolError("bad DATETIME length")
    y, mo, d, h, mi, s = _DT.unpack(v[:7]) if n >= 7 else (*struct.unpack_from("<HBB", v), 0, 0, 0)
    out = f"{y:04d}-{mo:02d}-{d:02d}"
    if t != T_DATE or n > 4:
        out += f" {h:02d}:{mi:02d}:{s:02d}"
        if n == 11:
            out += f".{int.from_bytes(v[7:11], 'little'):06d}"
    return f"'{out}'", i


_FIXED = {
    T_TINY: (1, "b", "B"),
    T_SHORT: (2, "h", "H"),
    T_YEAR: (2, "h", "H"),
    T_LONG: (4, "i", "I"),
    T_INT24: (4, "i", "I"),
    T_LONGLONG: (8, "q", "Q"),
    T_FLOAT: (4, "f", "f"),
    T_DOUBLE: (8, "d", "d"),
}


def quote(raw: bytes) -> str:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "X'" + raw.hex() + "'"
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def decode_params(
    p: bytes, i: int, nparams: int, types: list[tuple[int, int]]
) -> tuple[list[str], list | None]:
    """Binary parameter values of a COM_STMT_EXECUTE from offset ``i`` (the null bitmap).

    Returns the values rendered as SQL literals and, when the packet re-sent the types
    (new-params-bound), the new ``(type, flags)`` list to remember for later executes.
    """
    nb = (nparams + 7) // 8
    null_map = p[i : i + nb]
    if len(null_map) != nb or i + nb >= len(p):
        raise ProtocolError("truncated execute")
    i += nb
    new_types = None
    if p[i] == 1:
        i += 1
        raw = p[i : i + 2 * nparams]
        if len(raw) != 2 * nparams:
            raise ProtocolError("truncated parameter types")
        new_types = [(raw[k], raw[k + 1]) for k in range(0, 2 * nparams, 2)]
        types = new_types
        i += 2 * nparams
    else:
        i += 1
    if len(types) != nparams:
        raise ProtocolError("parameter types unknown")
    out = []
    for k in range(nparams):
        if null_map[k >> 3] >> (k & 7) & 1:
            out.append("NULL")
            continue
        t, flags = types[k]
        fixed = _FIXED.get(t)
        if fixed is not None:
            size, signed, unsigned = fixed
            if i + size > len(p):
                raise ProtocolError("truncated parameter")
            v = struct.unpack_from("<" + (unsigned if flags & UNSIGNED_FLAG else signed), p, i)[0]
            out.append(repr(v) if t in (T_FLOAT, T_DOUBLE) else str(v))
            i += size
        elif t == T_NULL:
            out.append("NULL")
        elif t in (T_DATE, T_DATETIME, T_TIMESTAMP, T_TIME):
            if i >= len(p):
                raise ProtocolError("truncated parameter")
            v, i = _datetime(p, i, t)
            out.append(v)
        else:  # strings, decimals, blobs, JSON, BIT, ENUM, SET, GEOMETRY: length-encoded bytes
            n, i = lenenc(p, i)
            if i + n > len(p):
                raise ProtocolError("truncated parameter")
            out.append(quote(p[i : i + n]))
            i += n
    return out, new_types


_PLACEHOLDER = re.compile(
    r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|`[^`]*`|--[^\n]*|/\*.*?\*/|#[^\n]*|\?", re.S
)


def substitute(sql: str, values: list[str]) -> str:
    """``sql`` with its ``?`` placeholders (outside quotes and comments) replaced by ``values``."""
    it = iter(values)

    def repl(m: re.Match[str]) -> str:
        if m.group() != "?":
            return m.group()
        return next(it, "?")

    return _PLACEHOLDER.sub(repl, sql)
