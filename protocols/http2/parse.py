"""Bytes → HTTP/2 frames for one direction, with frame alignment recovery.

Frame headers are cut by hand (the hot path: most frames are DATA, which need no more);
hyperframe parses the bodies of the other frame types. When the start of the connection
was not captured, or after a gap, the reader hunts for an offset where a plausible frame
header is followed by another plausible one, and only then trusts the framing.
"""

from __future__ import annotations

from protocols.common import ParserStats, ParseState, Side
from protocols.http1.types import StreamBuffer
from protocols.http2.types import (
    ACK,
    ALLOWED_FLAGS,
    FIXED_LENGTH,
    FRAME_HEADER,
    GOAWAY,
    PLAUSIBLE_MAX_LENGTH,
    PREFACE,
    SETTINGS,
    STREAM_ZERO,
    WINDOW_UPDATE,
)

# (type, flags, stream_id, payload, first byte ts, last byte ts)
Frame = tuple[int, int, int, bytes, int, int]


def plausible_header(buf: bytes | bytearray, o: int) -> bool:
    """Could the 9 bytes at ``o`` be a frame header a real HTTP/2 stack wrote?"""
    length = (buf[o] << 16) | (buf[o + 1] << 8) | buf[o + 2]
    ftype = buf[o + 3]
    flags = buf[o + 4]
    if ftype > 9 or buf[o + 5] & 0x80 or length > PLAUSIBLE_MAX_LENGTH:
        return False
    if flags & ~ALLOWED_FLAGS[ftype]:
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
    if ftype == SETTINGS and (length % 6 or (flags & ACK and length)):
        return False
    if ftype == GOAWAY and length < 8:
        return False
    return True


def plausible_frames(data: bytes) -> tuple[int, bool]:
    """How many consecutive plausible frame headers start at offset 0, and whether they end exactly at the end."""
    o = 0
    n = 0
    while len(data) - o >= FRAME_HEADER and plausible_header(data, o):
        n += 1
        o += FRAME_HEADER + ((data[o] << 16) | (data[o + 1] << 8) | data[o + 2])
    return n, o == len(data)


class FrameReader:
    """Cuts frames out of one direction's bytes."""

    def __init__(self, side: Side, stats: ParserStats, max_frame: int) -> None:
        self.side = side
        self.stats = stats
        self.buf = StreamBuffer()
        self.max_frame = max_frame
        # Request side: None until we know whether the connection preface was captured.
        self.preface: bool | None = None if side is Side.REQUEST else False
        self.aligned = side is Side.REQUEST  # the response side is told by the parser
        self.skip = 0  # bytes of a frame cut by a gap still to come

    def append(self, data: bytes, ts_ns: int) -> None:
        self.buf.append(data, ts_ns)

    def check_preface(self) -> bool | None:
        """Request side: True (preface seen), False (attached mid-connection) or None (too few bytes)."""
        if self.preface is not None:
            return self.preface
        buf = self.buf.buf
        if len(buf) >= len(PREFACE):
            if buf.startswith(PREFACE):
                self.buf.consume(len(PREFACE))
                self.preface = True
            else:
                self.preface = False
                self.aligned = False
        elif not PREFACE.startswith(bytes(buf)):
            self.preface = False
            self.aligned = False
        return self.preface

    def gap(self, nbytes: int) -> int | None:
        """Bytes were lost after the buffered ones. Returns the stream id of a frame cut in two, if known."""
        buf = self.buf.buf
        sid = None
        if self.aligned and len(buf) >= FRAME_HEADER and not self.skip:
            frame_len = FRAME_HEADER + ((buf[0] << 16) | (buf[1] << 8) | buf[2])
            remaining = frame_len - len(buf)
            sid = int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF
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
        if self.preface is None:
            self.preface = False
        return sid

    def _align(self, final: bool) -> bool:
        buf = self.buf.buf
        n = len(buf)
        o = 0
        try:
            while n - o >= FRAME_HEADER:
                if not plausible_header(buf, o):
                    o += 1
                    continue
                nxt = o + FRAME_HEADER + ((buf[o] << 16) | (buf[o + 1] << 8) | buf[o + 2])
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

    def next_frame(self, final: bool = False) -> tuple[ParseState, Frame | None]:
        if self.skip:
            n = min(self.skip, len(self.buf.buf))
            self.buf.consume(n)
            self.stats.dropped_bytes += n
            self.skip -= n
            if self.skip:
                return ParseState.NEEDS_MORE, None
        if not self.aligned and not self._align(final):
            return ParseState.NEEDS_MORE, None
        buf = self.buf.buf
        if len(buf) < FRAME_HEADER:
            return ParseState.NEEDS_MORE, None
        length = (buf[0] << 16) | (buf[1] << 8) | buf[2]
        if length > self.max_frame:
            self.aligned = False
            return ParseState.INVALID, None
        end = FRAME_HEADER + length
        if len(buf) < end:
            return ParseState.NEEDS_MORE, None
        frame = (
            buf[3],
            buf[4],
            int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF,
            bytes(buf[FRAME_HEADER:end]),
            self.buf.ts_at(0),
            self.buf.ts_at(end - 1),
        )
        self.buf.consume(end)
        return ParseState.OK, frame
