"""HTTP/1.x messages → records: requests wait in a FIFO, responses pop it in order (pipelining).

``Http1Parser`` holds the two readers (parse.py) of a connection and pairs what they produce.
"""

from __future__ import annotations

from collections import deque

from ..common import (
    ParserCaches,
    ParserConfig,
    ParseState,
    ProtocolParser,
    Record,
    Side,
)
from ..http_common import EMPTY_FIELDS, TABLE, headers_json
from .parse import _HEAD, _LENGTH, _UNTIL_CLOSE, Http1Reader, detect
from .types import Message

__all__ = ["Http1Parser", "make_record"]

_OK, _NEEDS_MORE, _INVALID = ParseState.OK, ParseState.NEEDS_MORE, ParseState.INVALID
_REQUEST, _RESPONSE = Side.REQUEST, Side.RESPONSE

def make_record(req: Message | None, resp: Message | None) -> Record:
    """One ``http_events`` record; ``resp`` None means the request got no response (latency NULL)."""
    fields = EMPTY_FIELDS.copy()  # copying a prepared dict is ~3x cheaper than building the literal
    # What each head settles (Head.fields) goes in whole: the request's first, then the response's,
    # whose content type, when it has one, is the body's that the record shows.
    if req is not None:
        fields.update(req.head.fields)
        fields["req_body"] = req.body
        fields["req_body_size"] = req.body_size
        if req.trailers:
            fields["req_headers"] = headers_json(req.headers)
    if resp is not None:
        fields.update(resp.head.fields)
        fields["resp_body"] = resp.body
        fields["resp_body_size"] = resp.body_size
        if resp.trailers:
            fields["resp_headers"] = headers_json(resp.headers)
        if req is None:
            fields["http_version"] = resp.head.version
    if (req is not None and req.incomplete) or (resp is not None and resp.incomplete):
        fields["body_incomplete"] = True
    if resp is not None and req is not None:
        return Record(TABLE, resp.last_ts, max(resp.last_ts - req.first_ts, 0), fields)
    if req is not None:
        return Record(TABLE, req.last_ts, None, fields)
    assert resp is not None
    return Record(TABLE, resp.last_ts, None, fields)


class Http1Parser(ProtocolParser):
    __slots__ = ("pending", "req", "resp", "eos")

    name = "http1"
    table = TABLE

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        super().__init__(config)
        if caches is None:
            caches = ParserCaches()
        self.pending: deque[Message] = deque()
        self.req = Http1Reader(_REQUEST, self.config, self.stats, caches)
        self.resp = Http1Reader(_RESPONSE, self.config, self.stats, caches, self.pending, self.req)
        self.eos = False  # 101 Switching Protocols: the rest is not HTTP/1

    detect = staticmethod(detect)  # a request or status line, or the start of one (parse.py)

    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        if self.eos:
            self.stats.dropped_bytes += len(data)
            return []
        reader = self.req if side is _REQUEST else self.resp
        if reader.buf.buf:
            reader.buf.append(data, ts_ns)
            first = None
        else:
            # Nothing buffered: read the chunk in place, as a whole message when the reader is
            # between messages, else as the next piece of a body. None: buffer it after all.
            if reader.state == _HEAD and reader.msg is None and not reader.quiet_resync:
                first = reader.try_whole(data, ts_ns)
            else:
                first = reader.body_direct(data, ts_ns)
            if first is None:
                reader.buf.append(data, ts_ns)
            elif first[0] is _NEEDS_MORE:
                return []  # what the fast paths leave over is never a message of its own
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
                if not is_req:
                    self._on_response(msg, out)
                    if self.eos:
                        return out
                elif not msg.answered:  # else its response already went out, paired with its head
                    pending = self.pending
                    pending.append(msg)
                    while len(pending) > self.config.max_pending:
                        self.stats.evicted += 1
                        out.append(make_record(pending.popleft(), None))
            elif state is _NEEDS_MORE:
                return out
            elif state is _INVALID:
                # One error per stretch of garbage: until a message parses again, further
                # failures are the same garbage seen in more pieces.
                if not reader.quiet_resync:
                    self.stats.parse_errors += 1
                    reader.quiet_resync = True
                reader.resync()
            elif state is ParseState.EOS:
                return out
            else:
                reader.quiet_resync = False  # IGNORED: back in sync

    def _on_response(self, msg: Message, out: list[Record]) -> None:
        status = msg.head.status or 0
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
        if status == 101 or (req.head.method == "CONNECT" and 200 <= status < 300):
            # Whatever follows (WebSocket, h2c, a CONNECT tunnel) is another protocol: stop rather
            # than count garbage.
            self.eos = True
            self.req.stop()
            self.resp.stop()

    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            reader = self.req if side is Side.REQUEST else self.resp
            kept = reader.gap_in_body(nbytes, ts_ns)
            if kept is not None:
                # Lost inside a body of known length: the message stays, marked incomplete.
                msg, beyond = kept
                out: list[Record] = []
                if msg is not None:
                    if side is Side.RESPONSE:
                        self._on_response(msg, out)
                    elif not msg.answered:
                        self.pending.append(msg)
                        while len(self.pending) > self.config.max_pending:
                            self.stats.evicted += 1
                            out.append(make_record(self.pending.popleft(), None))
                    if beyond and not self.eos:
                        out += self._gap_between(reader, side, beyond)
                return out
            return self._gap_between(reader, side, nbytes)
        except Exception:
            return self._feed_failed(side)

    def _gap_between(self, reader: Http1Reader, side: Side, nbytes: int) -> list[Record]:
        """Capture lost ``nbytes`` that end or begin a message: what they fell in is dropped."""
        lost = reader.gap(nbytes) or nbytes > 0
        if side is Side.RESPONSE and self.pending:
            # A response was due, so the lost bytes most likely carried (part of) the answer to
            # the oldest request: drop that request too, or every later pairing is off by one.
            self.pending.popleft()
            lost = True
        if lost:
            self.stats.gap_messages += 1
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
            # A body of known length that the close cuts short lost its tail (capture lost the last
            # records, or the peer stopped short): the message is kept, marked incomplete, as for a
            # gap inside it. A request first, so that a response cut short still finds it.
            for side, reader in ((_REQUEST, self.req), (_RESPONSE, self.resp)):
                if reader.msg is not None and reader.state == _LENGTH and not self.eos:
                    out += self.gap(side, reader.remaining, ts_ns)
            while self.pending:
                self.stats.evicted += 1
                out.append(make_record(self.pending.popleft(), None))
            req = self.req
            if req.msg is not None:  # a message cut off by the close
                self.stats.gap_messages += 1
            if resp.msg is not None:
                self.stats.gap_messages += 1
            req.reset()
            resp.reset()
        except Exception:
            self.stats.parse_errors += 1
        return out

    def _reset(self, side: Side) -> None:
        (self.req if side is Side.REQUEST else self.resp).reset()
