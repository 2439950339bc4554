"""HTTP/2 frames → per-stream state → records when a stream ends.

``Http2Parser`` holds, per direction, a frame reader and a header decoder (parse.py); it
assembles header blocks from HEADERS/PUSH_PROMISE + CONTINUATION frames and hands frames to
the ``StreamTable``, which pairs each stream's request and response into a record.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from hyperframe.frame import Frame as HFrame

from ..common import (
    ParserCaches,
    ParserConfig,
    ParserStats,
    ParseState,
    ProtocolError,
    ProtocolParser,
    Record,
    Side,
)
from ..http_common import EMPTY_FIELDS, TABLE, BodySink, body_text, headers_json
from .parse import (
    FrameReader,
    HeaderDecoder,
    detect,
    header_fragment,
)
from .types import (
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    ERROR_CODES,
    HEADERS,
    MAX_HEADER_BLOCK,
    PADDED,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    SETTINGS_HEADER_TABLE_SIZE,
    Fields,
    GrpcCounter,
    Half,
    Stream,
)

__all__ = ["Http2Parser", "StreamTable"]

MAX_TRAILER_FIELDS = 256


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
    """One direction of the connection: its frame reader, its header decoder, the block being assembled."""

    def __init__(self, side: Side, parser: Http2Parser) -> None:
        self.side = side
        self.reader = FrameReader(side, parser.stats, parser.config.max_buffer)
        self.headers = HeaderDecoder(parser.stats, parser.caches)
        self.block: _Block | None = None
        self.dropping = -1  # stream whose oversized header block we refused; its CONTINUATIONs follow
        self.mid = False  # this direction's capture did not start at the connection preface


class Http2Parser(ProtocolParser):
    name = "http2"
    table = TABLE

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        super().__init__(config)
        self.caches = caches if caches is not None else ParserCaches()
        self.streams = StreamTable(self.config, self.stats)
        self.dirs = {
            Side.REQUEST: _Direction(Side.REQUEST, self),
            Side.RESPONSE: _Direction(Side.RESPONSE, self),
        }

    # -- detection ---------------------------------------------------------------------------------
    detect = staticmethod(detect)  # the preface, or frames whose header blocks fit ``side`` (parse.py)

    # -- input -------------------------------------------------------------------------------------
    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        d = self.dirs[side]
        r = d.reader
        if r.aligned and not r.skip and not r.buf.buf:
            # Nothing buffered (the usual case): the frames of the chunk are cut straight out of it
            # (all its bytes share ts_ns) and only an unfinished last frame is buffered. Not
            # copying every chunk through the buffer earns 47% on http2-one-conn (instructions,
            # callgrind, bench/bench_parsers_http.py, 2026-12-05).
            if type(data) is not bytes:
                data = bytes(data)
            o = r.cut(data, self._on_frame, d, ts_ns)
            if o == len(data):
                return self.streams.take()
            r.buf.base += o
            r.append(data[o:] if o else data, ts_ns)
        else:
            r.append(data, ts_ns)
        self._pump(d, final=False)
        return self.streams.take()

    def _pump(self, d: _Direction, final: bool) -> None:
        """Handle the frames the buffer holds, from wherever the reader is (start, skip, alignment)."""
        r = d.reader
        if r.start is None:
            start = r.check_start(final)
            if start is None:
                return
            if not start:
                d.mid = True
                d.headers.go_tolerant()
        while True:
            state = r.ready(final)
            if state is ParseState.OK:
                sbuf = r.buf
                sbuf.consume(r.cut(bytes(sbuf.buf), self._on_frame, d, 0, sbuf))
            elif state is ParseState.INVALID:
                if not r.quiet:
                    self.stats.parse_errors += 1
                    r.quiet = True
                d.block = None
                d.headers.go_tolerant()
                self.streams.mark_partial()
            else:
                break

    def _on_frame(
        self, d: _Direction, ftype: int, flags: int, sid: int, payload: bytes, first_ts: int, last_ts: int
    ) -> None:
        """One frame of direction ``d``. A frame that breaks the handling (a bug, or bytes hyperframe
        refuses) counts as a parse error and the frames after it are handled as usual."""
        try:
            side = d.side
            if d.block is not None and ftype != CONTINUATION:
                # A header block must be continued immediately (RFC 9113 §6.10).
                self.stats.parse_errors += 1
                d.block = None
                d.headers.go_tolerant()
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
                    d.headers.go_tolerant()
                    self.streams.mark_partial()
                    return
                if flags & END_HEADERS:
                    d.block = None
                    block = b"".join(blk.parts)
                    self._on_block(d, blk.kind, blk.sid, blk.promised, block, blk.end_stream, blk.first_ts, last_ts)
                return
            if ftype == HEADERS:
                # By hand, like DATA: HEADERS is the other per-stream frame, and building a hyperframe
                # object for it cost more than decoding its (usually cached) block. Without those
                # flags there is no padding or priority field to strip.
                block = header_fragment(flags, payload) if flags & (PADDED | PRIORITY_FLAG) else payload
                if block is None:
                    raise ProtocolError("HEADERS padding or priority longer than the frame")
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
                size = hf.settings.get(SETTINGS_HEADER_TABLE_SIZE)
                if size is not None:
                    # Our peer's encoder may now use up to this much: raise our decoder's ceiling for it.
                    self.dirs[side.other].headers.allow_table_size(size)
        except Exception:
            self.stats.parse_errors += 1
            d.block = None
            d.headers.go_tolerant()

    def _on_block(
        self, d: _Direction, kind: int, sid: int, promised: int, block: bytes, end_stream: bool, first_ts: int,
        last_ts: int,
    ) -> None:  # fmt: skip
        fields, partial = d.headers.decode(block)
        if kind == PUSH_PROMISE:
            self.streams.on_push(sid, promised, fields, partial, first_ts)
        else:
            self.streams.on_headers(d.side, sid, fields, partial, end_stream, first_ts, last_ts)

    # -- lifecycle ---------------------------------------------------------------------------------
    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            d = self.dirs[side]
            if d.reader.start is None:
                d.reader.check_start(final=True)
                if not d.reader.start:
                    d.mid = True
            cut = d.reader.gap(nbytes)
            d.block = None
            if cut is not None and cut[1] == DATA and d.reader.aligned:
                # Only the middle of one DATA frame was lost: framing and HPACK state are intact,
                # and only that stream's body is incomplete; its size is still known.
                sid, _, flags, lost = cut
                self.streams.lose_data(side, sid, lost, bool(flags & END_STREAM), ts_ns)
            else:
                self.stats.gap_messages += 1
                d.headers.go_tolerant()
                self.streams.mark_partial()
                self.streams.mark_incomplete(side)  # DATA of any open stream may have gone too
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
        d.headers.go_tolerant()


def _header(ftype: int, flags: int, sid: int, length: int) -> bytes:
    return length.to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big")


class StreamTable:
    """Open streams of one connection, keyed by stream id, in creation order."""

    def __init__(self, config: ParserConfig, stats: ParserStats) -> None:
        self.config = config
        self.stats = stats
        self.streams: dict[int, Stream] = {}
        self._pending_out: list[Record] = []

    def _open(self, sid: int, side: Side) -> Stream:
        """A stream first seen now, on ``side``."""
        st = Stream(sid)
        self.streams[sid] = st
        if side is Side.RESPONSE:
            # A response to a request we never saw (attached mid-connection, or the request was
            # lost): still recorded, with headers_partial, but counted.
            self.stats.unmatched_responses += 1
        if len(self.streams) > self.config.max_pending:
            old_id = next(iter(self.streams))
            self.stats.evicted += 1
            self._pending_out.append(self._record(self.streams.pop(old_id), None))
        return st

    def take(self) -> list[Record]:
        out = self._pending_out
        if not out:
            return []  # never hand out our own list: callers may concatenate it with later output
        self._pending_out = []
        return out

    def on_headers(
        self, side: Side, sid: int, fields: Fields, partial: bool, end_stream: bool, first_ts: int, last_ts: int,
    ) -> None:  # fmt: skip
        st = self.streams.get(sid)
        if st is None:
            st = self._open(sid, side)
        if partial:
            st.partial = True
        half = st.req if side is Side.REQUEST else st.resp
        if half.first_ts is None:
            half.first_ts = first_ts
        half.last_ts = last_ts
        if not half.has_headers:
            if side is Side.RESPONSE:
                status = fields.first.get(":status")
                if status is not None and status.startswith("1") and not end_stream:
                    return  # informational (100, 103): the final headers follow
            half.headers = fields
            half.has_headers = True
            ctype = fields.first.get("content-type")
            if ctype is not None and ctype.startswith("application/grpc"):
                st.grpc = True
            elif st.partial and ctype is None and any(k.startswith("grpc-") for k, _ in fields):
                # Mid-connection the content-type often hides behind an unknown dynamic index;
                # grpc-timeout / grpc-encoding / grpc-status still give gRPC away.
                st.grpc = True
        else:
            trailers = half.trailers
            if not trailers:
                half.trailers = fields[:MAX_TRAILER_FIELDS]  # a list of its own, never the shared Fields
            elif len(trailers) < MAX_TRAILER_FIELDS:  # repeated trailer blocks must not grow forever
                trailers.extend(fields[: MAX_TRAILER_FIELDS - len(trailers)])
        if end_stream:
            self._end(st, side, last_ts)

    def on_push(self, sid: int, promised: int, fields: Fields, partial: bool, ts: int) -> None:
        """A server push: the promised request's headers come from the server, it has no body."""
        st = self.streams.get(promised)
        if st is None:
            st = self._open(promised, Side.REQUEST)
        st.req.headers = fields
        st.req.has_headers = True
        st.req.first_ts = st.req.last_ts = ts
        st.req.ended = True
        st.partial = st.partial or partial

    def on_data(
        self, side: Side, sid: int, data: bytes | memoryview, end_stream: bool, first_ts: int, last_ts: int,
        mid: bool = False,
    ) -> None:  # fmt: skip
        # Mid-connection, a stream's HEADERS may predate the capture; otherwise DATA for an unknown
        # stream belongs to one we already emitted (reset, evicted) and is ignored.
        st = self.streams.get(sid)
        if st is None:
            if not mid:
                return
            st = self._open(sid, side)
        half = st.req if side is Side.REQUEST else st.resp
        if half.first_ts is None:
            half.first_ts = first_ts
        half.last_ts = last_ts
        if data:
            half.data_bytes += len(data)
            if half.sink is None:
                held = half.chunk
                if held is not None:
                    # A second chunk after all: the sink the first one would have made, fed in order.
                    half.chunk = None
                    half.sink = BodySink(self.config.max_body)
                    half.sink.add(held)
                elif not st.grpc and half.headers.first.get("content-encoding") is None:
                    # Most bodies are one plain DATA frame: held as is, rendered once in _record.
                    half.chunk = data
                    data = b""
                else:
                    half.sink = BodySink(
                        self.config.max_body, half.headers.first.get("content-encoding") if not st.grpc else None
                    )
                    if st.grpc:
                        half.grpc = GrpcCounter(half.sink, half.headers.first.get("grpc-encoding"))
            if not data:
                pass
            elif half.grpc is not None:
                half.grpc.add(data)
            else:
                half.sink.add(data)
        if end_stream:
            self._end(st, side, last_ts)

    def on_rst(self, sid: int, code: int, ts: int) -> None:
        st = self.streams.pop(sid, None)
        if st is None:
            return
        st.reset = ERROR_CODES[code] if 0 <= code < len(ERROR_CODES) else f"0x{code:x}"
        st.reset_ts = ts
        self._pending_out.append(self._record(st, ts))

    def _end(self, st: Stream, side: Side, ts: int) -> None:
        half = st.req if side is Side.REQUEST else st.resp
        half.ended = True
        if side is Side.RESPONSE:
            # The response is complete: that ends the exchange even if the request never said
            # END_STREAM (a server may answer before reading the whole upload).
            self.streams.pop(st.stream_id, None)
            self._pending_out.append(self._record(st, ts))

    def lose_data(self, side: Side, sid: int, nbytes: int, end_stream: bool, ts: int) -> None:
        """``nbytes`` of DATA of stream ``sid`` were not captured: counted in its body size, and the
        body is marked incomplete; the stream goes on (and ends, if the lost frame ended it)."""
        st = self.streams.get(sid)
        if st is None:
            return
        half = st.req if side is Side.REQUEST else st.resp
        self._incomplete(half)
        half.data_bytes += nbytes
        if half.sink is not None:
            half.sink.lose(nbytes)
        if half.first_ts is None:
            half.first_ts = ts
        half.last_ts = ts
        if end_stream:
            self._end(st, side, ts)

    def mark_incomplete(self, side: Side) -> None:
        for st in self.streams.values():
            half = st.req if side is Side.REQUEST else st.resp
            if not half.ended:
                self._incomplete(half)

    def _incomplete(self, half: Half) -> None:
        """From now on this half's body is not all there: what is kept of it stops here."""
        half.incomplete = True
        if half.sink is None:
            half.sink = BodySink(self.config.max_body, None if half.grpc else half.headers.first.get("content-encoding"))
            held = half.chunk
            if held is not None:
                half.chunk = None
                half.sink.add(held)
        half.sink.lose(0)

    def mark_partial(self) -> None:
        for st in self.streams.values():
            st.partial = True

    def drop(self, sid: int) -> bool:
        return self.streams.pop(sid, None) is not None

    def expire(self, now_ns: int) -> list[Record]:
        cutoff = now_ns - self.config.request_timeout_ns
        # Idle since the cutoff, not merely old: a long gRPC stream that still moves stays.
        stale = [
            s for s, st in self.streams.items() if max(st.req.last_ts or 0, st.resp.last_ts or 0) < cutoff
        ]
        for sid in stale:
            self.stats.evicted += 1
            self._pending_out.append(self._record(self.streams.pop(sid), None))
        return self.take()

    def close(self) -> list[Record]:
        for sid in list(self.streams):
            self.stats.evicted += 1
            self._pending_out.append(self._record(self.streams.pop(sid), None))
        return self.take()

    def _record(self, st: Stream, end_ts: int | None) -> Record:
        req, resp = st.req, st.resp
        rh, sh = req.headers, resp.headers
        status = sh.first.get(":status")
        fields: dict[str, Any] = EMPTY_FIELDS | {
            "http_version": "2",
            "req_method": rh.first.get(":method"),
            "req_path": rh.first.get(":path"),
            "req_headers": _json(req) if req.has_headers else None,
            "req_body": _body(req, self.config.max_body),
            "req_body_size": req.data_bytes,
            "resp_status": int(status) if status is not None and status.isdigit() else None,
            "resp_message": f"RST_STREAM {st.reset}" if st.reset else None,
            "resp_headers": _json(resp) if resp.has_headers else None,
            "resp_body": _body(resp, self.config.max_body),
            "resp_body_size": resp.data_bytes,
            "content_type": sh.first.get("content-type") or rh.first.get("content-type"),
            "stream_id": st.stream_id,
            "headers_partial": st.partial or not req.has_headers,
            "body_incomplete": req.incomplete or resp.incomplete,
        }
        if st.grpc:
            fields["req_messages"] = req.grpc.count if req.grpc else 0
            fields["resp_messages"] = resp.grpc.count if resp.grpc else 0
            gs = _field(resp.trailers, "grpc-status") or sh.first.get("grpc-status")
            if gs is not None and gs.strip().isdigit():
                fields["grpc_status"] = int(gs)
            gm = _field(resp.trailers, "grpc-message") or sh.first.get("grpc-message")
            if gm is not None:
                fields["grpc_message"] = unquote(gm)  # percent-encoded on the wire (gRPC spec)
        start = req.first_ts
        if end_ts is None:
            end = resp.last_ts if resp.ended else None
            latency = end - start if end is not None and start is not None else None
            time_ns = end if end is not None else (resp.last_ts or req.last_ts or start or 0)
        else:
            latency = end_ts - start if start is not None else None
            time_ns = end_ts
        return Record(TABLE, time_ns, latency, fields)


def _field(headers: list[tuple[str, str]] | tuple[()], name: str) -> str | None:
    for k, v in headers:
        if k == name:
            return v
    return None


def _body(half: Half, max_body: int) -> str:
    if half.sink is not None:
        return half.sink.text()
    chunk = half.chunk
    if chunk is None:
        return ""
    return body_text(bytes(chunk[: max(max_body, 0)]), len(chunk))  # as BodySink would keep it


def _json(half: Half) -> str:
    if not half.trailers:
        return half.headers.json()
    return headers_json(half.headers + half.trailers)
