"""HTTP/2 and gRPC: frames (hyperframe), header blocks (hpack), streams stitched by stream id.

h2's connection state machine is not used: it is built for an endpoint and rejects what a
passive observer must accept (e.g. response streams a client-side connection never opened).
"""

from __future__ import annotations

import hpack
from hyperframe.frame import Frame as HFrame

from protocols.common import Confidence, ParserConfig, ParseState, ProtocolParser, Record, Side
from protocols.http2.parse import FrameReader, plausible_frames
from protocols.http2.stitch import TABLE, StreamTable
from protocols.http2.tolerant import TolerantDecoder
from protocols.http2.types import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FRAME_HEADER,
    HEADERS,
    PADDED,
    PREFACE,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
)

__all__ = ["Http2Parser"]

_SETTINGS_HEADER_TABLE_SIZE = 0x1
_RESPONSE_WAIT_CAP = 64 * 1024  # response bytes held while we learn whether the preface was captured


class _Block:
    """A header block being assembled from HEADERS/PUSH_PROMISE + CONTINUATION frames."""

    __slots__ = ("kind", "sid", "promised", "parts", "end_stream", "first_ts")

    def __init__(
        self, kind: int, sid: int, promised: int, part: bytes, end_stream: bool, first_ts: int
    ) -> None:
        self.kind = kind
        self.sid = sid
        self.promised = promised
        self.parts = [part]
        self.end_stream = end_stream
        self.first_ts = first_ts


class _Direction:
    def __init__(self, side: Side, parser: Http2Parser) -> None:
        self.side = side
        self.reader = FrameReader(side, parser.stats, parser.config.max_buffer)
        self.decoder: hpack.Decoder | None = hpack.Decoder()
        self.tolerant: TolerantDecoder | None = None
        self.block: _Block | None = None
        self.quiet = False  # one parse error per stretch of garbage
        # Decoded blocks that did not touch the dynamic table, keyed by their bytes. Steady-state
        # traffic repeats such blocks (all indexed fields), and hpack's pure-Python decode is the
        # most expensive step per stream.
        self.cache: dict[bytes, tuple[tuple[int, int, int], list[tuple[str, str]]]] = {}

    def go_tolerant(self) -> None:
        """The dynamic table is no longer known for sure: decode what we can from here on."""
        if self.tolerant is None:
            self.tolerant = TolerantDecoder()
            self.decoder = None
        else:
            self.tolerant.forget()


class Http2Parser(ProtocolParser):
    name = "http2"
    table = TABLE

    def __init__(self, config: ParserConfig | None = None) -> None:
        super().__init__(config)
        self.redact: bool = getattr(self.config, "redact", False)
        self.streams = StreamTable(self.config, self.stats, self.redact)
        self.dirs = {
            Side.REQUEST: _Direction(Side.REQUEST, self),
            Side.RESPONSE: _Direction(Side.RESPONSE, self),
        }
        self.mid: bool | None = None  # None until the request side shows (or not) the preface

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
        self.dirs[side].reader.append(data, ts_ns)
        self._pump(final=False)
        return self.streams.take()

    def _decide_mid(self, final: bool) -> bool:
        if self.mid is not None:
            return True
        req = self.dirs[Side.REQUEST].reader
        pre = req.check_preface()
        if pre is None and (final or len(self.dirs[Side.RESPONSE].reader.buf) > _RESPONSE_WAIT_CAP):
            pre = False
            req.preface = False
            req.aligned = False
        if pre is None:
            return False
        self.mid = not pre
        resp = self.dirs[Side.RESPONSE].reader
        resp.aligned = pre
        if self.mid:
            self.streams.mid = True
            for d in self.dirs.values():
                d.go_tolerant()
        return True

    def _pump(self, final: bool) -> None:
        if not self._decide_mid(final):
            return
        # Request frames first: a response can only be matched to a request we have seen.
        for side in (Side.REQUEST, Side.RESPONSE):
            d = self.dirs[side]
            while True:
                state, frame = d.reader.next_frame(final)
                if state is ParseState.OK:
                    assert frame is not None
                    d.quiet = False
                    try:
                        self._on_frame(d, frame)
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

    def _on_frame(self, d: _Direction, frame: tuple[int, int, int, bytes, int, int]) -> None:
        ftype, flags, sid, payload, first_ts, last_ts = frame
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
            self.streams.on_data(side, sid, data, bool(flags & END_STREAM), first_ts, last_ts)
            return
        if ftype == CONTINUATION:
            blk = d.block
            if blk is None or blk.sid != sid:
                if not self.mid:
                    self.stats.parse_errors += 1
                d.block = None
                return
            blk.parts.append(payload)
            if flags & END_HEADERS:
                d.block = None
                self._on_block(d, blk, last_ts)
            return
        if ftype not in (HEADERS, PUSH_PROMISE, RST_STREAM, SETTINGS):
            return  # PING, WINDOW_UPDATE, PRIORITY, GOAWAY and extensions carry nothing we store
        hf, _ = HFrame.parse_frame_header(memoryview(_header(ftype, flags, sid, len(payload))))
        hf.parse_body(memoryview(payload))
        if ftype == HEADERS:
            blk = _Block(HEADERS, sid, 0, hf.data, bool(flags & END_STREAM), first_ts)
            if flags & END_HEADERS:
                self._on_block(d, blk, last_ts)
            else:
                d.block = blk
        elif ftype == PUSH_PROMISE:
            blk = _Block(PUSH_PROMISE, sid, hf.promised_stream_id, hf.data, False, first_ts)
            if flags & END_HEADERS:
                self._on_block(d, blk, last_ts)
            else:
                d.block = blk
        elif ftype == RST_STREAM:
            self.streams.on_rst(sid, hf.error_code, last_ts)
        elif ftype == SETTINGS and "ACK" not in hf.flags:
            size = hf.settings.get(_SETTINGS_HEADER_TABLE_SIZE)
            if size is not None:
                # Our peer's encoder may now use up to this much: raise our decoder's ceiling for it.
                other = self.dirs[side.other]
                if other.decoder is not None:
                    other.decoder.max_allowed_table_size = size

    def _on_block(self, d: _Direction, blk: _Block, last_ts: int) -> None:
        block = b"".join(blk.parts) if len(blk.parts) > 1 else blk.parts[0]
        fields, partial = self._decode(d, block)
        if blk.kind == PUSH_PROMISE:
            self.streams.on_push(blk.sid, blk.promised, fields, partial, blk.first_ts)
        else:
            self.streams.on_headers(d.side, blk.sid, fields, partial, blk.end_stream, blk.first_ts, last_ts)

    def _decode(self, d: _Direction, block: bytes) -> tuple[list[tuple[str, str]], bool]:
        raw: list[tuple[bytes, bytes]]
        partial = False
        if d.decoder is not None:
            table = d.decoder.header_table
            before = _fingerprint(table)
            hit = d.cache.get(block)
            if hit is not None and hit[0] == before:
                return hit[1], False
            try:
                raw = d.decoder.decode(block, raw=True)
                fields = [(k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in raw]
                if _fingerprint(table) == before:
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
        return [(k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in raw], partial

    # -- lifecycle ---------------------------------------------------------------------------------
    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            d = self.dirs[side]
            if self.mid is None and side is Side.REQUEST:
                self._decide_mid(final=True)
            sid = d.reader.gap(nbytes)
            self.stats.gap_messages += 1
            d.block = None
            if d.reader.aligned and sid is not None and d.reader.skip:
                # Only part of one known frame was lost.
                if not self.streams.drop(sid):
                    pass
            else:
                d.go_tolerant()
                self.streams.mark_partial()
            self._pump(final=False)
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
            self._pump(final=True)
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


def _fingerprint(table) -> tuple[int, int, int]:  # noqa: ANN001 - hpack.table.HeaderTable
    """Identifies the dynamic table's state: a block that leaves it unchanged decodes the same next time."""
    entries = table.dynamic_entries
    return (id(entries[0]) if entries else 0, len(entries), table._current_size)


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
