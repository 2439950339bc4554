"""What the MySQL and PostgreSQL parsers share.

Both protocols are strictly request/response on a connection and frame their messages with
a length in a small header, so both parsers keep requests in a FIFO, cut each direction into
messages with a ``Framer``, collect records as responses complete and hand them out after
each call, and fill tables with the same columns (``mysql_events``, ``pgsql_events``).
"""

from __future__ import annotations

from .common import ParserCaches, ParserConfig, ParserStats, ProtocolParser, Record, Side

# A message bigger than the buffer cap is delivered with only this much of its payload:
# enough for any summary we make, and the rest is skipped as it streams past.
KEEP_OF_HUGE = 64 * 1024


def sql_record(
    table: str, end_ts: int, latency: int | None, cmd: str, body: str, status: str | None,
    resp_body: str | None, code: int | str | None, rows: int | None,
) -> Record:  # fmt: skip
    """One record of ``mysql_events`` or ``pgsql_events``; ``status`` None: the request got no response."""
    return Record(
        table,
        end_ts,
        latency,
        {
            "req_cmd": cmd,
            "req_body": body,
            "resp_status": status,
            "resp_body": resp_body,
            "error_code": code,
            "rows": rows,
        },
    )


class Framer:
    """Cuts one direction's bytes into length-framed messages whatever the chunking.

    Holds at most one incomplete message (``buf``, with ``start_ts``, when its first byte came,
    which becomes the message's time, and ``need``, the bytes that make it worth another look),
    and counts how many bytes of a message over the cap are still to be skipped. A subclass
    reads its protocol's header; the buffering around it is the same.
    """

    __slots__ = ("buf", "start_ts", "need", "skip", "cap", "header", "stats", "fresh_at")

    def __init__(self, cap: int, header: int, stats: ParserStats) -> None:
        self.buf = bytearray()
        self.start_ts = 0
        self.header = header  # bytes of header in front of every message
        self.need = header
        self.skip = 0  # bytes of an oversized message still to discard
        self.cap = max(cap, KEEP_OF_HUGE + header)
        self.stats = stats  # the parser's: dropped bytes are counted where they happen
        # Where, in the bytes ``resume`` last handed out, the chunk just fed begins (0: no bytes held
        # before it): a send starts there, the next place to look for a message after a bogus header.
        self.fresh_at = 0

    def reset(self) -> None:
        self.stats.dropped_bytes += len(self.buf)
        self.buf = bytearray()
        self.need = self.header
        self.skip = 0

    def resume(self, data: bytes, ts: int) -> tuple[bytes, int] | None:
        """``data`` behind what was buffered, less what is being skipped, and the time of the first
        message in it; None: nothing more to cut yet. For a framer with something to skip or
        something buffered."""
        if self.skip:
            n = min(self.skip, len(data))
            self.skip -= n
            self.stats.dropped_bytes += n  # the tail of a message over the buffer cap
            data = data[n:]
            if not data:
                return None
        if not self.buf:
            self.fresh_at = 0
            return data, ts
        if len(self.buf) + len(data) < self.need:
            self.buf += data  # a bytearray: waiting for a big message stays linear
            return None
        self.fresh_at = len(self.buf)
        data = bytes(self.buf) + data  # payloads are sliced from immutable bytes (dict keys)
        self.buf = bytearray()
        return data, self.start_ts

    def bogus(self, data: bytes, pos: int, fresh_at: int) -> int:
        """The message header at ``data[pos]`` cannot be right (a length no peer sends, or a start no
        message has): counted as a parse error. Returns where to look for the next message: the start
        of the chunk just fed if it lies ahead (a send begins there), else the end (the rest of the
        chunk is dropped, and the next chunk tried as a fresh boundary). Either way, what is
        skipped is counted."""
        self.stats.parse_errors += 1
        # (a chunk that began inside the bogus header is no send boundary: the stream was cut finer)
        nxt = fresh_at if fresh_at >= pos + self.header else self._rescue(data, pos)
        self.stats.dropped_bytes += nxt - pos
        return nxt

    def _rescue(self, data: bytes, pos: int) -> int:
        """The first offset after ``pos`` from which whole, plausible messages (``message_end``) fill
        the rest of ``data`` exactly, or its end if there is none: a bogus header written in the
        same send as real messages hides none of them. Each offset is walked from at most once."""
        total = len(data)
        dead: set[int] = set()  # offsets known to start no such run
        for q in range(pos + 1, total - self.header + 1):
            walked = []
            o = q
            while o < total and o not in dead:
                walked.append(o)
                o = self.message_end(data, o)
                if o < 0:
                    break
            if o == total:
                return q
            dead.update(walked)
        return total

    def message_end(self, data: bytes, pos: int) -> int:
        """Where the whole, plausible message at ``data[pos]`` ends, or -1 (none, or not whole)."""
        return -1

    def keep(self, data: bytes, pos: int, msg_ts: int, need: int) -> None:
        """Buffer the start of a message, ``data[pos:]``, that came at ``msg_ts``, until ``need`` bytes are there."""
        self.buf = bytearray(data[pos:])
        self.start_ts = msg_ts
        self.need = need


class SqlParser(ProtocolParser):
    """Base of the two SQL parsers: records are collected in ``_out`` as responses complete."""

    __slots__ = ("_out",)

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        super().__init__(config)
        self._out: list[Record] = []

    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        self.stats.gap_messages += 1
        self._reset(side)
        if side is Side.RESPONSE:
            self._lost_response()
        out, self._out = self._out, []  # never hand out the list we keep appending to
        return out

    def _lost_response(self) -> None:
        """We no longer know where the head request's answer ends: forget that request."""
        raise NotImplementedError
