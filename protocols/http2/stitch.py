"""HTTP/2 frames (already decoded) → per-stream state → records when a stream ends."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from ..common import ParserConfig, ParserStats, Record, Side
from ..http_common import TABLE, BodySink, body_text, headers_json
from .types import ERROR_CODES, Fields, GrpcCounter, Half, Stream

MAX_TRAILER_FIELDS = 256


class StreamTable:
    """Open streams of one connection, keyed by stream id, in creation order."""

    def __init__(self, config: ParserConfig, stats: ParserStats) -> None:
        self.config = config
        self.stats = stats
        self.streams: dict[int, Stream] = {}
        self._pending_out: list[Record] = []

    def _get(self, sid: int, side: Side, create: bool, ts: int) -> Stream | None:
        st = self.streams.get(sid)
        if st is not None or not create:
            return st
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
            st = self._get(sid, side, True, first_ts)
            assert st is not None
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
        st = self._get(promised, Side.REQUEST, True, ts)
        assert st is not None
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
            st = self._get(sid, side, mid, first_ts)
            if st is None:
                return
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
        fields: dict[str, Any] = {
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
            "grpc_status": None,
            "grpc_message": None,
            "stream_id": st.stream_id,
            "req_messages": None,
            "resp_messages": None,
            "headers_partial": st.partial or not req.has_headers,
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
    # What a BodySink without decoder would render from this one chunk.
    return body_text(bytes(chunk[: max(max_body, 0)]), len(chunk))


def _json(half: Half) -> str:
    if not half.trailers:
        return half.headers.json()
    return headers_json(half.headers + half.trailers)
