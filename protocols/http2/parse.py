"""Bytes → HTTP/2 frames for one direction, with frame alignment recovery; header blocks → header fields.

Frame headers are cut by hand (the hot path: most frames are DATA, which need no more);
hyperframe parses the bodies of the other frame types. When the start of the connection
was not captured, or after a gap, the reader hunts for an offset where a plausible frame
header is followed by another plausible one, and only then trusts the framing.

Header blocks are decoded with hpack while the dynamic table is known, and by a tolerant
walker of our own once it is not (attached mid-connection, after a gap or an error).
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable
from copy import copy as _shallow_copy

import hpack
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from ..common import BoundedCache, Confidence, ParserCaches, ParserStats, ParseState, Side
from ..http_common import StreamBuffer
from .types import (
    ACK,
    ALLOWED_FLAGS,
    FIXED_LENGTH,
    FRAME_HEADER,
    GOAWAY,
    HEADERS,
    HPACK_ENTRY_OVERHEAD,
    HPACK_HUFFMAN,
    HPACK_INCREMENTAL,
    HPACK_INCREMENTAL_MASK,
    HPACK_INCREMENTAL_PREFIX,
    HPACK_INDEXED,
    HPACK_INDEXED_PREFIX,
    HPACK_LITERAL_PREFIX,
    HPACK_SIZE_UPDATE,
    HPACK_SIZE_UPDATE_MASK,
    HPACK_SIZE_UPDATE_PREFIX,
    HPACK_STRING_PREFIX,
    LAST_KNOWN_TYPE,
    MAX_HEADER_LIST,
    PADDED,
    PLAUSIBLE_MAX_LENGTH,
    PREFACE,
    PRIORITY_FIELDS,
    PRIORITY_FLAG,
    RESERVED_BIT,
    SETTING_SIZE,
    SETTINGS,
    STREAM_ID_MASK,
    STREAM_ZERO,
    WINDOW_UPDATE,
    Fields,
)

# handle(owner, type, flags, stream id, payload, first byte ts, last byte ts): the owner's frame handler
FrameHandler = Callable[[object, int, int, int, bytes, int, int], None]
# length (24 bits, as 16 + 8), type, flags, R + stream id: one C call per frame header
FRAME_HEADER_STRUCT = struct.Struct(">HBBBL")


def payload_length(buf: bytes | bytearray, o: int) -> int:
    """The payload length in the frame header at ``o`` (24 bits, big-endian)."""
    return (buf[o] << 16) | (buf[o + 1] << 8) | buf[o + 2]


def plausible_header(buf: bytes | bytearray, o: int) -> bool:
    """Could the 9 bytes at ``o`` be a frame header a real HTTP/2 stack wrote?"""
    ftype = buf[o + 3]
    flags = buf[o + 4]
    # The cheapest tests first: hunting for alignment asks this at every offset.
    if ftype > LAST_KNOWN_TYPE or buf[o + 5] & RESERVED_BIT or flags & ~ALLOWED_FLAGS[ftype]:
        return False
    length = payload_length(buf, o)
    if length > PLAUSIBLE_MAX_LENGTH:
        return False
    fixed = FIXED_LENGTH.get(ftype)
    if fixed is not None and length != fixed:
        return False
    sid = int.from_bytes(buf[o + 5 : o + 9], "big")
    if ftype in STREAM_ZERO:
        if sid:
            return False
    elif ftype != WINDOW_UPDATE and not sid:
        return False
    if ftype == SETTINGS and (length % SETTING_SIZE or (flags & ACK and length)):
        return False
    if ftype == GOAWAY and length < 8:
        return False
    return True


# Enum members are looked up through the class on every use; detect runs once or twice per connection.
_NO, _MAYBE, _YES = Confidence.NO, Confidence.MAYBE, Confidence.YES


def detect(side: Side, data: bytes) -> Confidence:
    """How sure we are that ``data``, the first bytes seen on ``side``, is HTTP/2: the client's preface,
    or (attached mid-connection) frames whose header blocks, if any, were written by ``side``."""
    if side is Side.REQUEST:
        if data.startswith(PREFACE):
            return _YES
        if len(data) < len(PREFACE) and len(data) >= 3 and PREFACE.startswith(data):
            return _MAYBE
    n, exact = plausible_frames(data)
    if n >= 2 or (n == 1 and exact):
        guess = guess_side(data)
        if guess is not None and guess is not side:
            return _NO
        return _MAYBE
    return _NO


def plausible_frames(data: bytes) -> tuple[int, bool]:
    """How many consecutive plausible frame headers start at offset 0, and whether they end exactly at the end."""
    o = 0
    n = 0
    while len(data) - o >= FRAME_HEADER and plausible_header(data, o):
        n += 1
        o += FRAME_HEADER + payload_length(data, o)
    return n, o == len(data)


class FrameReader:
    """Cuts frames out of one direction's bytes."""

    def __init__(self, side: Side, stats: ParserStats, max_frame: int) -> None:
        self.side = side
        self.stats = stats
        self.buf = StreamBuffer()
        self.max_frame = max_frame
        self.start: bool | None = None  # see check_start
        self.aligned = False
        self.skip = 0  # bytes of a frame cut by a gap still to come
        self.quiet = False  # INVALID was reported and no frame parsed since: one error per stretch of garbage

    def append(self, data: bytes, ts_ns: int) -> None:
        self.buf.append(data, ts_ns)

    def check_start(self, final: bool = False) -> bool | None:
        """Did the capture begin with this direction's side of the connection preface?

        True: yes, framing and HPACK state are known from byte 0. False: attached
        mid-connection. None: too few bytes to tell. Each direction decides from its own
        bytes only, so the outcome never depends on how the two directions interleave.
        The client's preface is the magic string; the server's is a SETTINGS frame.
        """
        if self.start is not None:
            return self.start
        buf = self.buf.buf
        if self.side is Side.REQUEST:
            if len(buf) >= len(PREFACE):
                self.start = buf.startswith(PREFACE)
                if self.start:
                    self.buf.consume(len(PREFACE))
            elif not PREFACE.startswith(bytes(buf)) or final:
                self.start = False
        elif len(buf) >= FRAME_HEADER:
            self.start = buf[3] == SETTINGS and buf[4] == 0 and plausible_header(buf, 0)
        elif final:
            self.start = False
        if self.start is not None:
            self.aligned = self.start
        return self.start

    def gap(self, nbytes: int) -> tuple[int, int, int, int] | None:
        """Bytes were lost after the buffered ones. Returns (stream id, type, flags, payload bytes
        lost: the buffered ones too, padding excluded) of a frame cut in two, if known."""
        buf = self.buf.buf
        cut = None
        if self.aligned and len(buf) >= FRAME_HEADER and not self.skip:
            length = payload_length(buf, 0)
            frame_len = FRAME_HEADER + length
            remaining = frame_len - len(buf)
            flags = buf[4]
            if flags & PADDED and length:
                length -= 1 + (buf[FRAME_HEADER] if len(buf) > FRAME_HEADER else 0)
            cut = (int.from_bytes(buf[5:9], "big") & STREAM_ID_MASK, buf[3], flags, max(length, 0))
            if nbytes < remaining:
                self.skip = remaining - nbytes  # still aligned: skip the rest of this frame
            elif nbytes > remaining:
                self.aligned = False
            # nbytes == remaining: the lost bytes were exactly the rest of this frame
        elif self.skip and nbytes < self.skip:
            self.skip -= nbytes
        else:
            self.skip = 0
            self.aligned = False
        self.stats.dropped_bytes += len(buf)
        self.buf.clear()
        if self.start is None:
            self.start = False  # whatever the lost bytes were, we are not at a known start any more
        return cut

    def _align(self, final: bool) -> bool:
        buf = self.buf.buf
        n = len(buf)
        o = 0
        try:
            while n - o >= FRAME_HEADER:
                if not plausible_header(buf, o):
                    o += 1
                    continue
                nxt = o + FRAME_HEADER + payload_length(buf, o)
                if nxt + FRAME_HEADER <= n:
                    if plausible_header(buf, nxt):
                        self.aligned = True
                        return True
                    o += 1
                    continue
                if final and nxt == n:
                    self.aligned = True
                    return True
                return False  # cannot tell yet: wait for more bytes
            return False
        finally:
            if o:
                self.stats.dropped_bytes += o
                self.buf.consume(o)

    def ready(self, final: bool = False) -> ParseState:
        """OK: a whole frame is at the front of the buffer (``cut`` takes it). NEEDS_MORE: not yet
        (skipping the rest of a frame cut by a gap, hunting for alignment, or a frame still
        arriving). INVALID: the frame at the front is longer than we accept; alignment is lost."""
        if self.skip:
            n = min(self.skip, len(self.buf.buf))
            self.buf.consume(n)
            self.stats.dropped_bytes += n
            self.skip -= n
            if self.skip:
                return ParseState.NEEDS_MORE
        if not self.aligned and not self._align(final):
            return ParseState.NEEDS_MORE
        buf = self.buf.buf
        if len(buf) < FRAME_HEADER:
            return ParseState.NEEDS_MORE
        length = payload_length(buf, 0)
        if length > self.max_frame:
            self.aligned = False
            return ParseState.INVALID
        if len(buf) < FRAME_HEADER + length:
            return ParseState.NEEDS_MORE
        return ParseState.OK

    def cut(
        self, data: bytes, handle: FrameHandler, owner: object, ts: int, stamps: StreamBuffer | None = None
    ) -> int:
        """Hand every whole frame at the start of ``data`` to ``handle``; return how many bytes they took.

        ``data`` is a chunk that came with nothing buffered, all of it at ``ts``, or a copy of
        the buffer (``stamps``), which then gives each frame its first and last byte's time.
        A frame longer than ``max_frame`` is left where it is, for ``ready`` to report.
        """
        n = len(data)
        o = 0
        max_frame = self.max_frame
        unpack = FRAME_HEADER_STRUCT.unpack_from
        while n - o >= FRAME_HEADER:
            hi, lo, ftype, flags, sid = unpack(data, o)
            length = (hi << 8) | lo
            end = o + FRAME_HEADER + length
            if end > n or length > max_frame:
                break
            self.quiet = False
            if stamps is None:
                handle(owner, ftype, flags, sid & STREAM_ID_MASK, data[o + FRAME_HEADER : end], ts, ts)
            else:
                first, last = stamps.ts_at(o), stamps.ts_at(end - 1)
                handle(owner, ftype, flags, sid & STREAM_ID_MASK, data[o + FRAME_HEADER : end], first, last)
            o = end
        return o


def header_fragment(flags: int, payload: bytes) -> bytes | None:
    """The header block fragment of a HEADERS payload, or None if its padding and priority overrun it."""
    off, pad = 0, 0
    if flags & PADDED:
        pad = payload[0] if payload else 0
        off = 1
    if flags & PRIORITY_FLAG:
        off += PRIORITY_FIELDS
    if off + pad > len(payload):
        return None
    return payload[off : len(payload) - pad] if off or pad else payload


# -- header blocks while the dynamic table is unknown ---------------------------------------------
# hpack.Decoder raises on a dynamic index it never saw inserted. The tolerant walker skips such
# fields and reports the block partial. It keeps its own dynamic table of the entries inserted
# since it started: those are the *newest* entries, so they sit at the lowest dynamic indices
# (62…) and are exactly right; anything beyond them is unknown. Older, unknown entries are
# evicted first, so ours only go when they alone exceed the table size. Static table and
# Huffman decoding come from hpack.

_STATIC = HeaderTable.STATIC_TABLE
_NSTATIC = len(_STATIC)


class _Truncated(Exception):
    pass


def _int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    if pos >= len(block):
        raise _Truncated
    v = block[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    for _ in range(5):  # 2^35 is far beyond any sane index or length
        if pos >= len(block):
            raise _Truncated
        b = block[pos]
        pos += 1
        v += (b & 0x7F) << shift  # 7 bits a byte, the high bit says more follow (RFC 7541 §5.1)
        shift += 7
        if not b & 0x80:
            return v, pos
    raise _Truncated


def _str(block: bytes, pos: int) -> tuple[bytes | None, int]:
    """A string literal; None (with the position still advanced) if its Huffman code is bad."""
    if pos >= len(block):
        raise _Truncated
    huff = block[pos] & HPACK_HUFFMAN
    n, pos = _int(block, pos, HPACK_STRING_PREFIX)
    end = pos + n
    if end > len(block):
        raise _Truncated
    raw = block[pos:end]
    if not huff:
        return bytes(raw), end
    try:
        return decode_huffman(raw), end
    except Exception:
        return None, end


class TolerantDecoder:
    """Decodes header blocks; returns (fields it could decode, whether any were lost)."""

    def __init__(self, max_size: int = 4096, max_list: int = 256 * 1024) -> None:
        self.max_list = max_list  # decoded bytes per block: a few index bytes can expand a lot
        self.entries: deque[tuple[bytes | None, bytes | None, int]] = deque()  # newest first
        self.size = 0
        self.max_size = max_size

    def _lookup(self, idx: int) -> tuple[bytes | None, bytes | None]:
        if 1 <= idx <= _NSTATIC:
            return _STATIC[idx - 1]
        k = idx - _NSTATIC - 1
        if 0 <= k < len(self.entries):
            name, value, _ = self.entries[k]
            return name, value
        return None, None

    def _insert(self, name: bytes | None, value: bytes | None) -> None:
        # An unknown name or value still occupies a slot; its size is a guess (32 + what we know).
        size = HPACK_ENTRY_OVERHEAD + len(name or b"") + len(value or b"")
        self.entries.appendleft((name, value, size))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.entries and self.size > self.max_size:
            self.size -= self.entries.pop()[2]

    def forget(self) -> None:
        """Our entries' positions are no longer known (a block was cut short)."""
        self.entries.clear()
        self.size = 0

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        out: list[tuple[bytes, bytes]] = []
        partial = False
        pos = 0
        n = len(block)
        size = 0
        try:
            while pos < n:
                if size > self.max_list:
                    raise _Truncated  # stop expanding; like a cut block, table positions are unknown

                b = block[pos]
                if b & HPACK_INDEXED:
                    idx, pos = _int(block, pos, HPACK_INDEXED_PREFIX)
                    name, value = self._lookup(idx)
                    if name is None or value is None:
                        partial = True
                    else:
                        out.append((name, value))
                        size += len(name) + len(value)
                    continue
                if b & HPACK_SIZE_UPDATE_MASK == HPACK_SIZE_UPDATE:
                    self.max_size, pos = _int(block, pos, HPACK_SIZE_UPDATE_PREFIX)
                    self._evict()
                    continue
                indexing = b & HPACK_INCREMENTAL_MASK == HPACK_INCREMENTAL
                idx, pos = _int(block, pos, HPACK_INCREMENTAL_PREFIX if indexing else HPACK_LITERAL_PREFIX)
                if idx:
                    name, _ = self._lookup(idx)
                else:
                    name, pos = _str(block, pos)
                value, pos = _str(block, pos)
                if indexing:
                    self._insert(name, value)
                if name is None or value is None:
                    partial = True
                else:
                    out.append((name, value))
                    size += len(name) + len(value)
        except _Truncated:
            # The rest of the block may have inserted entries we did not see: positions are now unknown.
            self.forget()
            partial = True
        return out, partial


# -- header blocks while the dynamic table is known ------------------------------------------------
OPENING_BLOCKS = 16  # per direction: only its opening blocks are worth sharing across connections
REPEATED_BLOCKS = 512  # per direction: blocks that left the dynamic table as it was, kept for reuse


class HeaderDecoder:
    """Header blocks of one direction → header fields: hpack while the dynamic table is known, then tolerant.

    hpack's pure-Python decode is the most expensive step per stream, so decoded blocks are
    remembered, with the state of the dynamic table they were decoded against:

    - across connections, a direction's opening blocks (``ParserCaches.http2_opening_blocks``):
      (state, max allowed table size, block) → (fields, the state it leads to, that state's
      table). A state is a number standing for the exact sequence of blocks a direction decoded
      from an empty table (0); connections from the same client open with the same blocks, so
      their opening blocks decode the same on every connection. The table a shared state stands
      for is copied into this direction's decoder only when a block must really be decoded.
    - per direction, blocks that left the table as they found it: steady-state traffic repeats
      them (all indexed fields). The table state is told by its newest entry *object* (compared
      with ``is``, never by id(): a freed entry's id is soon reused by the next entry), its
      length and its maximum size: an insertion always puts a new object in front, an eviction
      shortens it, a size update changes the maximum, and the entries behind a given newest one
      are the ones that were behind it when it was inserted, less evictions.
    """

    def __init__(self, stats: ParserStats, caches: ParserCaches) -> None:
        self.stats = stats
        self.opening = caches.http2_opening_blocks
        self.states = caches.http2_states
        self.decoder: hpack.Decoder | None = hpack.Decoder()
        self.decoder.max_header_list_size = MAX_HEADER_LIST
        self.tolerant: TolerantDecoder | None = None
        self.state: int | None = 0  # None once unknown or past the opening blocks
        self.blocks = 0  # opening blocks decoded
        self.reached: HeaderTable | None = None  # a shared state's table, not yet copied into the decoder
        # The decoder's table's maximum size, read whenever something may have changed it (a real
        # decode, a shared state copied in): a block found in ``repeats`` changes nothing.
        self.maxsize = self.decoder.header_table.maxsize
        # block → (newest entry, number of entries, max size, fields)
        self.repeats = BoundedCache(REPEATED_BLOCKS)

    def go_tolerant(self) -> None:
        """The dynamic table is no longer known for sure: decode what we can from here on."""
        self.state = None
        self.reached = None
        if self.tolerant is None:
            self.tolerant = TolerantDecoder(max_list=MAX_HEADER_LIST)
            self.decoder = None
        else:
            self.tolerant.forget()

    def allow_table_size(self, size: int) -> None:
        """Our peer's encoder may now use up to ``size`` bytes of dynamic table (SETTINGS_HEADER_TABLE_SIZE)."""
        if self.decoder is not None:
            self.decoder.max_allowed_table_size = size

    def decode(self, block: bytes) -> tuple[Fields, bool]:
        """The fields of a header block, and whether some could not be decoded."""
        dec = self.decoder
        if dec is None:
            assert self.tolerant is not None
            raw, partial = self.tolerant.decode(block)
            return _fields(raw), partial
        state = self.state
        if state is not None:
            self.blocks += 1
            key = (state, dec.max_allowed_table_size, block)
            hit = self.opening.get(key)
            if hit is not None:
                fields, nxt, table = hit
                if nxt != state:
                    self.reached = table
                self.state = nxt if self.blocks < OPENING_BLOCKS else None
                return fields, False
        table = dec.header_table
        if self.reached is not None:
            table = dec.header_table = _copy_table(self.reached)
            self.reached = None
            self.maxsize = table.maxsize
        entries = table.dynamic_entries
        newest, count, maxsize = entries[0] if entries else None, len(entries), self.maxsize
        hit = self.repeats.get(block)
        if hit is not None and hit[0] is newest and hit[1] == count and hit[2] == maxsize:
            fields = hit[3]
            changed = False
        else:
            try:
                raw = dec.decode(block, raw=True)
            except Exception:
                # Most likely a dynamic index we never saw inserted (bytes lost somewhere).
                self.stats.parse_errors += 1
                self.go_tolerant()
                assert self.tolerant is not None
                raw, _ = self.tolerant.decode(block)
                return _fields(raw), True
            fields = _fields(raw)
            entries = table.dynamic_entries
            self.maxsize = table.maxsize
            changed = (
                (entries[0] if entries else None) is not newest or len(entries) != count or self.maxsize != maxsize
            )
            if not changed:
                self.repeats.put(block, (newest, count, maxsize, fields))
        if state is not None:
            nxt = next(self.states) if changed else state
            self.opening.put(key, (fields, nxt, _copy_table(table) if changed else None))
            self.state = nxt if self.blocks < OPENING_BLOCKS else None
        return fields, False


def _fields(raw: list[tuple[bytes, bytes]]) -> Fields:
    return Fields([(k.decode("latin-1").lower(), v.decode("utf-8", "replace")) for k, v in raw])


def _copy_table(table: HeaderTable) -> HeaderTable:
    """A table of its own with the same entries (the same objects) and limits: what decoding changes is its own."""
    copy = _shallow_copy(table)
    copy.dynamic_entries = deque(table.dynamic_entries)
    return copy


# -- which side wrote a capture that did not start at the preface ----------------------------------
_REQUEST_NAMES = frozenset({b":method", b":path", b":scheme", b":authority"})
_RESPONSE_NAMES = frozenset({b":status", b"grpc-status"})


def guess_side(data: bytes) -> Side | None:
    """Which side wrote these frames? Header blocks with :method/:path are requests, :status responses.

    A throwaway tolerant decoder reads whatever fields the blocks spell out (static table and
    literals), which is enough even when most of the block points into an unknown dynamic table.
    """
    dec = TolerantDecoder()
    o = 0
    while len(data) - o >= FRAME_HEADER:
        length = payload_length(data, o)
        ftype, flags = data[o + 3], data[o + 4]
        end = min(o + FRAME_HEADER + length, len(data))
        fragment = header_fragment(flags, data[o + FRAME_HEADER : end]) if ftype == HEADERS else None
        if fragment is not None:
            fields, _ = dec.decode(fragment)
            names = {k for k, _ in fields}
            if names & _REQUEST_NAMES:
                return Side.REQUEST
            if names & _RESPONSE_NAMES:
                return Side.RESPONSE
        o += FRAME_HEADER + length
    return None
