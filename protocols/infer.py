"""Protocol and role inference from the first bytes of a connection.

Each parser class says how sure it is (``detect``) that some bytes are the start of its
protocol on the request or the response side. When the traced process's role is unknown we
try both readings of the connection (egress = requests → client, egress = responses →
server) and keep the one a parser recognises. Capture can start mid-connection, so the
start of every captured chunk is a candidate message start, not just the first byte:
``SSL_write`` calls usually begin at a message boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .common import Confidence, ProtocolParser, Side
from .http1 import Http1Parser
from .http2 import Http2Parser
from .mysql import MySQLParser
from .pgsql import PgSQLParser

# Tried in this order on ties: the most specific signatures first.
PARSER_CLASSES: tuple[type[ProtocolParser], ...] = (Http2Parser, Http1Parser, PgSQLParser, MySQLParser)

DETECT_WINDOW = 8192  # bytes from a candidate start shown to ``detect``
MAYBE_MIN_BYTES = 256  # a MAYBE alone is accepted once this much was seen (or both sides spoke)
MAX_BYTES = 16 * 1024  # give up after buffering this much without a decision
MAX_CHUNKS = 32  # … or this many chunks


@dataclass(slots=True)
class Decision:
    parser_cls: type[ProtocolParser] | None  # None: gave up ('unknown')
    role: str | None  # 'client' or 'server'
    confidence: Confidence = Confidence.NO
    # per direction (egress, ingress): index into the buffered events where replay starts
    start: tuple[int, int] = (0, 0)


# The side each direction carries under a role, indexed by ``egress`` (False: what the traced
# process read, True: what it wrote): a client writes requests, a server responses.
SIDES: dict[str, tuple[Side, Side]] = {
    "client": (Side.RESPONSE, Side.REQUEST),
    "server": (Side.REQUEST, Side.RESPONSE),
}
_BOTH_ROLES = ("client", "server")
# Looked up per connection: enum attribute access is a Python-level call.
_NO, _YES = Confidence.NO, Confidence.YES


class Inferrer:
    """Buffers events until a decision. Events: ('data', egress, bytes, ts) or ('gap', egress, n, ts)."""

    __slots__ = ("role", "classes", "events", "nbytes", "nchunks")

    def __init__(self, role: str | None, classes: Sequence[type[ProtocolParser]] | None = None) -> None:
        self.role = role
        self.classes = classes if classes is not None else PARSER_CLASSES
        self.events: list[tuple[str, bool, bytes | int, int]] = []
        self.nbytes = 0
        self.nchunks = 0

    def add_data(self, egress: bool, data: bytes, ts_ns: int) -> None:
        self.events.append(("data", egress, data, ts_ns))
        self.nbytes += len(data)
        self.nchunks += 1

    def add_gap(self, egress: bool, nbytes: int, ts_ns: int) -> None:
        self.events.append(("gap", egress, nbytes, ts_ns))

    def _candidates(self, egress: bool) -> list[tuple[int, bytes]]:
        """(event index, bytes from there up to the window or the next gap) for each chunk of a direction."""
        events = self.events
        idx = [i for i, ev in enumerate(events) if ev[1] is egress]
        out = []
        for n, i in enumerate(idx):
            if events[i][0] != "data":
                continue
            parts: list[bytes] = []
            size = 0
            for j in idx[n:]:
                kind, _, payload, _ = events[j]
                if kind == "gap":
                    break
                assert isinstance(payload, bytes)
                parts.append(payload)
                size += len(payload)
                if size >= DETECT_WINDOW:
                    break
            out.append((i, b"".join(parts)[:DETECT_WINDOW]))
        return out

    def decide(self, final: bool = False) -> Decision | None:
        """A decision, or None to keep buffering. ``final``: no more bytes will come (close)."""
        roles = (self.role,) if self.role in SIDES else _BOTH_ROLES
        events = self.events
        if len(events) == 1:
            kind, egress, data, _ = events[0]
            if kind == "data" and lone_chunk(egress, data):
                return decide_chunk(self.role, self.classes, egress, data, self.nbytes, self.nchunks, final)
        cands_e, cands_i = self._candidates(True), self._candidates(False)
        best: tuple | None = None  # sort key
        best_dec: Decision | None = None
        for r_i, role in enumerate(roles):
            i_side, e_side = SIDES[role]
            for p_i, cls in enumerate(self.classes):
                detect = cls.detect
                # Per direction: the most confident start (first YES, else first best), or None.
                found_e = found_i = None
                for cands, side, is_e in ((cands_e, e_side, True), (cands_i, i_side, False)):
                    found = None
                    for ev_i, data in cands:
                        try:
                            conf = detect(side, data)
                            if type(conf) is not Confidence:  # a plain int (or bool) is accepted too
                                conf = Confidence(conf)
                        except Exception:
                            continue  # a broken detect counts as NO
                        if conf > _NO and (found is None or conf > found[0]):
                            found = (conf, ev_i)
                            if conf is _YES:
                                break
                    if is_e:
                        found_e = found
                    else:
                        found_i = found
                if found_e is None and found_i is None:
                    continue
                if found_i is None:
                    conf, first_ev = found_e  # type: ignore[misc]
                elif found_e is None:
                    conf, first_ev = found_i
                else:
                    conf = max(found_e[0], found_i[0])
                    first_ev = min(found_e[1], found_i[1])
                # A reading under which one direction's bytes fit nothing loses to one where both
                # fit (e.g. mid-connection HTTP/2: SETTINGS fit either side, a request header
                # block only the request side).
                misfits = (found_e is None and bool(cands_e)) + (found_i is None and bool(cands_i))
                key = (-int(conf), misfits, first_ev, r_i, p_i)
                if best is None or key < best:
                    best = key
                    start_e = found_e[1] if found_e is not None else 0
                    start_i = found_i[1] if found_i is not None else 0
                    best_dec = Decision(cls, role, conf, (start_e, start_i))
                    if conf is _YES and misfits == 0 and first_ev == 0:
                        return best_dec  # later readings only tie, and ties go to the earlier one
        both_sides = bool(cands_e) and bool(cands_i)
        return _settle(best_dec, self.role, final, both_sides, self.nbytes, self.nchunks)


def _settle(
    best: Decision | None, role: str | None, final: bool, both_sides: bool, nbytes: int, nchunks: int
) -> Decision | None:
    """The best reading so far, if it is good enough; giving up, if it is time; else None (keep buffering)."""
    if best is not None and (
        best.confidence is _YES or final or both_sides or nbytes >= MAYBE_MIN_BYTES or nchunks >= 4
    ):
        return best
    if final or nbytes >= MAX_BYTES or nchunks >= MAX_CHUNKS:
        return Decision(None, role, _NO)
    return None


def lone_chunk(egress: object, data: object) -> bool:
    """Can ``decide_chunk`` decide a buffer holding only this chunk (the general ranking's own types)?"""
    return type(data) is bytes and (egress is True or egress is False)


def decide_chunk(
    role: str | None,
    classes: Sequence[type[ProtocolParser]] | None,
    egress: bool,
    data: bytes,
    nbytes: int,
    nchunks: int,
    final: bool = False,
) -> Decision | None:
    """``Inferrer.decide`` for a buffer holding one chunk (every connection's first call; see lone_chunk).

    ``nbytes`` and ``nchunks`` are the buffer's counters. With one candidate in one direction,
    every reading that fits has no misfit and starts at event 0, so the general ranking reduces
    to: the first YES in (role, parser) order, else the first MAYBE. ``classes`` None: PARSER_CLASSES.
    Taking that shortcut instead of the general ranking earns 12% on http1-many-conn
    (instructions, callgrind, bench/bench_parsers_http.py, 2026-12-05).
    """
    if classes is None:
        classes = PARSER_CLASSES
    window = data[:DETECT_WINDOW]
    maybe: Decision | None = None
    for r in (role,) if role in SIDES else _BOTH_ROLES:
        side = SIDES[r][egress]
        for cls in classes:
            try:
                conf = cls.detect(side, window)
                if type(conf) is not Confidence:  # a plain int (or bool) is accepted too
                    conf = Confidence(conf)
            except Exception:
                continue  # a broken detect counts as NO
            if conf is _YES:
                return Decision(cls, r, conf, (0, 0))
            if maybe is None and conf > _NO:
                maybe = Decision(cls, r, conf, (0, 0))
    return _settle(maybe, role, final, False, nbytes, nchunks)
