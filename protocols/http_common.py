"""What the HTTP/1 and HTTP/2 parsers share: the table they fill, the timestamped byte buffer,
body capture (size, kept prefix, content decoding) and the rendering of bodies and headers
as stored.

Neither HTTP parser imports the other: both import this.
"""

from __future__ import annotations

import json
import re
import zlib
from bisect import bisect_right
from typing import Any

TABLE = "http_events"
# Every http_events field, with its value when a side is absent or the column does not apply.
EMPTY_FIELDS: dict[str, Any] = {
    "http_version": None,
    "req_method": None,
    "req_path": None,
    "req_headers": None,
    "req_body": None,
    "req_body_size": None,
    "resp_status": None,
    "resp_message": None,
    "resp_headers": None,
    "resp_body": None,
    "resp_body_size": None,
    "content_type": None,
    "grpc_status": None,
    "grpc_message": None,
    "stream_id": None,
    "req_messages": None,
    "resp_messages": None,
    "headers_partial": False,
    "body_incomplete": False,
}


class StreamBuffer:
    """Unparsed bytes of one direction, remembering which capture timestamp each byte came with.

    Latency is defined per byte (first byte of the request, last byte of the response), so
    chunk boundaries must not leak into records: a byte keeps the timestamp of the chunk it
    arrived in, however the stream was split.
    """

    __slots__ = ("buf", "base", "_pos", "_ts")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.base = 0  # stream offset of buf[0]
        self._pos: list[int] = []
        self._ts: list[int] = []

    def __len__(self) -> int:
        return len(self.buf)

    def append(self, data: bytes, ts_ns: int) -> None:
        if not data:
            return
        pos = self.base + len(self.buf)
        if self._ts and self._ts[-1] == ts_ns:
            pass  # same timestamp as the previous chunk: the old mark already covers it
        else:
            self._pos.append(pos)
            self._ts.append(ts_ns)
        self.buf += data

    @property
    def last_ts(self) -> int:
        return self._ts[-1] if self._ts else 0

    def ts_at(self, offset: int) -> int:
        """Timestamp of the byte at ``offset`` in the current buffer."""
        pos = self._pos
        if len(pos) <= 1:  # the usual case: everything buffered came in one chunk
            return self._ts[0] if pos else 0
        i = bisect_right(pos, self.base + offset) - 1
        return self._ts[i if i > 0 else 0]

    def consume(self, n: int) -> None:
        if n <= 0:
            return
        # bytearray deletion from the front is amortised O(1) in CPython (it moves ob_start).
        del self.buf[:n]
        self.base += n
        if len(self._pos) > 1:
            i = bisect_right(self._pos, self.base) - 1
            if i > 0:
                del self._pos[:i]
                del self._ts[:i]

    def clear(self) -> None:
        self.consume(len(self.buf))


def _make_decompressor(encoding: str | None) -> zlib._Decompress | None:
    if not encoding:
        return None
    enc = encoding.strip().lower()
    if enc in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        # "deflate" is meant to be zlib-wrapped, but some servers send raw deflate; 32+ auto-detects
        # zlib vs gzip only, so raw deflate falls back in BodySink.add.
        return zlib.decompressobj(32 + zlib.MAX_WBITS)
    return None


class BodySink:
    """Collects one body: its full size, its first ``max_body`` bytes, and a decoded prefix.

    Sizes are wire sizes (after de-chunking, before content decoding): that is what
    Content-Length means and it costs nothing to count. Decoding stops once ``max_body``
    decoded bytes are kept, so a large compressed body costs no more than a small one.
    """

    __slots__ = ("size", "raw", "decoded", "max", "_dec", "_encoding", "_failed", "_started")

    def __init__(self, max_body: int, encoding: str | None = None) -> None:
        self.size = 0
        self.raw = bytearray()
        self.decoded = bytearray()
        self.max = max_body
        self._encoding = encoding
        self._dec = _make_decompressor(encoding) if encoding else None  # most bodies are not encoded
        self._failed = False
        self._started = False

    def add(self, chunk: bytes | memoryview) -> None:
        n = len(chunk)
        if not n:
            return
        self.size += n
        room = self.max - len(self.raw)
        if room > 0:
            self.raw += chunk[:room]
        if self._dec is None or self._failed:
            return
        room = self.max - len(self.decoded)
        if room <= 0:
            return  # zlib's max_length=0 would mean "unlimited"
        try:
            self.decoded += self._dec.decompress(bytes(chunk), room)
        except zlib.error:
            if not self._started and self._encoding and self._encoding.strip().lower() == "deflate":
                self._dec = zlib.decompressobj(-zlib.MAX_WBITS)
                self._started = True
                try:
                    self.decoded += self._dec.decompress(bytes(self.raw), room)
                    return
                except zlib.error:
                    pass
            self._failed = True
        self._started = True

    def lose(self, n: int) -> None:
        """``n`` bytes of the body were not captured: they count in its size, and nothing after them
        is kept or decoded, so what is kept stays a true prefix of the body."""
        self.size += n
        self.max = 0

    def text(self) -> str:
        """The body as stored: decoded when decoding worked, else as it came."""
        kept = self.decoded if self._dec is not None and not self._failed else self.raw
        return body_text(bytes(kept), self.size)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def body_text(data: bytes, full_size: int) -> str:
    """Render a (truncated) body for a terminal.

    Text is decoded as UTF-8 (replacement characters for bad bytes). Binary (NULs, many
    control bytes or many invalid sequences, e.g. protobuf) becomes ``<binary N bytes> hex…``
    so a terminal never receives raw control sequences and the reader still sees the first bytes.
    """
    if not data:
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", "replace")
        if text.count("\ufffd") * 8 > len(text):
            return f"<binary {full_size} bytes> {data[:64].hex()}"
    head = text[:512]
    if _CONTROL.search(head) is None:
        return text
    ctrl = _CONTROL.findall(head)
    if "\x00" in ctrl or len(ctrl) * 32 > len(head):
        return f"<binary {full_size} bytes> {data[:64].hex()}"
    return text


try:
    # One C encoder, built once: json.dumps builds a new one per call, which costs more than
    # encoding a small header dict.
    from json.encoder import c_make_encoder, encode_basestring

    _c_encode = c_make_encoder(None, None, encode_basestring, None, ":", ",", False, False, True)

    def _ENCODE_JSON(obj: dict[str, str]) -> str:  # noqa: N802
        return "".join(_c_encode(obj, 0))
except (ImportError, TypeError):  # no C accelerator (PyPy and friends)
    _ENCODE_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def headers_json(headers: list[tuple[str, str]]) -> str:
    """Lowercase names; repeated headers joined with ', ' (RFC 9110 list semantics), cookies with '; '."""
    out = dict(headers)
    if len(out) != len(headers):
        out = {}
        for name, value in headers:
            prev = out.get(name)
            # HTTP/2 may split Cookie into one field per crumb; those rejoin with "; " (RFC 9113 §8.2.3)
            out[name] = value if prev is None else f"{prev}{'; ' if name == 'cookie' else ', '}{value}"
    return _ENCODE_JSON(out)
