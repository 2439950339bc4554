"""ConnectionTracker: direction → side mapping, inference hand-off and replay, never raising."""

from __future__ import annotations

from pathlib import Path

import pytest
from apptrace.protocols import ConnectionTracker, ParserConfig, Record, Side
from apptrace.protocols.http2.types import PREFACE
from apptrace.protocols.mysql import MySQLParser
from apptrace.protocols.pgsql import PgSQLParser

from tests.protocols.conftest import feed_parser, feed_tracker, fixture_chunks

HTTP1 = [
    "http1/curl_keepalive.jsonl",
    "http1/curl_chunked.jsonl",
    "http1/curl_gzip.jsonl",
    "http1/curl_head.jsonl",
    "http1/curl_post_expect.jsonl",
    "http1/curl_http10_close.jsonl",
    "http1/pipelined.jsonl",
]
HTTP2 = [
    "http2/curl_h2c.jsonl",
    "http2/nghttp_multi.jsonl",
    "http2/h2load.jsonl",
    "grpc/grpcio_calls.jsonl",
    "grpc/grpcio_gzip.jsonl",
]


def test_exports() -> None:
    assert ConnectionTracker and ParserConfig and Record and Side


@pytest.mark.parametrize("rel", HTTP1 + HTTP2)
@pytest.mark.parametrize("role", [None, "client", "server"])
def test_fixtures_through_tracker(rel: str, role: str | None) -> None:
    """Client and server views of one connection give the same records, given or inferred roles."""
    chunks = fixture_chunks(rel)
    views = {}
    for client_view in (True, False):
        given = role if role is None else ("client" if client_view else "server")
        t = ConnectionTracker(role=given)
        views[client_view] = feed_tracker(t, chunks, client_view=client_view)
        assert t.protocol == ("http1" if rel in HTTP1 else "http2")
        assert t.role == ("client" if client_view else "server")
        assert t.stats["parse_errors"] == 0 and t.stats["inference_bytes_dropped"] == 0
        assert views[client_view]
    assert views[True] == views[False]


def test_role_given_is_trusted() -> None:
    t = ConnectionTracker(role="server")
    t.feed(False, b"GET / HTTP/1.1\r\n\r\n", 1)
    (r,) = t.feed(True, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5)
    assert (t.protocol, t.role, r.latency_ns) == ("http1", "server", 4)


def test_undecided_until_enough_bytes() -> None:
    t = ConnectionTracker()
    assert t.feed(True, b"GE", 1) == []
    assert t.protocol is None and t.role is None
    t.feed(True, b"T /x HTTP/1.1\r\n\r\n", 2)
    assert (t.protocol, t.role) == ("http1", "client")
    (r,) = t.feed(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    assert r.fields["req_path"] == "/x" and r.latency_ns == 2  # first byte arrived at ts=1


def test_http2_preface_in_pieces() -> None:
    t = ConnectionTracker()
    t.feed(True, PREFACE[:5], 1)
    assert t.protocol is None
    t.feed(True, PREFACE[5:], 2)
    assert (t.protocol, t.role) == ("http2", "client")


def test_gives_up_on_unknown_protocol() -> None:
    t = ConnectionTracker()
    for i in range(40):
        assert t.feed(i % 2 == 0, bytes([0x16, 0x03, 0x01]) + bytes(range(200)), i) == []
    assert t.protocol == "unknown"
    assert t.stats["inference_gave_up"] == 1 and t.stats["inference_bytes_dropped"] > 0
    t.feed(True, b"GET / HTTP/1.1\r\n\r\n", 99)
    # 32 chunks (MAX_CHUNKS) were buffered, then the other 8 were ignored
    assert t.stats["inference_bytes_dropped"] == 32 * 203
    assert t.stats["ignored_bytes"] == 8 * 203
    # ... but a certain message start still starts a parser (attached mid-way through a long body)
    assert t.protocol == "http1" and t.role == "client"
    (r,) = t.feed(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 100)
    assert r.fields["req_path"] == "/" and r.latency_ns == 1


def test_close_decides_with_what_it_has() -> None:
    t = ConnectionTracker()
    t.feed(True, b"\x00\x01\x02", 1)
    assert t.close(2) == [] and t.protocol == "unknown"


def test_mid_connection_http1_starts_at_a_later_chunk() -> None:
    t = ConnectionTracker()
    t.feed(True, b"tail of an old request body", 1)  # attached mid-message
    t.feed(True, b"GET /next HTTP/1.1\r\n\r\n", 2)
    (r,) = t.feed(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3)
    assert (t.protocol, r.fields["req_path"]) == ("http1", "/next")
    assert t.stats["inference_bytes_dropped"] == len(b"tail of an old request body")


def test_gap_during_inference_is_replayed() -> None:
    t = ConnectionTracker()
    t.feed(True, b"GET /a HTTP/1.1\r\nContent-Length: 10\r\n\r\n01", 1)
    t.gap(True, 3, 2)
    assert t.protocol == "http1"
    t.feed(True, b"56789GET /b HTTP/1.1\r\n\r\n", 3)
    (r,) = t.feed(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    # the gap fell inside /a's body, whose length is known: /a is kept, its body marked incomplete
    assert (r.fields["req_path"], r.fields["req_body_size"], r.fields["body_incomplete"]) == ("/a", 10, True)
    (r,) = t.feed(False, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 5)
    assert r.fields["req_path"] == "/b" and t.stats["gap_messages"] == 0


def test_expire_passes_through() -> None:
    t = ConnectionTracker(config=ParserConfig(request_timeout_ns=10))
    t.feed(True, b"GET /a HTTP/1.1\r\n\r\n", 100)
    assert t.expire(105) == []
    (r,) = t.expire(200)
    assert r.latency_ns is None and t.stats["evicted"] == 1


def test_empty_and_odd_inputs_never_raise() -> None:
    t = ConnectionTracker(role="weird")
    assert t.role is None
    assert t.feed(True, b"", 1) == [] and t.gap(False, 0, 1) == [] and t.expire(0) == [] and t.close(0) == []


SQL = {"mysql": MySQLParser, "pgsql": PgSQLParser}


@pytest.mark.parametrize(
    "rel",
    sorted(
        f"{proto}/{p.name}"
        for proto in SQL
        for p in (Path(__file__).resolve().parent.parent / "fixtures" / proto).glob("*.jsonl")
    ),
)
@pytest.mark.parametrize("client_view", [True, False], ids=["client", "server"])
def test_sql_fixtures_are_inferred_and_replayed(rel: str, client_view: bool) -> None:
    """The SQL parsers come from another engineer: the tracker must pick them and lose nothing."""
    proto = rel.split("/")[0]
    cls = SQL[proto]
    chunks = fixture_chunks(rel)
    direct = feed_parser(cls(), chunks)
    t = ConnectionTracker()
    assert feed_tracker(t, chunks, client_view=client_view) == direct
    assert (t.protocol, t.role) == (proto, "client" if client_view else "server")
    assert t.stats["inference_bytes_dropped"] == 0


def test_role_learned_after_the_first_bytes() -> None:
    t = ConnectionTracker()
    t.feed(False, b"GE", 1)  # undecided
    t.role = "server"  # accept() seen late
    t.feed(False, b"T / HTTP/1.1\r\n\r\n", 2)
    assert (t.protocol, t.role) == ("http1", "server")
    (r,) = t.feed(True, b"HTTP/1.1 204 No Content\r\n\r\n", 3)
    assert r.latency_ns == 2
    t2 = ConnectionTracker()
    t2.feed(True, b"GET / HTTP/1.1\r\n\r\n", 1)
    t2.role = "server"  # too late: the parser runs with the inferred role
    assert t2.role == "client"


@pytest.mark.parametrize("skip", [1, 2, 3, 5])
@pytest.mark.parametrize("client_view", [True, False], ids=["client", "server"])
def test_mid_connection_http2_role_from_header_blocks(skip: int, client_view: bool) -> None:
    """No preface: SETTINGS fit either side, but a request header block fits only the request side."""
    t = ConnectionTracker()
    recs = feed_tracker(t, fixture_chunks("grpc/grpcio_calls.jsonl")[skip:], client_view=client_view)
    assert (t.protocol, t.role) == ("http2", "client" if client_view else "server")
    assert recs and all(r.fields["stream_id"] % 2 == 1 for r in recs)


def test_a_finished_connection_is_freed_without_the_cycle_collector() -> None:
    """Trackers and parsers are made per connection: a reference cycle would leave each one to the GC."""
    import gc

    runs = [fixture_chunks(rel) for rel in HTTP1 + HTTP2]
    for chunks in runs:  # first use imports parser modules and fills caches: their garbage is not ours
        feed_tracker(ConnectionTracker(), chunks)
    gc.collect()
    gc.disable()
    try:
        for chunks in runs:
            feed_tracker(ConnectionTracker(), chunks)
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_parser_error_is_counted_by_the_parser_whichever_way_it_is_fed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception inside a parser's _feed is counted by the parser (ProtocolParser.feed's guard), not the tracker."""
    from apptrace.protocols.http1 import Http1Parser

    real = Http1Parser._feed

    def fragile(self, side, data, ts_ns):  # noqa: ANN001, ANN202
        if data.startswith(b"BOOM"):
            raise RuntimeError("a parser bug")
        return real(self, side, data, ts_ns)

    monkeypatch.setattr(Http1Parser, "_feed", fragile)
    t = ConnectionTracker()
    t.feed(True, b"GET /a HTTP/1.1\r\n\r\n", 1)
    assert t.feed(True, b"BOOM", 2) == []
    assert (t.stats["parse_errors"], t.stats["tracker_errors"]) == (1, 0)
    t.feed(True, b"GET /b HTTP/1.1\r\n\r\n", 3)
    recs = t.feed(False, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 4)
    assert [r.fields["req_path"] for r in recs] == ["/a", "/b"]
