"""One traced connection: protocol inference, then the chosen parser. The capture engine's only entry point.

The engine speaks in *directions* (egress: what the traced process wrote with SSL_write;
ingress: what it read). Parsers speak in *sides* (request, response). The role maps one
onto the other: a client's egress is the request side, a server's egress the response side.
"""

from __future__ import annotations

from .common import DEFAULT_CONFIG, Confidence, ParserCaches, ParserConfig, ProtocolParser, Record, Side
from .infer import Decision, Inferrer, decide_chunk

__all__ = ["ConnectionTracker"]
# (ingress side, egress side) per role, indexed by ``egress``: Side.other is a Python-level call.
_SIDES = {"client": (Side.RESPONSE, Side.REQUEST), "server": (Side.REQUEST, Side.RESPONSE)}
# A parser that keeps this feed (a guard around _feed) is fed through _feed, with the same guard
# (_feed_failed) here: one Python call less per chunk. Taken at import, so that a patched
# ProtocolParser.feed (tests make it let exceptions through) is still the one called.
_GUARDED_FEED = ProtocolParser.feed


class ConnectionTracker:
    """Feeds one connection's captured bytes to the right parser and returns stitched records.

    ``protocol`` is None while inference is undecided, then 'http1', 'http2', 'mysql',
    'pgsql', or 'unknown' once inference gave up (an unmistakable message start, such as an
    HTTP request line, can still start a parser later). ``role`` is the given role or, if None
    was given, the one inference found. No exception escapes any method.

    ``caches``: what parsers remember across connections (``ParserCaches``). Make one per
    pipeline and give it to every tracker of that pipeline; a tracker without one gives its
    parser none, and the parser keeps its own (nothing is shared across connections then).
    """

    def __init__(
        self, role: str | None = None, config: ParserConfig | None = None, *, caches: ParserCaches | None = None
    ) -> None:
        self._role: str | None = role if role in _SIDES else None
        self.config = config or DEFAULT_CONFIG
        self.caches = caches
        self.protocol: str | None = None
        self.parser: ProtocolParser | None = None
        self._direct = False  # the parser's feed is _GUARDED_FEED
        self._sides = _SIDES[role] if role in _SIDES else _SIDES["client"]  # indexed by ``egress``
        # Inference runs until it decides or gives up; its buffer is made with the first event.
        self._inferring = True
        self._inferrer: Inferrer | None = None
        self._start_records: list[Record] = []
        self._counters = {
            "inference_bytes_dropped": 0,  # bytes seen before the chosen start, or when giving up
            "inference_gave_up": 0,
            "ignored_bytes": 0,  # bytes of a connection whose protocol is unknown
            "tracker_errors": 0,  # exceptions caught here (a bug somewhere below)
        }

    # -- public API ------------------------------------------------------------------------------
    @property
    def role(self) -> str | None:
        return self._role

    @role.setter
    def role(self, role: str | None) -> None:
        """The engine may learn the role (connect/accept) after the first bytes: use it while undecided.

        Once a parser runs, the role it was started with stays: switching sides mid-stream
        would pair requests with the wrong bytes.
        """
        if role not in ("client", "server") or self.parser is not None:
            return
        self._role = role
        self._sides = _SIDES[role]
        if self._inferrer is not None:
            self._inferrer.role = role

    @property
    def stats(self) -> dict[str, int]:
        out = dict(self.parser.stats.as_dict()) if self.parser is not None else {
            "parse_errors": 0, "gap_messages": 0, "evicted": 0, "unmatched_responses": 0, "dropped_bytes": 0,
        }  # fmt: skip
        out.update(self._counters)
        return out

    def feed(self, egress: bool, data: bytes, ts_ns: int) -> list[Record]:
        if not data:
            return []
        try:
            parser = self.parser
            if parser is not None:
                side = self._sides[egress]
                if self._direct:
                    try:
                        return parser._feed(side, data, ts_ns)
                    except Exception:
                        return parser._feed_failed(side)
                return parser.feed(side, data, ts_ns)
            if self._inferring:
                inf = self._inferrer
                if inf is None:
                    if type(data) is bytes and (egress is True or egress is False):
                        # The first chunk: what Inferrer.decide would say about it alone, before
                        # buffering it, since it usually settles the protocol.
                        dec = decide_chunk(self._role, None, egress, data, len(data), 1)
                        if dec is not None and dec.parser_cls is not None:
                            self._inferring = False
                            return self._new_parser(dec).feed(self._sides[egress], data, ts_ns)
                        if dec is None:
                            self._inferrer = Inferrer(self._role)
                            self._inferrer.add_data(egress, data, ts_ns)
                            return []  # undecided: deciding the same buffer again says the same
                    inf = self._inferrer = Inferrer(self._role)
                inf.add_data(egress, data, ts_ns)
                return self._try_decide(final=False)
            if data[:1].isupper() and self._rearm(egress, data, ts_ns):
                return self._start_records
            self._counters["ignored_bytes"] += len(data)
        except Exception:
            self._counters["tracker_errors"] += 1
        return []

    def gap(self, egress: bool, nbytes: int, ts_ns: int) -> list[Record]:
        try:
            if self.parser is not None:
                return self.parser.gap(self._side(egress), nbytes, ts_ns)
            if self._inferring:
                if self._inferrer is None:
                    self._inferrer = Inferrer(self._role)
                self._inferrer.add_gap(egress, nbytes, ts_ns)
        except Exception:
            self._counters["tracker_errors"] += 1
        return []

    def expire(self, now_ns: int) -> list[Record]:
        try:
            if self.parser is not None:
                return self.parser.expire(now_ns)
        except Exception:
            self._counters["tracker_errors"] += 1
        return []

    def close(self, ts_ns: int) -> list[Record]:
        out: list[Record] = []
        try:
            if self.parser is not None:
                return self.parser.close(ts_ns)  # parsers hand out lists of their own making
            if self._inferring:
                if self._inferrer is None:
                    self._inferrer = Inferrer(self._role)
                out += self._try_decide(final=True)
            if self.parser is not None:
                out += self.parser.close(ts_ns)
        except Exception:
            self._counters["tracker_errors"] += 1
        return out

    # -- internals -------------------------------------------------------------------------------
    def _rearm(self, egress: bool, data: bytes, ts_ns: int) -> bool:
        """After giving up, a chunk that is certainly a message start (YES) still starts a parser.

        Attached mid-connection, the first dozens of chunks can all be the tail of one long
        body; the next request line is worth catching. Only chunks starting with an
        uppercase letter are looked at (HTTP methods, ``HTTP/``, the HTTP/2 preface), so a
        busy connection of an unsupported protocol costs one byte test per chunk.
        """
        inf = Inferrer(self._role)
        inf.add_data(egress, data, ts_ns)
        dec = inf.decide(final=False)
        if dec is None or dec.parser_cls is None or dec.confidence < Confidence.YES:
            return False
        self._start_records = self._start(dec, inf)
        return True

    def _side(self, egress: bool) -> Side:
        return self._sides[egress]

    def _try_decide(self, final: bool) -> list[Record]:
        inf = self._inferrer
        assert inf is not None
        dec = inf.decide(final)
        if dec is None:
            return []
        self._inferrer = None
        self._inferring = False
        if dec.parser_cls is None:
            self.protocol = "unknown"
            self._counters["inference_gave_up"] += 1
            self._counters["inference_bytes_dropped"] += inf.nbytes
            return []
        return self._start(dec, inf)

    def _new_parser(self, dec: Decision) -> ProtocolParser:
        assert dec.parser_cls is not None
        parser = dec.parser_cls(self.config, self.caches)
        self.parser = parser
        self._direct = type(parser).feed is _GUARDED_FEED
        self.protocol = parser.name or dec.parser_cls.__name__.lower()
        if self._role is None:
            self._role = dec.role
        self._sides = _SIDES[self._role or "client"]
        return parser

    def _start(self, dec: Decision, inf: Inferrer) -> list[Record]:
        parser = self._new_parser(dec)
        sides = self._sides
        events = inf.events
        out: list[Record] = []
        start_e, start_i = dec.start
        # Replay what inference buffered, in capture order, from each direction's chosen start.
        for i, (kind, egress, payload, ts) in enumerate(events):
            if i < (start_e if egress else start_i):
                if kind == "data":
                    assert isinstance(payload, bytes)
                    self._counters["inference_bytes_dropped"] += len(payload)
                continue
            if kind == "data":
                assert isinstance(payload, bytes)
                out += parser.feed(sides[egress], payload, ts)
            else:
                assert isinstance(payload, int)
                out += parser.gap(sides[egress], payload, ts)
        return out
