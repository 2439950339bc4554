"""HTTP/2 and gRPC: frames (hyperframe), header blocks (hpack), streams stitched by stream id.

h2's connection state machine is not used: it is built for an endpoint and rejects what a
passive observer must accept (e.g. response streams a client-side connection never opened).
"""

from __future__ import annotations

import itertools
import struct
from collections import deque

import hpack
from hyperframe.frame import Frame as HFrame

from ..common import Confidence, ParserConfig, ParseState, ProtocolError, ProtocolParser, Record, Side
from ..http_common import TABLE
from .parse import FrameReader, plausible_frames
from .stitch import StreamTable
from .tolerant import TolerantDecoder
from .types import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    PADDED,
    PREFACE,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    Fields,
)

__all__ = ["Http2Parser"]

_SETTINGS_HEADER_TABLE_SIZE = 0x1
# First header block of a direction (empty dynamic table) → (fields, entries it leaves, table size).
_FIRST_BLOCKS: dict[bytes, tuple[Fields, tuple[tuple[bytes, bytes], ...], int]] = {}
# (state, max allowed table size, block) → (fields, the state it leads to, that state's table:
# entries newest first, max size, size). A state is a number standing for the exact sequence of
# blocks a direction decoded from an empty table (0). Connections from the same client open with
# the same blocks, so their opening blocks decode the same on every connection.
_CHAIN: dict[tuple[int, int, bytes], tuple[Fields, int, tuple[tuple[bytes, bytes], ...], int, int]] = {}
_CHAIN_BLOCKS = 16  # per direction: only its opening blocks are worth sharing across connections
_next_state = itertools.count(1).__next__
MAX_HEADER_BLOCK = 256 * 1024  # encoded bytes of one header block (HEADERS + CONTINUATIONs)
MAX_HEADER_LIST = 256 * 1024  # decoded bytes of one header list (indexed fields can expand 4000x)
# length (24 bits, as 16 + 8), type, flags, R + stream id: one C call per frame header
_FRAME_HEADER = struct.Struct(">HBBBL")


class _Block:
    """A header block being assembled from HEADERS/PUSH_PROMISE + CONTINUATION frames."""

    __slots__ = ("kind", "sid", "promised", "parts", "end_stream", "first_ts", "size")

    def __init__(
        self, kind: int, sid: int, promised: int, part: bytes, end_stream: bool, first_ts: int
    ) -> None:
        self.kind = kind
        self.sid = sid
        self.promised = promised
        self.parts = [part]
        self.size = len(part)
        self.end_stream = end_stream
        self.first_ts = first_ts


class _Direction:
    def __init__(self, side: Side, parser: Http2Parser) -> None:
        self.side = side
        self.reader = FrameReader(side, parser.stats, parser.config.max_buffer)
        self.decoder: hpack.Decoder | None = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.tolerant: TolerantDecoder | None = None
        self.block: _Block | None = None
        self.quiet = False  # one parse error per stretch of garbage
        self.dropping = -1  # stream whose oversized header block we refused; its CONTINUATIONs follow
        self.mid = False  # this direction's capture did not start at the connection preface
        self.state: int | None = 0  # see _CHAIN; None once unknown or past the opening blocks
        self.blocks = 0  # header blocks decoded
        # Decoded blocks that did not touch the dynamic table, keyed by their bytes. Steady-state
        # traffic repeats such blocks (all indexed fields), and hpack's pure-Python decode is the
        # most expensive step per stream.
        self.cache: dict[bytes, tuple[tuple, Fields]] = {}

    def go_tolerant(self) -> None:
        """The dynamic table is no longer known for sure: decode what we can from here on."""
        self.state = None
        if self.tolerant is None:
            self.tolerant = TolerantDecoder(max_list=MAX_HEADER_LIST)
            self.decoder = None
        else:
            self.tolerant.forget()


class Http2Parser(ProtocolParser):
    name = "http2"
    table = TABLE

    def __init__(self, config: ParserConfig | None = None) -> None:
        super().__init__(config)
        self.streams = StreamTable(self.config, self.stats)
        self.dirs = {
            Side.REQUEST: _Direction(Side.REQUEST, self),
            Side.RESPONSE: _Direction(Side.RESPONSE, self),
        }

    # -- detection ---------------------------------------------------------------------------------
    @classmethod
    def detect(cls, side: Side, data: bytes) -> Confidence:
        if side is Side.REQUEST:
            if data.startswith(PREFACE):
                return Confidence.YES
            if len(data) < len(PREFACE) and len(data) >= 3 and PREFACE.startswith(data):
                return Confidence.MAYBE
        n, exact = plausible_frames(data)
        if n >= 2 or (n == 1 and exact):
            guess = _guess_side(data)
            if guess is not None and guess is not side:
                return Confidence.NO
            return Confidence.MAYBE
        return Confidence.NO

    # -- input -------------------------------------------------------------------------------------
    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        d = self.dirs[side]
        r = d.reader
        if r.aligned and not r.skip and not r.buf.buf:
            # The usual case: nothing buffered, so the frames of this chunk are cut straight out of
            # it (all its bytes share ts_ns) and only an unfinished last frame is buffered.
            if type(data) is not bytes:
                data = bytes(data)
            o = self._cut(d, data, ts_ns)
            if o < len(data):
                r.buf.base += o
                r.append(data[o:] if o else data, ts_ns)
                if len(data) - o >= FRAME_HEADER:
                    self._pump(d, final=False)  # an oversized frame: the reader reports it as usual
        else:
            r.append(data, ts_ns)
            self._pump(d, final=False)
        return self.streams.take()

    def _cut(self, d: _Direction, data: bytes, ts: int) -> int:
        """Handle the complete frames at the start of ``data``; return how many bytes they took."""
        n = len(data)
        o = 0
        max_frame = d.reader.max_frame
        on_frame = self._on_frame
        unpack = _FRAME_HEADER.unpack_from
        while n - o >= FRAME_HEADER:
            hi, lo, ftype, flags, sid = unpack(data, o)
            length = (hi << 8) | lo
            end = o + FRAME_HEADER + length
            if end > n or length > max_frame:
                break
            d.quiet = False
            try:
                on_frame(d, ftype, flags, sid & 0x7FFFFFFF, data[o + FRAME_HEADER : end], ts, ts)
            except Exception:
                self.stats.parse_errors += 1
                d.block = None
                d.go_tolerant()
            o = end
        return o

    def _pump(self, d: _Direction, final: bool) -> None:
        if d.reader.start is None:
            start = d.reader.check_start(final)
            if start is None:
                return
            if not start:
                d.mid = True
                d.go_tolerant()
        while True:
            state, frame = d.reader.next_frame(final)
            if state is ParseState.OK:
                assert frame is not None
                d.quiet = False
                try:
                    self._on_frame(d, *frame)
                except Exception:
                    self.stats.parse_errors += 1
                    d.block = None
                    d.go_tolerant()
            elif state is ParseState.INVALID:
                if not d.quiet:
                    self.stats.parse_errors += 1
                    d.quiet = True
                d.block = None
                d.go_tolerant()
                self.streams.mark_partial()
            else:
                break

    def _on_frame(
        self, d: _Direction, ftype: int, flags: int, sid: int, payload: bytes, first_ts: int, last_ts: int
    ) -> None:
        side = d.side
        if d.block is not None and ftype != CONTINUATION:
            # A header block must be continued immediately (RFC 9113 §6.10).
            self.stats.parse_errors += 1
            d.block = None
            d.go_tolerant()
        if ftype == DATA:
            if flags & PADDED:
                if not payload or payload[0] >= len(payload):
                    self.stats.parse_errors += 1
                    return
                data: bytes | memoryview = memoryview(payload)[1 : len(payload) - payload[0]]
            else:
                data = payload
            self.streams.on_data(side, sid, data, bool(flags & END_STREAM), first_ts, last_ts, d.mid)
            return
        if ftype == CONTINUATION:
            blk = d.block
            if blk is None or blk.sid != sid:
                if not d.mid and d.dropping != sid:
                    self.stats.parse_errors += 1
                d.dropping = -1 if flags & END_HEADERS else sid  # the rest of a refused block is no news
                d.block = None
                return
            blk.parts.append(payload)
            blk.size += len(payload)
            if blk.size > MAX_HEADER_BLOCK:
                # Endless CONTINUATIONs: refuse to hold them (the dynamic table is lost with them).
                self.stats.parse_errors += 1
                d.block = None
                d.dropping = sid
                d.go_tolerant()
                self.streams.mark_partial()
                return
            if flags & END_HEADERS:
                d.block = None
                block = b"".join(blk.parts)
                self._on_block(d, blk.kind, blk.sid, blk.promised, block, blk.end_stream, blk.first_ts, last_ts)
            return
        if ftype == HEADERS:
            # By hand, like DATA: HEADERS is the other per-stream frame, and building a hyperframe
            # object for it cost more than decoding its (usually cached) block.
            off, pad = 0, 0
            if flags & PADDED:
                pad = payload[0] if payload else 0
                off = 1
            if flags & PRIORITY_FLAG:
                off += 5
            if off + pad > len(payload):
                raise ProtocolError("HEADERS padding or priority longer than the frame")
            block = payload[off : len(payload) - pad] if off or pad else payload
            if flags & END_HEADERS:
                self._on_block(d, HEADERS, sid, 0, block, bool(flags & END_STREAM), first_ts, last_ts)
            else:
                d.block = _Block(HEADERS, sid, 0, block, bool(flags & END_STREAM), first_ts)
            return
        if ftype not in (PUSH_PROMISE, RST_STREAM, SETTINGS):
            return  # PING, WINDOW_UPDATE, PRIORITY, GOAWAY and extensions carry nothing we store
        hf, _ = HFrame.parse_frame_header(memoryview(_header(ftype, flags, sid, len(payload))))
        hf.parse_body(memoryview(payload))
        if ftype == PUSH_PROMISE:
            if flags & END_HEADERS:
                self._on_block(d, PUSH_PROMISE, sid, hf.promised_stream_id, hf.data, False, first_ts, last_ts)
            else:
                d.block = _Block(PUSH_PROMISE, sid, hf.promised_stream_id, hf.data, False, first_ts)
        elif ftype == RST_STREAM:
            self.streams.on_rst(sid, hf.error_code, last_ts)
        elif ftype == SETTINGS and "ACK" not in hf.flags:
            size = hf.settings.get(_SETTINGS_HEADER_TABLE_SIZE)
            if size is not None:
                # Our peer's encoder may now use up to this much: raise our decoder's ceiling for it.
                other = self.dirs[side.other]
                if other.decoder is not None:
                    other.decoder.max_allowed_table_size = size

    def _on_block(
        self, d: _Direction, kind: int, sid: int, promised: int, block: bytes, end_stream: bool, first_ts: int,
        last_ts: int,
    ) -> None:  # fmt: skip
        fields, partial = self._decode(d, block)
        if kind == PUSH_PROMISE:
            self.streams.on_push(sid, promised, fields, partial, first_ts)
        else:
            self.streams.on_headers(d.side, sid, fields, partial, end_stream, first_ts, last_ts)

    def _decode(self, d: _Direction, block: bytes) -> tuple[Fields, bool]:
        dec = d.decoder
        state = d.state
        if dec is None or state is None:
            return self._decode_table(d, block)
        d.blocks += 1
        table = dec.header_table
        key = (state, dec.max_allowed_table_size, block)
        hit = _CHAIN.get(key)
        if hit is not None:
            fields, nxt, entries, maxsize, size = hit
            if nxt != state:
                # The table this block leaves, as decoding it would have left it.
                table.dynamic_entries = deque(entries)
                table._maxsize = maxsize
                table._current_size = size
            d.state = nxt if d.blocks < _CHAIN_BLOCKS else None
            return fields, False
        before = _fingerprint(table)
        fields, partial = self._decode_table(d, block)
        if d.decoder is None or partial or d.state is None:
            return fields, partial
        if _same_state(_fingerprint(table), before):
            nxt = state
        else:
            nxt = _next_state()
        if len(_CHAIN) >= 1024:
            _CHAIN.clear()
        _CHAIN[key] = (fields, nxt, tuple(table.dynamic_entries), table._maxsize, table._current_size)
        d.state = nxt if d.blocks < _CHAIN_BLOCKS else None
        return fields, False

    def _decode_table(self, d: _Direction, block: bytes) -> tuple[Fields, bool]:
        raw: list[tuple[bytes, bytes]]
        partial = False
        if d.decoder is not None:
            table = d.decoder.header_table
            entries = table.dynamic_entries
            if entries:
                # Steady state, inlined: a repeated block against the table state it was cached with.
                hit = d.cache.get(block)
                if hit is not None:
                    fp = hit[0]
                    if (fp[0] is entries[0] and fp[1] == len(entries) and fp[2] == table._current_size
                            and fp[3] == table._maxsize):
                        return hit[1], False
            pristine = (
                not table.dynamic_entries
                and table._maxsize == 4096
                and d.decoder.max_allowed_table_size == 4096
            )
            if pristine:
                first = _FIRST_BLOCKS.get(block)
                if first is not None:
                    fields, added, maxsize = first
                    if maxsize != 4096:
                        table.maxsize = maxsize
                    for name, value in added:
                        table.add(name, value)
                    return fields, False
            before = _fingerprint(table)
            hit = d.cache.get(block)
            if hit is not None and _same_state(hit[0], before):
                return hit[1], False
            try:
                raw = d.decoder.decode(block, raw=True)
                fields = Fields([(k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in raw])
                if pristine:
                    # A connection's first block decodes the same on every connection that sends it
                    # (a client's standard headers): keep its result and the table it leaves.
                    if len(_FIRST_BLOCKS) >= 256:
                        _FIRST_BLOCKS.clear()
                    _FIRST_BLOCKS[block] = (fields, tuple(reversed(table.dynamic_entries)), table._maxsize)
                elif _same_state(_fingerprint(table), before):
                    if len(d.cache) >= 512:
                        d.cache.clear()
                    d.cache[block] = (before, fields)
                return fields, False
            except Exception:
                # Most likely a dynamic index we never saw inserted (bytes lost somewhere).
                self.stats.parse_errors += 1
                d.go_tolerant()
                assert d.tolerant is not None
                raw, partial = d.tolerant.decode(block)
                partial = True
        else:
            assert d.tolerant is not None
            raw, partial = d.tolerant.decode(block)
        return Fields([(k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in raw]), partial

    # -- lifecycle ---------------------------------------------------------------------------------
    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            d = self.dirs[side]
            if d.reader.start is None:
                d.reader.check_start(final=True)
                if not d.reader.start:
                    d.mid = True
            cut = d.reader.gap(nbytes)
            self.stats.gap_messages += 1
            d.block = None
            if cut is not None and cut[1] == DATA and d.reader.aligned:
                # Only the middle of one DATA frame was lost: framing and HPACK state are intact,
                # and only that stream's body is incomplete.
                self.streams.drop(cut[0])
            else:
                d.go_tolerant()
                self.streams.mark_partial()
            self._pump(d, final=False)
        except Exception:
            self.stats.parse_errors += 1
        return self.streams.take()

    def expire(self, now_ns: int) -> list[Record]:
        try:
            return self.streams.expire(now_ns)
        except Exception:
            self.stats.parse_errors += 1
            return []

    def close(self, ts_ns: int) -> list[Record]:
        try:
            for d in self.dirs.values():
                self._pump(d, final=True)
            return self.streams.take() + self.streams.close()
        except Exception:
            self.stats.parse_errors += 1
            return []

    def _reset(self, side: Side) -> None:
        d = self.dirs[side]
        d.block = None
        d.reader.buf.clear()
        d.reader.aligned = False
        d.go_tolerant()


def _fingerprint(table) -> tuple:  # noqa: ANN001 - hpack.table.HeaderTable
    """The dynamic table's state, for the block cache.

    Holds the newest entry *object* (compared with ``is``, never by id(): a freed entry's id
    is soon reused by the next entry of the same size). An insertion always puts a new object
    in front; evictions change the length and size; a size update changes the maximum.
    """
    entries = table.dynamic_entries
    return (entries[0] if entries else None, len(entries), table._current_size, table._maxsize)


def _same_state(a: tuple, b: tuple) -> bool:
    return a[0] is b[0] and a[1] == b[1] and a[2] == b[2] and a[3] == b[3]


def _header(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return length.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")


_REQUEST_NAMES = frozenset({b":method", b":path", b":scheme", b":authority"})
_RESPONSE_NAMES = frozenset({b":status", b"grpc-status"})


def _guess_side(data: bytes) -> Side | None:
    """Which side wrote these frames? Header blocks with :method/:path are requests, :status responses.

    A throwaway tolerant decoder reads whatever fields the blocks spell out (static table and
    literals), which is enough even when most of the block points into an unknown dynamic table.
    """
    dec = TolerantDecoder()
    o = 0
    while len(data) - o >= FRAME_HEADER:
        length = (data[o] << 16) | (data[o + 1] << 8) | data[o + 2]
        ftype, flags = data[o + 3], data[o + 4]
        end = min(o + FRAME_HEADER + length, len(data))
        if ftype == HEADERS:
            p = o + FRAME_HEADER
            pad = 0
            if flags & PADDED and p < end:
                pad = data[p]
                p += 1
            if flags & 0x20:
                p += 5
            fields, _ = dec.decode(data[p : max(p, end - pad)])
            names = {k for k, _ in fields}
            if names & _REQUEST_NAMES:
                return Side.REQUEST
            if names & _RESPONSE_NAMES:
                return Side.RESPONSE
        o += FRAME_HEADER + length
    return None
