"""One traced connection: protocol inference, then the chosen parser. The capture engine's only entry point.

The engine speaks in *directions* (egress: what the traced process wrote with SSL_write;
ingress: what it read). Parsers speak in *sides* (request, response). The role maps one
onto the other: a client's egress is the request side, a server's egress the response side.
"""

from __future__ import annotations

from collections.abc import Sequence

from .common import (
    DEFAULT_CONFIG,
    Confidence,
    ParserCaches,
    ParserConfig,
    ParserStats,
    ProtocolParser,
    Record,
)
from .infer import SIDES, Decision, Inferrer, decide_chunk, lone_chunk

__all__ = ["ConnectionTracker"]


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
        self._role: str | None = role if role in SIDES else None
        self.config = config or DEFAULT_CONFIG
        self.caches = caches
        self.protocol: str | None = None
        self.parser: ProtocolParser | None = None
        self._sides = SIDES[role] if role in SIDES else SIDES["client"]  # indexed by ``egress``
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
        self._sides = SIDES[role]
        if self._inferrer is not None:
            self._inferrer.role = role

    @property
    def stats(self) -> dict[str, int]:
        out = (self.parser.stats if self.parser is not None else ParserStats()).as_dict()
        out.update(self._counters)
        return out

    def feed(self, egress: bool, data: bytes, ts_ns: int) -> list[Record]:
        if not data:
            return []
        try:
            parser = self.parser
            if parser is not None:
                return parser.feed(self._sides[egress], data, ts_ns)
            if self._inferring:
                inf = self._inferrer
                if inf is None and lone_chunk(egress, data):
                    # The first chunk usually settles the protocol: decided on its own, before
                    # anything is buffered (what Inferrer.decide would say of a buffer holding it),
                    # then, with nothing to replay, fed to the parser like any later chunk.
                    dec = decide_chunk(self._role, None, egress, data, len(data), 1)
                    if dec is not None:
                        self._decided(dec, (), len(data))
                        parser = self.parser
                        return parser.feed(self._sides[egress], data, ts_ns) if parser is not None else []
                if inf is None:
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
                return self.parser.gap(self._sides[egress], nbytes, ts_ns)
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
        self._start_records = self._decided(dec, inf.events, inf.nbytes)
        return True

    def _try_decide(self, final: bool) -> list[Record]:
        inf = self._inferrer
        assert inf is not None
        dec = inf.decide(final)
        if dec is None:
            return []
        return self._decided(dec, inf.events, inf.nbytes)

    def _decided(self, dec: Decision, events: Sequence, nbytes: int) -> list[Record]:
        """Inference is over: give up, or start the parser ``dec`` chose and replay to it what was
        buffered (``events``, ``nbytes`` bytes), in capture order, from each direction's chosen
        start; what came before that start is dropped."""
        self._inferrer = None
        self._inferring = False
        cls = dec.parser_cls
        if cls is None:
            self.protocol = "unknown"
            self._counters["inference_gave_up"] += 1
            self._counters["inference_bytes_dropped"] += nbytes
            return []
        parser = self.parser = cls(self.config, self.caches)
        self.protocol = parser.name or cls.__name__.lower()
        if self._role is None:
            self._role = dec.role
        sides = self._sides = SIDES[self._role or "client"]
        out: list[Record] = []
        start_e, start_i = dec.start
        for i, (kind, egress, payload, ts) in enumerate(events):
            if i < (start_e if egress else start_i):
                if kind == "data":
                    self._counters["inference_bytes_dropped"] += len(payload)
            elif kind == "data":
                out += parser.feed(sides[egress], payload, ts)
            else:
                out += parser.gap(sides[egress], payload, ts)
        return out
