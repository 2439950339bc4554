"""Bytes → HTTP/2 frames for one direction, with frame alignment recovery.

Frame headers are cut by hand (the hot path: most frames are DATA, which need no more);
hyperframe parses the bodies of the other frame types. When the start of the connection
was not captured, or after a gap, the reader hunts for an offset where a plausible frame
header is followed by another plausible one, and only then trusts the framing.
"""

from __future__ import annotations

from ..common import ParserStats, ParseState, Side
from ..http_common import StreamBuffer
from .types import (
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
        self.start: bool | None = None  # see check_start
        self.aligned = False
        self.skip = 0  # bytes of a frame cut by a gap still to come

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

    def gap(self, nbytes: int) -> tuple[int, int] | None:
        """Bytes were lost after the buffered ones. Returns (stream id, type) of a frame cut in two, if known."""
        buf = self.buf.buf
        cut = None
        if self.aligned and len(buf) >= FRAME_HEADER and not self.skip:
            frame_len = FRAME_HEADER + ((buf[0] << 16) | (buf[1] << 8) | buf[2])
            remaining = frame_len - len(buf)
            cut = (int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[3])
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
