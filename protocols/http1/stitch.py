"""HTTP/1.x messages → records: requests wait in a FIFO, responses pop it in order (pipelining).

``Http1Parser`` holds the two readers (parse.py) of a connection and pairs what they produce.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ..common import (
    DEFAULT_CONFIG,
    Confidence,
    ParserCaches,
    ParserConfig,
    ParserStats,
    ParseState,
    ProtocolParser,
    Record,
    Side,
)
from ..http_common import TABLE
from .parse import _HEAD, _UNTIL_CLOSE, Http1Reader, detect
from .types import Message

__all__ = ["Http1Parser", "make_record"]

_OK, _NEEDS_MORE, _INVALID = ParseState.OK, ParseState.NEEDS_MORE, ParseState.INVALID
_REQUEST, _RESPONSE = Side.REQUEST, Side.RESPONSE

# Every http_events field, with its value when a side is absent or the column does not apply.
_EMPTY: dict[str, Any] = {
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
}


def make_record(req: Message | None, resp: Message | None) -> Record:
    """One ``http_events`` record; ``resp`` None means the request got no response (latency NULL)."""
    fields = _EMPTY.copy()  # copying a prepared dict is ~3x cheaper than building the literal
    fields["http_version"] = (req or resp).version if (req or resp) else None
    if req is not None:
        fields["req_method"] = req.method
        fields["req_path"] = req.path
        # Message.headers_json, inline (two calls fewer per record)
        block = req.block
        fields["req_headers"] = block.plain_json if block is not None else req.headers_json()
        fields["req_body"] = req.body
        fields["req_body_size"] = req.body_size
        fields["content_type"] = req.content_type
    if resp is not None:
        fields["resp_status"] = resp.status
        fields["resp_message"] = resp.reason
        block = resp.block
        fields["resp_headers"] = block.plain_json if block is not None else resp.headers_json()
        fields["resp_body"] = resp.body
        fields["resp_body_size"] = resp.body_size
        if resp.content_type is not None:
            fields["content_type"] = resp.content_type
    if resp is not None and req is not None:
        return Record(TABLE, resp.last_ts, max(resp.last_ts - req.first_ts, 0), fields)
    if req is not None:
        return Record(TABLE, req.last_ts, None, fields)
    assert resp is not None
    return Record(TABLE, resp.last_ts, None, fields)


class Http1Parser(ProtocolParser):
    name = "http1"
    table = TABLE

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        # What ProtocolParser.__init__ does, inline: a parser is built per connection, and the
        # super() call plus a ParserConfig per parser were a third of that cost.
        self.config = config = config or DEFAULT_CONFIG
        self.stats = stats = ParserStats()
        if caches is None:
            caches = ParserCaches()
        self.pending: deque[Message] = deque()
        self.req = Http1Reader(_REQUEST, config, stats, caches)
        self.resp = Http1Reader(_RESPONSE, config, stats, caches, self.pending, self.req)
        self.eos = False  # 101 Switching Protocols: the rest is not HTTP/1

    @classmethod
    def detect(cls, side: Side, data: bytes) -> Confidence:
        return detect(side, data)

    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        reader = self.req if side is _REQUEST else self.resp
        if self.eos:
            self.stats.dropped_bytes += len(data)
            return []
        # reader.idle, inline (this runs for every chunk)
        if reader.state == _HEAD and not reader.buf.buf and not reader.quiet_resync and reader.msg is None:
            first = reader.try_whole(data, ts_ns)
        else:
            first = reader.body_direct(data, ts_ns)
        if first is None:
            reader.buf.append(data, ts_ns)
            return self._drain(reader)
        state = first[0]
        if state is _NEEDS_MORE:
            return []
        if state is _OK and not reader.buf.buf:
            # One whole message and nothing after it (the usual chunk): _drain's work without its loop.
            reader.quiet_resync = False
            out: list[Record] = []
            if reader.is_request:
                msg = first[1]
                pending = self.pending
                if not msg.answered and len(pending) < self.config.max_pending:
                    pending.append(msg)  # _on_request, inline, when nothing is evicted
                else:
                    self._on_request(msg, out)
            else:
                self._on_response(first[1], out)
            return out
        return self._drain(reader, first)

    def _drain(
        self, reader: Http1Reader, first: tuple[ParseState, Message | None] | None = None
    ) -> list[Record]:
        out: list[Record] = []
        is_req = reader.is_request
        while True:
            if first is None:
                if not reader.buf.buf:
                    return out  # with nothing buffered every state needs more (checked by the properties)
                state, msg = reader.next_message()
            else:
                state, msg = first
                first = None
            if state is _OK:
                reader.quiet_resync = False
                assert msg is not None
                if is_req:
                    self._on_request(msg, out)
                else:
                    self._on_response(msg, out)
                    if self.eos:
                        return out
            elif state is _NEEDS_MORE:
                return out
            elif state is _INVALID:
                # One error per stretch of garbage: until a message parses again, further
                # failures are the same garbage seen in more pieces.
                if not reader.quiet_resync:
                    self.stats.parse_errors += 1
                    reader.quiet_resync = True
                reader.resync()
                continue
            elif state is ParseState.EOS:
                return out
            reader.quiet_resync = False  # OK or IGNORED: back in sync

    def _on_request(self, msg: Message, out: list[Record]) -> None:
        if msg.answered:
            return  # its response already went out, paired with the request's head
        self.pending.append(msg)
        while len(self.pending) > self.config.max_pending:
            self.stats.evicted += 1
            out.append(make_record(self.pending.popleft(), None))

    def _on_response(self, msg: Message, out: list[Record]) -> None:
        status = msg.status or 0
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): the final response follows
        if self.pending:
            req: Message | None = self.pending.popleft()
        elif self.req.msg is not None and not self.req.msg.answered:
            # The server answered before the request body finished (e.g. 417 to 100-continue).
            req = self.req.msg
            req.answered = True
            if self.req.sink is not None:
                req.body = self.req.sink.text()
                req.body_size = self.req.sink.size
        else:
            self.stats.unmatched_responses += 1
            return
        out.append(make_record(req, msg))
        if status == 101 or (req.method == "CONNECT" and 200 <= status < 300):
            # Whatever follows (WebSocket, h2c, a CONNECT tunnel) is another protocol: stop rather
            # than count garbage.
            self.eos = True
            self.req.stop()
            self.resp.stop()

    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            reader = self.req if side is Side.REQUEST else self.resp
            lost = reader.gap(nbytes) or nbytes > 0
            if side is Side.RESPONSE and self.pending:
                # A response was due, so the lost bytes most likely carried (part of) the answer to
                # the oldest request: drop that request too, or every later pairing is off by one.
                self.pending.popleft()
                lost = True
            if lost:
                self.stats.gap_messages += 1
            return []
        except Exception:
            self.stats.parse_errors += 1
            self._reset(side)
            return []

    def expire(self, now_ns: int) -> list[Record]:
        out: list[Record] = []
        cutoff = now_ns - self.config.request_timeout_ns
        while self.pending and self.pending[0].first_ts < cutoff:
            if self.resp.in_message and self.resp.last_activity >= cutoff:
                break  # its response is still streaming in (a long download is not a lost request)
            self.stats.evicted += 1
            out.append(make_record(self.pending.popleft(), None))
        return out

    def close(self, ts_ns: int) -> list[Record]:
        out: list[Record] = []
        try:
            resp = self.resp
            if resp.state == _UNTIL_CLOSE:  # only a close-delimited body ends at close
                msg = resp.finish_at_close()
                if msg is not None:
                    self._on_response(msg, out)
            while self.pending:
                self.stats.evicted += 1
                out.append(make_record(self.pending.popleft(), None))
            req = self.req
            if req.msg is not None:  # a message cut off by the close
                self.stats.gap_messages += 1
            if resp.msg is not None:
                self.stats.gap_messages += 1
            # reset() changes nothing on a reader at rest, the usual state at a close
            if req.msg is not None or req.sink is not None or req.state != _HEAD or req._scan_from:
                req.reset()
            if resp.msg is not None or resp.sink is not None or resp.state != _HEAD or resp._scan_from:
                resp.reset()
        except Exception:
            self.stats.parse_errors += 1
        return out

    def _reset(self, side: Side) -> None:
        (self.req if side is Side.REQUEST else self.resp).reset()
