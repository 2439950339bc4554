"""Bytes → HTTP/1.x messages, one direction at a time.

A reader is an explicit state machine over a ``StreamBuffer``: it never needs a
message to arrive in one piece, so the records never depend on chunking. Each call to
``next_message`` returns one of the closed set of ``ParseState`` outcomes.
"""

from __future__ import annotations

import re
from collections import deque

from ..common import BoundedCache, Confidence, ParserCaches, ParserConfig, ParserStats, ParseState, Side
from ..http_common import BodySink, StreamBuffer, body_text
from .types import BAD_LENGTH, CHUNKED, CR, LF, UNTIL_CLOSE, Head, HeaderBlock, Message

METHODS = (
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "CONNECT", "TRACE",
    "PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "REPORT", "SEARCH", "PURGE",
)  # fmt: skip
_METHOD_ALT = "|".join(METHODS).encode()
_METHOD_SET = frozenset(METHODS)
_VERSIONS = frozenset({"HTTP/1.1", "HTTP/1.0"})
_STATUS_PREFIXES = frozenset({"HTTP/1.1 ", "HTTP/1.0 "})

_HEAD_END = re.compile(rb"\r?\n\r?\n")
_REQUEST_LINE = re.compile("(" + _METHOD_ALT.decode() + r") (\S+) HTTP/1\.([01])\r?\Z")
_STATUS_LINE = re.compile(r"HTTP/1\.([01]) (\d{3})(?: ([^\r\n]*))?\r?\Z")
# A message start: where one might start again after garbage, and what detection looks for. Not
# anchored to a line start: after an unparseable Content-Length body the next message follows
# the body's last byte directly.
_REQUEST_START = re.compile(rb"(?:" + _METHOD_ALT + rb") \S+ HTTP/1\.[01]\r?\n")
_RESPONSE_START = re.compile(rb"HTTP/1\.[01] \d{3}[ \r\n]")
RESYNC_KEEP = 8192  # a start line longer than this is not looked for while resyncing (nor kept, arriving in pieces)
STATUS_START_MAX = 13  # bytes _RESPONSE_START matches: a hunt for it re-reads only this much of what it read before
_BLANK_LINES = re.compile(rb"[\r\n]*")
_HEADER_LINE = re.compile(rb"([^:\s][^:\r\n]*?)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?\n")
SP, HTAB, COLON = ord(" "), ord("\t"), ord(":")
_CHUNK_LINE = re.compile(rb"[ \t]*([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?\r?\n")

# Enum member lookups are attribute lookups through the enum class; the hot path uses these.
_OK, _NEEDS_MORE, _INVALID, _IGNORED, _EOS = (
    ParseState.OK, ParseState.NEEDS_MORE, ParseState.INVALID, ParseState.IGNORED, ParseState.EOS,
)  # fmt: skip
_REQ = Side.REQUEST

MAX_HEAD = (
    64 * 1024
)  # a longer start line + headers is garbage (h11 stops at 16 KiB; observers should be lenient)
MAX_CHUNK_LINE = 1024
MAX_FIELDS = 512  # header + trailer fields kept per message (trailers could otherwise go on forever)

# Reader states.
# _RESYNC: hunting for the next start line after garbage (see resync).
_HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _STOPPED, _SKIP, _RESYNC = range(10)
_CHUNKED = frozenset({_CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS})



class Http1Reader:
    """Parses the messages of one side (requests or responses).

    A response reader gets the parser's queue of requests awaiting a response (``pending``)
    and the request reader (``requests``), to tell which request a response answers (HEAD
    and CONNECT change the body rule). Plain references rather than a callback into the
    parser: the parser holds its readers, and a reference back would make every parser a
    cycle for the garbage collector.
    """

    # Two readers are built per connection; slots make that and every state access cheaper.
    __slots__ = (
        "side", "is_request", "config", "stats", "buf", "pending", "requests", "state", "msg", "sink", "remaining",
        "_head_clear", "_consumed_bad", "_direct_ts", "quiet_resync", "heads", "blocks", "max_body",
        "_bad_line", "_hunt_line", "_hunt_pos", "_line_clear",
    )  # fmt: skip

    def __init__(
        self,
        side: Side,
        config: ParserConfig,
        stats: ParserStats,
        caches: ParserCaches,
        pending: deque[Message] | None = None,
        requests: Http1Reader | None = None,
    ) -> None:
        self.side = side
        self.is_request = side is _REQ
        self.config = config
        self.max_body = max(config.max_body, 0)  # bytes of a body kept, as BodySink keeps them
        self.stats = stats
        self.buf = StreamBuffer()
        self.pending = pending
        self.requests = requests
        self.state = _HEAD
        self.msg: Message | None = None
        self.sink: BodySink | None = None
        self.remaining = 0
        # The buffer offset (base-relative, see StreamBuffer.base) before which no head ends: a search
        # for a head's end resumes there, however many attempts at a head start before it, so that
        # feeding byte by byte, or a head hunted for again and again in garbage, stays linear.
        self._head_clear = 0
        self._bad_line = 0  # where, in the buffer, the head that just failed has its first bad line (0: unknown)
        self._hunt_line = 0  # while resyncing: where in the buffer a start line may begin
        self._hunt_pos = 0  # … and how far the buffer was searched
        self._line_clear = 0  # as _head_clear, for a chunk size line or trailer line arriving in pieces
        self._consumed_bad = False
        self._direct_ts = 0
        self.quiet_resync = False  # after a gap, garbage up to the next start line is expected, not an error
        # Whole heads repeat (a client's requests; a server's responses within one Date second),
        # and so do header blocks: their parse is a function of their bytes.
        self.heads = caches.http1_request_heads if self.is_request else caches.http1_response_heads
        self.blocks = caches.http1_header_blocks

    # -- input -------------------------------------------------------------------------------
    @property
    def last_activity(self) -> int:
        """Timestamp of the newest byte this reader saw (fast paths bypass the buffer)."""
        return max(self.buf.last_ts, self._direct_ts)

    @property
    def in_message(self) -> bool:
        return self.msg is not None

    def reset(self) -> None:
        """Forget the partial message (after a gap or error); the next bytes are resynced."""
        self.msg = None
        self.sink = None
        if self.state != _STOPPED:
            self.state = _HEAD

    def stop(self) -> None:
        self.state = _STOPPED
        self.msg = None
        self.sink = None

    def gap(self, nbytes: int) -> bool:
        """Capture lost ``nbytes`` after the buffered bytes. Returns whether a message was lost.

        When the lost bytes fall inside a body of known length we can skip exactly to the
        next message; otherwise the reader resyncs at the next start line, silently.
        """
        lost = self.msg is not None or bool(self.buf.buf)
        st = self.state
        if st == _STOPPED:
            return False
        if self.buf.buf:
            self.stats.dropped_bytes += len(self.buf.buf)
            self.buf.clear()
        self.msg = None
        self.sink = None
        if st in (_LENGTH, _SKIP) and nbytes < self.remaining:
            self.remaining -= nbytes
            self.state = _SKIP
        elif st == _UNTIL_CLOSE:
            pass  # the rest of a close-delimited body is discarded until close
        else:
            self.state = _HEAD
            self.quiet_resync = True
        return lost

    def gap_in_body(self, nbytes: int, ts_ns: int) -> tuple[Message | None, int] | None:
        """Capture lost ``nbytes`` inside the body being read, whose length is known (Content-Length,
        or the chunk being read of a chunked body): the message is kept, with its exact size, and
        marked incomplete. Returns the message if it ended inside the lost bytes (else None) and
        how many lost bytes lie past its end; None (nothing changed) when the bytes were not lost
        inside such a body."""
        msg = self.msg
        remaining = self.remaining
        if msg is None or remaining <= 0 or self.buf.buf:
            return None
        st = self.state
        if st == _CHUNK_DATA:
            if nbytes >= remaining or self.sink is None:
                return None  # the chunk's end went with them, and the chunked framing with it
        elif st != _LENGTH:
            return None
        sink = self.sink
        if sink is None:
            sink = self.sink = BodySink(self.config.max_body, msg.head.block.encoding)
        msg.incomplete = True
        n = nbytes if nbytes < remaining else remaining
        sink.lose(n)
        self.remaining = remaining - n
        self._direct_ts = ts_ns
        msg.last_ts = ts_ns
        if self.remaining:
            return None, 0
        return self._complete(ts_ns)[1], nbytes - n

    # -- parsing -------------------------------------------------------------------------------
    def try_whole(self, data: bytes, ts_ns: int) -> tuple[ParseState, Message | None] | None:
        """An idle reader's chunk is often exactly one message (one SSL_write): cut it out whole.

        Such a message skips the buffer, its timestamp marks and the body state machine. If the
        head parses but the body is not all there, what follows the head is buffered and
        parsing goes on from the parsed head, so nothing is parsed twice. None: declined
        before touching any state (a head that is not all there, or ends with bare LFs).
        """
        if data[:1] in (b"\r", b"\n"):
            return None
        head_end = data.find(b"\r\n\r\n")
        if head_end < 0 or head_end > MAX_HEAD:
            return None
        raw = data[:head_end]
        if type(raw) is not bytes:
            raw = bytes(raw)  # a bytearray slice is no dict key
        head = self.heads.get(raw)
        if head is None:
            if not _no_bare_lf_end(data, 0, head_end):
                return None
            head = self._parse_head_bytes(raw, True)
            if head is None:
                return None
        end = head_end + 4
        n = self._framing(head) if head.answers else head.framing
        if n >= 0 and (n == 0 or head.block.encoding is None) and len(data) - end >= n:
            if len(data) > end + n:
                # More messages follow in the same chunk (pipelining): only they are buffered.
                self._direct_ts = ts_ns
                self.buf.append(data[end + n :], ts_ns)
            return _OK, self._whole(head, data, end, n, ts_ns, ts_ns)
        # The head never enters the buffer; only what follows it does.
        self._direct_ts = ts_ns
        if len(data) > end:
            self.buf.append(data[end:], ts_ns)
        return self._after_head(head, 0, n, ts_ns, ts_ns)

    def next_message(self) -> tuple[ParseState, Message | None]:
        state = self.state
        if state == _STOPPED:
            if self.buf.buf:
                self.stats.dropped_bytes += len(self.buf.buf)
                self.buf.clear()
            return _EOS, None
        if state == _HEAD:
            return self._parse_head()
        if state == _RESYNC:
            return self._parse_head() if self._hunt() else (_NEEDS_MORE, None)
        if state == _LENGTH:
            return self._read_length()
        if state == _UNTIL_CLOSE:
            self._take_until_close()
            return _NEEDS_MORE, None
        if state == _SKIP:
            n = min(self.remaining, len(self.buf.buf))
            self.buf.consume(n)
            self.stats.dropped_bytes += n
            self.remaining -= n
            if self.remaining:
                return _NEEDS_MORE, None
            self.state = _HEAD
            return _IGNORED, None
        return self._read_chunked()

    def finish_at_close(self) -> Message | None:
        """Connection closed: a close-delimited body ends here."""
        if self.state == _UNTIL_CLOSE and self.msg is not None and self.sink is not None:
            self._take_until_close()
            return self._complete(None)[1]
        return None

    def resync(self) -> None:
        """Skip to the next plausible start line (counted by the caller as one parse error).

        The hunt goes on as bytes come (state _RESYNC) and reads each byte a bounded number of
        times, so hostile garbage costs time in proportion to its size: a request line holds one
        LF, its last byte, so each line is searched once, when its LF comes, and only over its
        last RESYNC_KEEP bytes; a status line start has a fixed length. What no start line can
        begin in is dropped, so a resync ends at the same byte however the stream was chunked
        (the earliest complete start line is also the leftmost one).
        """
        bad_line = self._bad_line
        self._bad_line = 0
        self.reset()
        # After a bad body the broken message is already consumed: the next one may start at 0.
        # After a head with a bad line, every start line before that line has the same head end,
        # hence the same bad line: the hunt starts at it.
        start = 0 if self._consumed_bad else max(bad_line, 1)
        self._consumed_bad = False
        if self.state == _STOPPED:
            return
        self.state = _RESYNC
        self._hunt_line = self._hunt_pos = start
        self._hunt()

    def _hunt(self) -> bool:
        """Look for a start line from where the hunt stands. Found: drop what comes before it and go
        back to reading heads (True). Else drop, in batches, what no start line can begin in."""
        sbuf = self.buf
        buf = sbuf.buf
        line = self._hunt_line
        if self.is_request:
            pos = self._hunt_pos
            while True:
                lf = buf.find(b"\n", pos)
                if lf < 0:
                    break
                m = _REQUEST_START.search(buf, max(line, lf + 1 - RESYNC_KEEP), lf + 1)
                if m is not None:
                    return self._hunted(m.start())
                line = pos = lf + 1
            pos = len(buf)
            droppable = max(line, pos - RESYNC_KEEP)
        else:
            m = _RESPONSE_START.search(buf, max(line, self._hunt_pos - STATUS_START_MAX + 1))
            if m is not None:
                return self._hunted(m.start())
            pos = len(buf)
            droppable = max(line, pos - STATUS_START_MAX + 1)
        if droppable >= RESYNC_KEEP:  # in batches: a drop per byte would cost the timestamps' bookkeeping per byte
            self.stats.dropped_bytes += droppable
            sbuf.consume(droppable)
            line = line - droppable if line > droppable else 0
            pos -= droppable
        self._hunt_line = line
        self._hunt_pos = pos
        return False

    def _hunted(self, start: int) -> bool:
        self.stats.dropped_bytes += start
        self.buf.consume(start)
        self.state = _HEAD
        return True

    def _parse_head(self) -> tuple[ParseState, Message | None]:
        sbuf = self.buf
        buf = sbuf.buf
        if not buf:
            return _NEEDS_MORE, None
        # Leading CRLFs between messages are allowed (RFC 9112 §2.2).
        if buf[0] in (CR, LF):
            sbuf.consume(_BLANK_LINES.match(buf).end())
            buf = sbuf.buf
            if not buf:
                return _NEEDS_MORE, None
        scan = self._head_clear - sbuf.base - 3
        if scan < 0:
            scan = 0
        # A head ends within MAX_HEAD bytes, or it is garbage, whether it came in one piece or many.
        limit = MAX_HEAD + 4
        # bytes.find is ~10x faster than the regex; the regex is only for heads with bare LFs.
        head_end = buf.find(b"\r\n\r\n", scan, limit)
        if head_end >= 0 and _no_bare_lf_end(buf, scan, head_end):
            end = head_end + 4
            crlf = True
        else:
            m = _HEAD_END.search(buf, scan, limit)
            if m is None:
                searched = len(buf) if len(buf) < limit else limit
                self._head_clear = sbuf.base + searched
                if searched == limit:
                    return _INVALID, None
                if not _plausible_prefix(self.side, buf):
                    return _INVALID, None
                return _NEEDS_MORE, None
            head_end, end = m.start(), m.end()
            crlf = False
        self._head_clear = sbuf.base + head_end
        if self.quiet_resync:
            # Hunting in garbage: read the head line by line up to its first bad line before copying
            # it whole, so that an attempt costs what the hunt then skips, not the head's length.
            bad = _first_bad_line(buf, head_end, crlf, self.is_request)
            if bad >= 0:
                self._bad_line = bad
                return _INVALID, None
        raw = bytes(buf[:head_end])
        head = self.heads.get(raw) if crlf else None
        if head is None:
            head = self._parse_head_bytes(raw, crlf)
            if head is None:
                self._bad_line = max(_first_bad_line(buf, head_end, crlf, self.is_request), 0)
                return _INVALID, None
        n = self._framing(head) if head.answers else head.framing
        if n >= 0 and (n == 0 or head.block.encoding is None) and len(buf) - end >= n:
            # The whole message is buffered (pipelining): cut it out at once.
            msg = self._whole(head, buf, end, n, sbuf.ts_at(0), sbuf.ts_at(end + n - 1))
            sbuf.consume(end + n)
            return _OK, msg
        return self._after_head(head, end, n)

    def _parse_head_bytes(self, raw: bytes, crlf: bool) -> Head | None:
        """The parse of a head (start line and headers, without the blank line), kept for when it repeats.

        Whole heads repeat (a client's requests; a server's responses within one Date second).
        Only CRLF heads that decode as UTF-8 are kept: the lookup skips both checks.
        """
        try:
            text = raw.decode("utf-8")
            utf8 = True
        except UnicodeDecodeError:
            text = raw.decode("latin-1")  # never fails; non-UTF-8 header bytes are rare
            utf8 = False
        head = _parse_head_text(text, crlf, self.is_request, self.blocks)
        if head is not None and crlf and utf8 and len(raw) <= MAX_HEAD:
            self.heads.put(raw, head)
        return head

    def _whole(self, head: Head, src: bytes | bytearray, end: int, n: int, first_ts: int, last_ts: int) -> Message:
        """The message whose head ends at ``end`` in ``src`` and whose ``n`` body bytes follow it."""
        self.remaining = 0
        body = body_text(bytes(src[end : end + (n if n <= self.max_body else self.max_body)]), n) if n else ""
        return Message(head, body, n, first_ts, last_ts)

    def _framing(self, head: Head) -> int:
        """How the body after a response head is framed, given the request it answers: none after
        HEAD, nor after a 2xx to CONNECT (RFC 9112 §6.3); else as the head says (Head.framing)."""
        if self.pending:
            method = self.pending[0].head.method
        elif self.requests is not None and self.requests.msg is not None:
            method = self.requests.msg.head.method  # e.g. a 100-continue request whose body is still coming
        else:
            return head.framing
        if method == "HEAD" or (method == "CONNECT" and 200 <= head.status < 300):
            return 0
        return head.framing

    def _after_head(
        self, head: Head, end: int, n: int, first_ts: int | None = None, last_ts: int | None = None
    ) -> tuple[ParseState, Message | None]:
        """The head (the first ``end`` buffered bytes, or none if the timestamps are given) is parsed and
        its body framed as ``n`` says (Head.framing): make the message, set up reading the body."""
        if first_ts is None or last_ts is None:
            first_ts, last_ts = self.buf.ts_at(0), self.buf.ts_at(end - 1)
            self.buf.consume(end)
        self.msg = Message(head, "", 0, first_ts, last_ts)
        hb = head.block
        if n == 0:
            return self._complete(None)  # 101 among them: it ends HTTP/1 on this connection
        if n == BAD_LENGTH:
            return self._invalid_after_head()
        if n == CHUNKED:
            self.sink = BodySink(self.config.max_body, hb.encoding)
            self.state = _CHUNK_SIZE
            return self._read_chunked()
        if n == UNTIL_CLOSE:
            self.sink = BodySink(self.config.max_body, hb.encoding)
            self.state = _UNTIL_CLOSE
            self._take_until_close()
            return _NEEDS_MORE, None
        # A plain body gets its sink only if it does not come whole (see body_direct).
        self.sink = BodySink(self.config.max_body, hb.encoding) if hb.encoding is not None else None
        self.remaining = n
        self.state = _LENGTH
        if not self.buf.buf:
            return _NEEDS_MORE, None  # the body comes in a later chunk (the usual case)
        return self._read_length()

    def _invalid_after_head(self) -> tuple[ParseState, Message | None]:
        self.reset()
        self._consumed_bad = True
        return _INVALID, None

    def body_direct(self, data: bytes, ts_ns: int) -> tuple[ParseState, Message | None] | None:
        """The next piece of a Content-Length or chunked body, read in place (nothing is buffered).

        Typical servers write the head and the body with separate calls. Bytes past the end
        of the body (a pipelined next message) are buffered as usual. None: not applicable.
        """
        if self.state != _LENGTH:
            if self.state in _CHUNKED and self.sink is not None and type(data) is bytes and data:
                # The next piece of a chunked body: read in place, only a tail is buffered.
                self._direct_ts = ts_ns
                return self._read_chunked(data, ts_ns)
            return None
        self._direct_ts = ts_ns
        n = min(self.remaining, len(data))
        sink = self.sink
        if sink is None and n == len(data) == self.remaining:
            # The whole of a plain body in this one chunk: no sink needed.
            return self._complete(ts_ns, body_text(bytes(data[: self.max_body]), n), n)
        if sink is None:
            sink = self.sink = BodySink(self.config.max_body)
        sink.add(data if n == len(data) else memoryview(data)[:n])
        self.remaining -= n
        if n < len(data):
            self.buf.append(data[n:], ts_ns)
        if self.remaining:
            return _NEEDS_MORE, None
        return self._complete(ts_ns)

    def _read_length(self) -> tuple[ParseState, Message | None]:
        buf = self.buf.buf
        n = min(self.remaining, len(buf))
        if n:
            if self.sink is None:  # a plain Content-Length body has none until it comes in pieces
                self.sink = BodySink(self.config.max_body)
            self.sink.add(memoryview(buf)[:n])
            self.remaining -= n
            if self.remaining == 0:
                last = self.buf.ts_at(n - 1)
                self.buf.consume(n)
                return self._complete(last)
            self.buf.consume(n)
        return _NEEDS_MORE, None

    def _take_until_close(self) -> None:
        buf = self.buf.buf
        if not buf:
            return
        if self.sink is not None and self.msg is not None:
            self.sink.add(memoryview(buf))
            self.msg.last_ts = self.buf.ts_at(len(buf) - 1)
        else:
            self.stats.dropped_bytes += len(buf)
        self.buf.clear()

    def _read_chunked(self, src: bytes | None = None, ts_ns: int = 0) -> tuple[ParseState, Message | None]:
        """Chunked body states. ``src``: a chunk that came with nothing buffered (at ``ts_ns``),
        read in place; only what is left of it is buffered.

        Walks with an offset and consumes once on the way out: consuming each size line, data
        piece and CRLF separately cost more than parsing them.
        """
        sink = self.sink
        assert sink is not None
        sbuf = self.buf
        buf = sbuf.buf if src is None else src
        pos = 0
        st = self.state
        remaining = self.remaining
        while True:
            if st == _CHUNK_DATA:
                n = min(remaining, len(buf) - pos)
                if n:
                    sink.add(memoryview(buf)[pos : pos + n])  # the view is gone before the buffer shrinks
                    pos += n
                    remaining -= n
                if remaining:
                    break
                st = _CHUNK_CRLF
                continue
            if st == _CHUNK_CRLF:
                if len(buf) - pos < 2:
                    if buf[pos : pos + 1] == b"\n":
                        pos += 1
                        st = _CHUNK_SIZE
                        continue
                    break
                if buf[pos : pos + 2] == b"\r\n":
                    pos += 2
                elif buf[pos] == LF:
                    pos += 1
                else:
                    return self._chunked_invalid(pos, remaining, src, ts_ns)
                st = _CHUNK_SIZE
                continue
            if st == _CHUNK_SIZE:
                if src is None and self._line_clear > sbuf.base + pos:
                    # The rest of a size line that came in pieces: its LF is looked for in what is new.
                    if buf.find(b"\n", self._line_clear - sbuf.base, pos + MAX_CHUNK_LINE) < 0:
                        if len(buf) - pos >= MAX_CHUNK_LINE:
                            return self._chunked_invalid(pos, remaining, src, ts_ns)
                        self._line_clear = sbuf.base + len(buf)
                        break
                # No class of the pattern spans a LF, so a match ends at the line's first LF.
                m = _CHUNK_LINE.match(buf, pos, pos + MAX_CHUNK_LINE)
                if m is None:
                    if buf.find(b"\n", pos, pos + MAX_CHUNK_LINE) >= 0 or len(buf) - pos >= MAX_CHUNK_LINE:
                        return self._chunked_invalid(pos, remaining, src, ts_ns)
                    # the size line is still arriving: none of it is read again
                    self._line_clear = sbuf.base + len(buf) - (pos if src is not None else 0)
                    break
                size = int(m[1], 16)
                pos = m.end()
                if size == 0:
                    st = _TRAILERS
                    continue
                end = pos + size
                if len(buf) - end >= 2 and buf[end] == CR and buf[end + 1] == LF:
                    # The data and its CRLF are all here (the usual case): both in one step.
                    sink.add(buf[pos:end] if size <= 4096 else memoryview(buf)[pos:end])
                    pos = end + 2
                    continue
                remaining = size
                st = _CHUNK_DATA
                continue
            # _TRAILERS: zero or more trailer lines, then an empty line.
            while True:
                clear = self._line_clear - sbuf.base if src is None else 0
                nl = buf.find(b"\n", clear if clear > pos else pos, pos + MAX_HEAD)
                if nl < 0:
                    if len(buf) - pos >= MAX_HEAD:
                        return self._chunked_invalid(pos, remaining, src, ts_ns)
                    self._line_clear = sbuf.base + len(buf) - (pos if src is not None else 0)
                    break
                line = buf[pos:nl].rstrip(b"\r")
                if not line:
                    if src is None:
                        last = sbuf.ts_at(nl)
                        sbuf.consume(nl + 1)
                    else:
                        last = ts_ns
                        sbuf.append(src[nl + 1 :], ts_ns)
                    self.remaining = remaining
                    return self._complete(last)
                hm = _HEADER_LINE.match(bytes(buf[pos : nl + 1]))
                msg = self.msg
                if hm is not None and msg is not None:
                    trailers = msg.trailers
                    if trailers is None:
                        trailers = msg.trailers = []
                    if len(msg.head.block.headers) + len(trailers) < MAX_FIELDS:
                        trailers.append(
                            (hm.group(1).decode("latin-1").lower(), hm.group(2).decode("utf-8", "replace"))
                        )
                pos = nl + 1
            break
        # Needs more bytes.
        if src is None:
            sbuf.consume(pos)
        else:
            sbuf.append(src[pos:], ts_ns)
        self.state = st
        self.remaining = remaining
        return _NEEDS_MORE, None

    def _chunked_invalid(
        self, pos: int, remaining: int, src: bytes | None, ts_ns: int
    ) -> tuple[ParseState, Message | None]:
        if src is None:
            self.buf.consume(pos)
        else:
            self.buf.append(src[pos:], ts_ns)  # resync goes on from the buffer
        self.remaining = remaining
        return self._invalid_after_head()

    def _complete(self, last_ts: int | None, body: str | None = None, size: int = 0) -> tuple[ParseState, Message]:
        """The message in progress ends (at ``last_ts``, if given), with ``body`` or what its sink holds."""
        msg = self.msg
        assert msg is not None
        if last_ts is not None:
            msg.last_ts = last_ts
        if body is not None:
            msg.body = body
            msg.body_size = size
        elif self.sink is not None:
            msg.body = self.sink.text()
            msg.body_size = self.sink.size
        self.msg = None
        self.sink = None
        self.remaining = 0
        self.state = _HEAD
        return _OK, msg

def _no_bare_lf_end(buf: bytes | bytearray, start: int, crlf_end: int) -> bool:
    """No head end written with a bare LF ("\\n\\n", "\\n\\r\\n") comes before the CRLFCRLF at ``crlf_end``."""
    return buf.find(b"\n\n", start, crlf_end) < 0 and buf.find(b"\n\r\n", start, crlf_end) < 0


def _first_bad_line(buf: bytearray, head_end: int, crlf: bool, is_request: bool) -> int:
    """Where the first line that makes the head ``buf[:head_end]`` unparseable starts (0: its start
    line), or -1 when every line reads as ``_parse_head_text`` would accept it.

    Reads the lines in place, one at a time, and stops at the first bad one.
    """
    nl = buf.find(b"\n", 0, head_end)
    line_end = head_end if nl < 0 else nl
    if not _start_line_ok(bytes(buf[:line_end]), is_request):
        return 0
    sep = b"\r\n" if crlf else b"\n"
    step = len(sep)
    pos = line_end + 1
    headers = False
    while pos < head_end:
        nl = buf.find(sep, pos, head_end)
        line_end = head_end if nl < 0 else nl
        first = buf[pos] if line_end > pos else COLON
        if first == SP or first == HTAB:
            if not headers:  # a folded line with nothing to continue
                return pos
        elif first == COLON or buf.find(b":", pos, line_end) < 0:
            return pos
        headers = True
        pos = line_end + step
    return -1


def _start_line_ok(raw: bytes, is_request: bool) -> bool:
    """Would ``_parse_head_text`` accept this start line (without its LF)?"""
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError:
        line = raw.decode("latin-1")
    if line[-1:] == "\r":
        line = line[:-1]
    if is_request:
        method, _, rest = line.partition(" ")
        path, _, version = rest.rpartition(" ")
        if method in _METHOD_SET and path and " " not in path and version in _VERSIONS:
            return True
        return _REQUEST_LINE.match(line) is not None
    code = line[9:12]
    if line[:9] in _STATUS_PREFIXES and code.isdigit() and code.isascii() and line[12:13] in ("", " "):
        return True
    return _STATUS_LINE.match(line) is not None


def _parse_head_text(text: str, crlf: bool, is_request: bool, blocks: BoundedCache) -> Head | None:
    """Start line and headers of a decoded head (without its blank line); ``blocks`` caches header blocks."""
    nl = text.find("\n")
    line = text if nl < 0 else text[:nl]
    if line[-1:] == "\r":
        line = line[:-1]
    method = path = reason = None
    status = None
    if is_request:
        # str.partition beats the regex by ~3x; the regex stays the reference for odd lines.
        method, _, rest = line.partition(" ")
        path, _, version = rest.rpartition(" ")
        if method in _METHOD_SET and path and " " not in path and version in _VERSIONS:
            minor = version[7]
        else:
            lm = _REQUEST_LINE.match(line)
            if lm is None:
                return None
            method, path, minor = lm.groups()
    else:
        code = line[9:12]
        if line[:9] in _STATUS_PREFIXES and code.isdigit() and code.isascii() and line[12:13] in ("", " "):
            minor = line[7]
            status = int(code)
            reason = line[13:]
        else:
            lm = _STATUS_LINE.match(line)
            if lm is None:
                return None
            minor, code, reason = lm.groups()
            status = int(code)
            reason = reason or ""
    block = text[nl + 1 :] if nl >= 0 else ""
    hb = blocks.get(block)
    if hb is None or hb.crlf != crlf:
        headers = _parse_headers(block, 0, "\r\n" if crlf else "\n") if nl >= 0 else []
        if headers is None:
            return None
        hb = HeaderBlock(headers, crlf)
        if len(block) <= 2048:
            blocks.put(block, hb)
    return Head("1.1" if minor == "1" else "1.0", method, path, status, reason, hb)


_METHOD_PREFIXES = tuple(m.encode() + b" " for m in METHODS)
# Enum members are looked up through the class on every use; detect runs once per connection.
_NO, _MAYBE, _YES = Confidence.NO, Confidence.MAYBE, Confidence.YES


def detect(side: Side, data: bytes) -> Confidence:
    """How sure we are that ``data``, the first bytes seen on ``side``, starts an HTTP/1 message."""
    head = bytes(data[:8192])
    if side is _REQ:
        if _REQUEST_START.match(head):
            return _YES
        if b"\n" not in head and (
            head.startswith(_METHOD_PREFIXES) or any(m.startswith(head) for m in _METHOD_PREFIXES)
        ):
            return _MAYBE  # the request line is still arriving
        return _NO
    if _RESPONSE_START.match(head):
        return _YES
    if len(head) < 13 and b"HTTP/1."[: len(head)] == head[:7]:
        return _MAYBE
    return _NO


def _plausible_prefix(side: Side, buf: bytearray) -> bool:
    """Can these bytes (no header end yet) still become a message? Lets garbage fail fast."""
    start = bytes(buf[:16])
    if side is Side.RESPONSE:
        return b"HTTP/1."[: len(start)] == start[:7]
    return any(p.startswith(start[: len(p)]) or start.startswith(p) for p in _METHOD_PREFIXES)


def _parse_headers(text: str, start: int, sep: str) -> list[tuple[str, str]] | None:
    """Header lines of ``text`` from ``start`` (no final line terminator). None if a line is not a header.

    ``sep`` is the line terminator the head uses; with bare LFs, stray CRs go with ``strip``.
    """
    headers: list[tuple[str, str]] = []
    append = headers.append
    for line in text[start:].split(sep):
        name, colon, value = line.partition(":")
        if not colon or not name or name[0] in " \t":
            if line[:1] in (" ", "\t") and headers:  # obsolete line folding: continue the previous value
                prev, pvalue = headers[-1]
                headers[-1] = (prev, f"{pvalue} {line.strip()}")
                continue
            return None
        append((name.rstrip().lower(), value.strip()))
    return headers
