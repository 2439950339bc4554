"""HTTP/2 data types: frame constants, per-stream state, gRPC message counting."""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from ..http_common import BodySink, headers_json

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9  # length (3), type (1), flags (1), reserved bit + stream id (4)
RESERVED_BIT = 0x80  # of the stream id's first byte: never set by a real stack
STREAM_ID_MASK = 0x7FFFFFFF
PRIORITY_FIELDS = 5  # stream dependency (4) and weight (1), when PRIORITY_FLAG is set
SETTING_SIZE = 6  # a SETTINGS payload is a list of (identifier (2), value (4))

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
LAST_KNOWN_TYPE = CONTINUATION
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Flags each known type may carry; anything else makes a frame header implausible when hunting
# for frame alignment mid-connection (real stacks never set undefined flags).
ALLOWED_FLAGS = {
    DATA: END_STREAM | PADDED,
    HEADERS: END_STREAM | END_HEADERS | PADDED | PRIORITY_FLAG,
    PRIORITY: 0,
    RST_STREAM: 0,
    SETTINGS: ACK,
    PUSH_PROMISE: END_HEADERS | PADDED,
    PING: ACK,
    GOAWAY: 0,
    WINDOW_UPDATE: 0,
    CONTINUATION: END_HEADERS,
}
FIXED_LENGTH = {PRIORITY: 5, RST_STREAM: 4, PING: 8, WINDOW_UPDATE: 4}
STREAM_ZERO = frozenset({SETTINGS, PING, GOAWAY})  # connection-level frames
PLAUSIBLE_MAX_LENGTH = 1 << 18  # peers may raise SETTINGS_MAX_FRAME_SIZE, but not usually this far
SETTINGS_HEADER_TABLE_SIZE = 0x1  # the SETTINGS parameter that bounds the peer's HPACK dynamic table
MAX_HEADER_BLOCK = 256 * 1024  # encoded bytes of one header block (HEADERS + CONTINUATIONs)
MAX_HEADER_LIST = 256 * 1024  # decoded bytes of one header list (indexed fields can expand 4000x)

# HPACK field representations (RFC 7541 §6): the first byte's high bits say which, and how many
# low bits of that byte start the integer that follows.
HPACK_INDEXED, HPACK_INDEXED_PREFIX = 0x80, 7
HPACK_INCREMENTAL_MASK, HPACK_INCREMENTAL, HPACK_INCREMENTAL_PREFIX = 0xC0, 0x40, 6
HPACK_SIZE_UPDATE_MASK, HPACK_SIZE_UPDATE, HPACK_SIZE_UPDATE_PREFIX = 0xE0, 0x20, 5
HPACK_LITERAL_PREFIX = 4  # without indexing, or never indexed
HPACK_HUFFMAN, HPACK_STRING_PREFIX = 0x80, 7  # a string literal's length byte
HPACK_ENTRY_OVERHEAD = 32  # bytes a dynamic table entry counts beyond its name and value (§4.1)

# gRPC length-prefixed messages: compressed flag (1), length (4).
GRPC_PREFIX = 5
GRPC_COMPRESSED = 0x1

ERROR_CODES = (
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
    "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR",
    "CONNECT_ERROR", "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
)  # fmt: skip


class GrpcCounter:
    """Counts length-prefixed gRPC messages in one direction's DATA, across frame boundaries.

    Message payloads (without their 5-byte prefixes) go to the body sink, so a protobuf with
    readable strings shows them instead of a hex dump of prefixes. Messages flagged as
    compressed are inflated when the side's grpc-encoding is gzip or deflate, and only
    until the sink is full.
    """

    __slots__ = ("count", "_hdr", "_remaining", "sink", "_encoding", "_dec")

    def __init__(self, sink: BodySink, encoding: str | None = None) -> None:
        self.count = 0
        self._hdr = b""
        self._remaining = 0
        self.sink = sink
        self._encoding = (encoding or "").strip().lower()
        self._dec: zlib._Decompress | None = None

    def add(self, data: bytes | memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._remaining:
                take = min(self._remaining, n - pos)
                self._payload(data[pos : pos + take])
                self._remaining -= take
                pos += take
                continue
            need = GRPC_PREFIX - len(self._hdr)
            self._hdr += bytes(data[pos : pos + need])
            pos += need
            if len(self._hdr) == GRPC_PREFIX:
                self.count += 1
                self._remaining = int.from_bytes(self._hdr[1:GRPC_PREFIX], "big")
                compressed = self._hdr[0] & GRPC_COMPRESSED
                self._dec = None
                if compressed and self._encoding == "gzip":
                    self._dec = zlib.decompressobj(16 + zlib.MAX_WBITS)
                elif compressed and self._encoding == "deflate":
                    self._dec = zlib.decompressobj(zlib.MAX_WBITS)
                self._hdr = b""

    def _payload(self, chunk: bytes | memoryview) -> None:
        if self._dec is None:
            self.sink.add(chunk)
            return
        room = self.sink.max - len(self.sink.raw)
        if room <= 0:
            return
        try:
            self.sink.add(self._dec.decompress(bytes(chunk), room))
        except zlib.error:
            self._dec = None  # show the rest of this message as it is on the wire
            self.sink.add(chunk)


class Fields(list):
    """A decoded header list: (lowercase name, value) pairs in wire order.

    The HPACK block caches hand the same object to every stream that repeats a block, so
    what each stream would otherwise recompute from it (the first value of each name, the
    JSON column) is computed once here. Never mutated once built.
    """

    __slots__ = ("first", "_json")

    def __init__(self, pairs: Iterable[tuple[str, str]] = ()) -> None:
        super().__init__(pairs)
        first: dict[str, str] = {}
        for k, v in self:
            if k not in first:
                first[k] = v
        #: name -> its first value; ``fields.first.get(name)`` is the lookup every stream makes
        self.first = first
        self._json: str | None = None

    def json(self) -> str:
        if self._json is None:
            self._json = headers_json(self)
        return self._json


NO_FIELDS = Fields()


class Half:
    """One side (request or response) of a stream."""

    __slots__ = ("headers", "trailers", "has_headers", "sink", "chunk", "grpc", "data_bytes", "first_ts", "last_ts",
                 "ended", "incomplete")

    def __init__(self) -> None:
        self.headers: Fields = NO_FIELDS
        self.trailers: list[tuple[str, str]] | tuple[()] = ()  # a list once a trailer block arrives
        self.has_headers = False
        self.sink: BodySink | None = None
        self.chunk: bytes | memoryview | None = None  # a body's only DATA so far, while it has no sink
        self.grpc: GrpcCounter | None = None
        self.data_bytes = 0  # DATA payload bytes (padding excluded): the wire body size
        self.first_ts: int | None = None
        self.last_ts: int | None = None
        self.ended = False
        self.incomplete = False  # capture lost DATA bytes of this side: the size counts them, the body lacks them


class Stream:
    __slots__ = ("stream_id", "req", "resp", "partial", "grpc", "reset", "reset_ts")

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id
        self.req = Half()
        self.resp = Half()
        self.partial = False  # some header fields could not be decoded, or the start was not seen
        self.grpc = False
        self.reset: str | None = None  # RST_STREAM error code name
        self.reset_ts: int | None = None
