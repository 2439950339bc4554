"""The contract every protocol parser follows.

``protocols`` is sans-I/O: bytes and timestamps go in, stitched request/response
records come out. Nothing here knows about BPF, file descriptors, sockets or DuckDB.

A protocol parser sees two byte streams of one connection: the *request* side
(what the client sends) and the *response* side (what the server sends). The
connection tracker (``protocols.tracker``) decides which captured direction is
which, from the traced process's role or, failing that, from inference.

Rules every parser keeps:
- no exception escapes ``feed_*``/``gap``/``expire``/``close`` for any input;
  malformed data increments ``stats.parse_errors`` and the parser resynchronises;
- the records produced from a stream never depend on how it was split into chunks;
- buffered bytes and pending requests are bounded (``ParserConfig``).
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Side(enum.Enum):
    REQUEST = "request"
    RESPONSE = "response"

    # Members are singletons that compare by identity, so they hash by identity too: Enum's
    # own __hash__ is a Python-level call, paid on every lookup in a dict keyed by side.
    __hash__ = object.__hash__

    @property
    def other(self) -> Side:
        return Side.RESPONSE if self is Side.REQUEST else Side.REQUEST


class ParseState(enum.Enum):
    """Outcome of trying to cut one frame/message out of a buffer."""

    OK = "ok"
    NEEDS_MORE = "needs_more"
    INVALID = "invalid"
    IGNORED = "ignored"
    EOS = "eos"  # end of stream for this parser (e.g. 101 Switching Protocols)


class ProtocolError(Exception):
    """Malformed traced data. Parsers catch it, count it and resynchronise; it never escapes."""


@dataclass(frozen=True, slots=True)
class ParserConfig:
    max_body: int = 1024  # bytes of body kept per message (``*_body_size`` keeps the full size)
    max_buffer: int = 4 * 1024 * 1024  # unparsed bytes kept per side before we give up and resync
    max_pending: int = 1024  # requests awaiting a response, per connection
    request_timeout_ns: int = 120 * 1_000_000_000  # evict unanswered requests after this


# Frozen, so every parser and tracker built without a config can share one (building one costs
# as much as the rest of a parser's set-up).
DEFAULT_CONFIG = ParserConfig()


class BoundedCache(dict):
    """A dict that forgets everything once it holds ``limit`` entries.

    What repeats on the wire (a client's request heads, its opening header blocks) is what was
    seen recently, so starting afresh costs a few misses, never unbounded memory, and keeps the
    hit path a plain dict lookup.
    """

    __slots__ = ("limit",)

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def put(self, key: Any, value: Any) -> None:
        if len(self) >= self.limit:
            self.clear()
        self[key] = value


class Memo(BoundedCache):
    """A BoundedCache that works out what it lacks: ``memo[key]`` is a plain dict lookup when the
    key is there, else ``compute(key)``, kept when ``keep(key)`` says so (or always, without it).
    An exception from ``compute`` is raised to the caller and nothing is kept."""

    __slots__ = ("compute", "keep")

    def __init__(
        self, limit: int, compute: Callable[[Any], Any], keep: Callable[[Any], bool] | None = None
    ) -> None:
        super().__init__(limit)
        self.compute = compute
        self.keep = keep

    def __missing__(self, key: Any) -> Any:
        value = self.compute(key)
        if self.keep is None or self.keep(key):
            self.put(key, value)
        return value


class ParserCaches:
    """What parsers remember across connections, because connections repeat each other.

    A client sends the same request heads on every connection, a server the same response
    heads, an HTTP/2 client the same opening header blocks, a PostgreSQL driver the same Parse
    messages. Every entry is a function of its key's bytes, so sharing one across connections
    changes no record, only how often the work is done.

    The caller makes one per pipeline and passes it to every ``ConnectionTracker`` (which hands
    it to the parser it builds), or to parsers it builds itself; a parser built without one
    keeps a private one. Nothing here is process-wide: two pipelines never share entries.
    Not thread-safe, like the parsers.
    """

    __slots__ = (
        "http1_request_heads",
        "http1_response_heads",
        "http1_header_blocks",
        "http2_opening_blocks",
        "http2_states",
        "_memos",
    )

    def __init__(self) -> None:
        # HTTP/1 heads without their blank line (bytes) -> their parse (http1.parse.Http1Reader).
        self.http1_request_heads: BoundedCache = BoundedCache(1024)
        self.http1_response_heads: BoundedCache = BoundedCache(1024)
        # An HTTP/1 header block (text after the start line) -> its HeaderBlock.
        self.http1_header_blocks: BoundedCache = BoundedCache(1024)
        # HTTP/2: (table state, max table size, header block) -> what decoding it gives; the
        # numbers that name table states come from http2_states (see http2.parse.HeaderDecoder).
        self.http2_opening_blocks: BoundedCache = BoundedCache(1024)
        self.http2_states = itertools.count(1)
        # Caches of a computed value, by name (see memo): e.g. PostgreSQL Parse payloads.
        self._memos: dict[str, Memo] = {}

    def memo(self, name: str, limit: int, compute: Callable[[Any], Any], keep: Callable[[Any], bool] | None = None) -> Memo:
        """The shared ``Memo`` called ``name``, made with these arguments when first asked for."""
        memo = self._memos.get(name)
        if memo is None:
            memo = self._memos[name] = Memo(limit, compute, keep)
        return memo


@dataclass(slots=True)
class Record:
    """One stitched request/response pair.

    ``table`` names the DuckDB table (``http_events``, ``mysql_events``, ``pgsql_events``).
    ``time_ns`` is when the response completed (or, for a request with no response,
    when the request completed). ``latency_ns`` runs from the request's first byte to
    the response's last byte and is ``None`` when there was no response.
    ``fields`` carries the protocol-specific columns of the table contract
    (``req_method``, ``resp_status``, ``req_cmd``, ``rows`` ...), never the
    connection columns (pid, addresses, role), which the caller adds.
    """

    table: str
    time_ns: int
    latency_ns: int | None
    fields: dict[str, Any]


@dataclass(slots=True)
class ParserStats:
    parse_errors: int = 0  # malformed messages (each resync counts one)
    gap_messages: int = 0  # messages dropped because capture lost bytes inside them
    evicted: int = 0  # requests emitted without a response (timeout, cap or close)
    unmatched_responses: int = 0  # responses with no request to pair with
    dropped_bytes: int = 0  # bytes discarded while resynchronising or over the buffer cap

    def as_dict(self) -> dict[str, int]:
        return {
            "parse_errors": self.parse_errors,
            "gap_messages": self.gap_messages,
            "evicted": self.evicted,
            "unmatched_responses": self.unmatched_responses,
            "dropped_bytes": self.dropped_bytes,
        }


class Confidence(enum.IntEnum):
    NO = 0
    MAYBE = 1  # plausible, but another protocol could also claim these bytes
    YES = 2  # a signature no other supported protocol shares (e.g. the HTTP/2 preface)


class ProtocolParser:
    """Base class of the per-protocol parsers (http1, http2, mysql, pgsql).

    Subclasses implement ``_feed`` and may override the others. Every parser takes
    ``(config, caches)``: the caches shared by the connections of one pipeline
    (``ParserCaches``); a parser that remembers nothing across connections ignores them, one
    that does and is given none keeps a private set.
    """

    # A parser is built per connection and its attributes are read per chunk: subclasses list theirs too.
    __slots__ = ("config", "stats")

    name: str = ""  # 'http1', 'http2', 'mysql', 'pgsql'
    table: str = ""

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        self.config = config or DEFAULT_CONFIG
        self.stats = ParserStats()

    @classmethod
    def detect(cls, side: Side, data: bytes) -> Confidence:
        """How sure are we that ``data``, the first bytes seen on ``side``, is this protocol?"""
        return Confidence.NO

    def feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        """Append bytes captured at ``ts_ns`` to ``side``; return the records completed so far."""
        try:
            return self._feed(side, data, ts_ns)
        except Exception:  # a bug or hostile input must not kill the tracer: count and reset
            return self._feed_failed(side)

    def _feed_failed(self, side: Side) -> list[Record]:
        """What ``feed`` does when ``_feed`` raised (a parser whose own guard caught something does the same)."""
        self.stats.parse_errors += 1
        self._reset(side)
        return []

    def gap(self, side: Side, nbytes: int, ts_ns: int) -> list[Record]:
        """Capture lost ``nbytes`` on ``side``: drop the message they fall in, carry on."""
        self.stats.gap_messages += 1
        self._reset(side)
        return []

    def expire(self, now_ns: int) -> list[Record]:
        """Emit requests older than ``request_timeout_ns`` with no response (latency NULL)."""
        return []

    def close(self, ts_ns: int) -> list[Record]:
        """The connection closed: finish close-delimited messages, emit pending requests."""
        return []

    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        raise NotImplementedError

    def _reset(self, side: Side) -> None:
        """Forget the partial message on ``side`` after an error or gap."""

