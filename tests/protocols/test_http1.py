"""HTTP/1.x parser: real captures (curl, raw pipelining client ↔ Python http.server) and edge cases."""

from __future__ import annotations

import gzip
import json
import zlib

import pytest
from apptrace.protocols.common import ParserConfig, Side
from apptrace.protocols.http1 import Http1Parser

from tests.peers.http1_server import SLOW_DELAY_S
from tests.protocols.conftest import bytewise, feed_parser, fixture_chunks

SERVER_HEADERS = {"server": "apptrace-peer/1", "date": "Sun, 22 Nov 2026 00:00:00 GMT"}


def run(rel: str, split: bool = False, config: ParserConfig | None = None):
    chunks = fixture_chunks(rel)
    if split:
        chunks = bytewise(chunks)
    p = Http1Parser(config)
    return feed_parser(p, chunks), p


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_curl_keepalive(split: bool) -> None:
    recs, p = run("http1/curl_keepalive.jsonl", split)
    assert p.stats.as_dict() == dict.fromkeys(p.stats.as_dict(), 0)
    assert [(r.fields["req_method"], r.fields["req_path"], r.fields["resp_status"]) for r in recs] == [
        ("GET", "/hello", 200),
        ("GET", "/json", 200),
        ("GET", "/slow", 200),
        ("GET", "/missing", 404),
    ]
    hello, js, slow, missing = recs
    f = hello.fields
    assert f["http_version"] == "1.1"
    req_h = json.loads(f["req_headers"])
    assert req_h["user-agent"] == "curl/7.88.1" and req_h["accept"] == "*/*"
    assert req_h["authorization"] == "Bearer secret-token"  # the store redacts (honouring --no-redact)
    assert req_h["host"].startswith("127.0.0.1:")
    assert f["req_body"] == "" and f["req_body_size"] == 0
    assert f["resp_message"] == "OK"
    assert json.loads(f["resp_headers"]) == {
        **SERVER_HEADERS,
        "content-type": "text/plain",
        "content-length": "13",
    }
    assert f["resp_body"] == "hello, world\n" and f["resp_body_size"] == 13
    assert f["content_type"] == "text/plain"
    for k in ("grpc_status", "grpc_message", "stream_id", "req_messages", "resp_messages"):
        assert f[k] is None
    assert f["headers_partial"] is False
    assert js.fields["resp_body"] == '{"ok": true, "items": [1, 2, 3]}'
    assert js.fields["content_type"] == "application/json"
    assert slow.latency_ns is not None and slow.latency_ns >= SLOW_DELAY_S * 1e9
    assert missing.fields["resp_message"] == "Not Found" and missing.fields["resp_body"] == "not found\n"
    for r in recs:
        assert r.table == "http_events" and r.latency_ns is not None and r.latency_ns > 0


def _chunks_ts(rel: str):
    c = fixture_chunks(rel)
    return c[0][1], c[-1][1]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_chunked(split: bool) -> None:
    (r,), p = run("http1/curl_chunked.jsonl", split)
    assert r.fields["resp_body"] == "first chunk\nsecond\nthird and last\n"
    assert r.fields["resp_body_size"] == 34
    assert json.loads(r.fields["resp_headers"])["transfer-encoding"] == "chunked"
    first, last = _chunks_ts("http1/curl_chunked.jsonl")
    assert r.latency_ns == last - first and r.time_ns == last


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_gzip_decoded_for_display(split: bool) -> None:
    (r,), _ = run("http1/curl_gzip.jsonl", split)
    assert r.fields["resp_body"] == "compressed hello " * 20
    assert r.fields["resp_body_size"] == 42  # wire size: Content-Length of the gzip bytes
    assert json.loads(r.fields["resp_headers"])["content-encoding"] == "gzip"
    assert json.loads(r.fields["req_headers"])["accept-encoding"] == "deflate, gzip, br, zstd"


def test_gzip_truncated_at_max_body() -> None:
    (r,), _ = run("http1/curl_gzip.jsonl", config=ParserConfig(max_body=10))
    assert r.fields["resp_body"] == "compressed"
    assert r.fields["resp_body_size"] == 42


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_head_has_no_body(split: bool) -> None:
    (r,), p = run("http1/curl_head.jsonl", split)
    assert r.fields["req_method"] == "HEAD"
    assert json.loads(r.fields["resp_headers"])["content-length"] == "13"
    assert r.fields["resp_body"] == "" and r.fields["resp_body_size"] == 0
    assert p.stats.parse_errors == 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_expect_100_continue(split: bool) -> None:
    (r,), p = run("http1/curl_post_expect.jsonl", split)
    f = r.fields
    assert (f["req_method"], f["req_path"], f["resp_status"], f["resp_message"]) == (
        "POST",
        "/echo",
        201,
        "Created",
    )
    assert json.loads(f["req_headers"])["expect"] == "100-continue"
    assert f["req_body"] == '{"name": "apptrace"}' and f["req_body_size"] == 20
    assert f["resp_body"] == '{"name": "apptrace"}'
    assert f["content_type"] == "application/json"
    assert p.stats.unmatched_responses == 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_http10_close_delimited(split: bool) -> None:
    (r,), p = run("http1/curl_http10_close.jsonl", split)
    assert r.fields["http_version"] == "1.0"
    assert r.fields["resp_body"] == "until the connection closes\n"
    assert r.fields["resp_body_size"] == 28
    assert p.stats.parse_errors == 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_pipelined(split: bool) -> None:
    recs, p = run("http1/pipelined.jsonl", split)
    assert [(r.fields["req_method"], r.fields["req_path"]) for r in recs] == [
        ("GET", "/hello"),
        ("HEAD", "/json"),
        ("GET", "/chunked"),
    ]
    assert recs[0].fields["resp_body"] == "hello, world\n"
    # The HEAD response advertises 32 bytes but has none; the next response must still parse.
    assert (
        recs[1].fields["resp_body"] == ""
        and json.loads(recs[1].fields["resp_headers"])["content-length"] == "32"
    )
    assert recs[2].fields["resp_body"] == "first chunk\nsecond\nthird and last\n"
    assert p.stats.parse_errors == 0 and p.stats.unmatched_responses == 0


# -- synthetic edge cases ------------------------------------------------------------------------


def feed_pairs(p: Http1Parser, *pairs: tuple[Side, bytes, int]):
    out = []
    for side, data, ts in pairs:
        out += p.feed(side, data, ts)
    return out


REQ = Side.REQUEST
RESP = Side.RESPONSE


def test_204_304_have_no_body() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\nGET /c HTTP/1.1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", 2),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 3),
    )
    assert [(r.fields["resp_status"], r.fields["resp_body"]) for r in recs] == [
        (204, ""),
        (304, ""),
        (200, "ok"),
    ]
    assert [r.latency_ns for r in recs] == [1, 1, 2]


def test_101_switching_protocols_ends_parsing() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 2),
        (REQ, b"\x81\x85garbage", 3),
    )
    assert len(recs) == 1 and recs[0].fields["resp_status"] == 101
    assert p.stats.parse_errors == 0


def test_103_early_hints_is_interim() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"GET / HTTP/1.1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n", 2),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 3),
    )
    assert [r.fields["resp_status"] for r in recs] == [200] and recs[0].latency_ns == 2


def test_deflate_and_raw_deflate() -> None:
    for blob in (zlib.compress(b"deflated text"), zlib.compress(b"deflated text")[2:-4]):
        p = Http1Parser()
        (r,) = feed_pairs(
            p,
            (REQ, b"GET / HTTP/1.1\r\n\r\n", 1),
            (
                RESP,
                b"HTTP/1.1 200 OK\r\nContent-Encoding: deflate\r\nContent-Length: %d\r\n\r\n" % len(blob)
                + blob,
                2,
            ),
        )
        assert r.fields["resp_body"] == "deflated text"


def test_corrupt_gzip_shows_raw_bytes() -> None:
    blob = b"\x1f\x8b\x08\x00garbage-not-gzip"
    p = Http1Parser()
    (r,) = feed_pairs(
        p,
        (REQ, b"GET / HTTP/1.1\r\n\r\n", 1),
        (
            RESP,
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(blob) + blob,
            2,
        ),
    )
    assert r.fields["resp_body"].startswith("<binary 20 bytes> 1f8b0800")


def test_binary_body_rendering_and_truncation() -> None:
    p = Http1Parser(ParserConfig(max_body=8))
    body = bytes(range(256))
    (r,) = feed_pairs(
        p,
        (REQ, b"POST /up HTTP/1.1\r\nContent-Length: 256\r\n\r\n" + body, 1),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\n" + "h\u00e9llo w\u00f6rld!".encode(), 2),
    )
    assert r.fields["req_body"] == "<binary 256 bytes> 0001020304050607"
    assert r.fields["req_body_size"] == 256
    assert r.fields["resp_body"] == "h\u00e9llo w"  # 8 bytes of UTF-8, cut on a boundary here
    assert r.fields["resp_body_size"] == 14


def test_repeated_headers_joined_and_obs_fold() -> None:
    p = Http1Parser()
    (r,) = feed_pairs(
        p,
        (REQ, b"GET / HTTP/1.1\r\nAccept: a\r\nX-Long: one\r\n  two\r\naccept: b\r\nCookie: s=1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n", 2),
    )
    assert json.loads(r.fields["req_headers"]) == {
        "accept": "a, b",
        "x-long": "one two",
        "cookie": "s=1",  # secrets are the store's to redact (apptrace/store/redact.py), not the parser's
    }
    assert json.loads(r.fields["resp_headers"]) == {
        "set-cookie": "a=1, b=2",
        "content-length": "0",
    }


def test_bare_lf_line_endings() -> None:
    p = Http1Parser()
    (r,) = feed_pairs(
        p, (REQ, b"GET /lf HTTP/1.0\nHost: x\n\n", 1), (RESP, b"HTTP/1.0 200 OK\nContent-Length: 2\n\nhi", 2)
    )
    assert (r.fields["req_path"], r.fields["resp_body"], r.fields["http_version"]) == ("/lf", "hi", "1.0")


def test_chunked_with_extensions_and_trailers() -> None:
    p = Http1Parser()
    (r,) = feed_pairs(
        p,
        (
            REQ,
            b"POST /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n",
            1,
        ),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2),
    )
    assert r.fields["req_body"] == "wikipedia" and r.fields["req_body_size"] == 9
    assert json.loads(r.fields["req_headers"])["x-sum"] == "9"


def test_early_final_response_to_100_continue() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"PUT /big HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1000000\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n", 2),
        (REQ, b"GET /next HTTP/1.1\r\n\r\n", 3),
    )
    assert [(r.fields["req_path"], r.fields["resp_status"]) for r in recs] == [("/big", 417)]
    assert p.stats.unmatched_responses == 0


def test_garbage_is_counted_and_parser_resyncs() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"\x00\x01garbage line\r\nmore junk\r\n\r\nGET /ok HTTP/1.1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2),
    )
    assert [r.fields["req_path"] for r in recs] == ["/ok"]
    assert p.stats.parse_errors == 1 and p.stats.dropped_bytes > 0


def test_bad_content_length_is_an_error() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\nGET /x HTTP/1.1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2),
    )
    assert p.stats.parse_errors == 1 and [r.fields["req_path"] for r in recs] == ["/x"]


def test_unmatched_response_counted() -> None:
    p = Http1Parser()
    assert feed_pairs(p, (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 2)) == []
    assert p.stats.unmatched_responses == 1


def test_gap_in_body_skips_exactly_and_keeps_message_incomplete() -> None:
    p = Http1Parser()
    out = feed_pairs(
        p,
        (REQ, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n0123", 2),
    )
    out += p.gap(RESP, 3, 3)
    out += p.feed(RESP, b"789HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 4)
    fields = [(r.fields["req_path"], r.fields["resp_body"], r.fields["resp_body_size"], r.fields["body_incomplete"])
              for r in out]
    assert fields == [("/a", "0123", 10, True), ("/b", "b", 1, False)]
    assert p.stats.gap_messages == 0 and p.stats.parse_errors == 0


def test_gap_then_resync_at_next_start_line() -> None:
    p = Http1Parser()
    out = p.feed(REQ, b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab", 1)
    out += p.gap(REQ, 100, 2)
    out += p.feed(REQ, b"xyz\r\n0\r\n\r\nGET /b HTTP/1.1\r\n\r\n", 3)
    out += p.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 4)
    assert [r.fields["req_path"] for r in out] == ["/b"]
    assert p.stats.gap_messages == 1 and p.stats.parse_errors == 0


def test_pending_cap_evicts_oldest() -> None:
    p = Http1Parser(ParserConfig(max_pending=2))
    out = p.feed(REQ, b"GET /1 HTTP/1.1\r\n\r\nGET /2 HTTP/1.1\r\n\r\nGET /3 HTTP/1.1\r\n\r\n", 1)
    assert [(r.fields["req_path"], r.latency_ns, r.fields["resp_status"]) for r in out] == [
        ("/1", None, None)
    ]
    assert p.stats.evicted == 1


def test_expire_and_close_emit_pending() -> None:
    p = Http1Parser(ParserConfig(request_timeout_ns=100))
    p.feed(REQ, b"GET /old HTTP/1.1\r\n\r\n", 1000)
    p.feed(REQ, b"GET /new HTTP/1.1\r\n\r\n", 1050)
    out = p.expire(1101)
    assert [r.fields["req_path"] for r in out] == ["/old"] and out[0].latency_ns is None
    out = p.close(2000)
    assert [r.fields["req_path"] for r in out] == ["/new"] and p.stats.evicted == 2


def test_head_limit_is_a_parse_error() -> None:
    p = Http1Parser()
    p.feed(REQ, b"GET / HTTP/1.1\r\nX: " + b"a" * 70000, 1)
    assert p.stats.parse_errors == 1
    assert len(p.req.buf) < 70000


def test_detect() -> None:
    from apptrace.protocols.common import Confidence

    assert Http1Parser.detect(REQ, b"GET / HTTP/1.1\r\n") is Confidence.YES
    assert Http1Parser.detect(REQ, b"GET /in-prog") is Confidence.MAYBE
    assert Http1Parser.detect(REQ, b"HTTP/1.1 200 OK\r\n") is Confidence.NO
    assert Http1Parser.detect(RESP, b"HTTP/1.1 200 OK\r\n") is Confidence.YES
    assert Http1Parser.detect(RESP, b"HTTP/1") is Confidence.MAYBE
    assert Http1Parser.detect(RESP, b"\x16\x03\x01") is Confidence.NO


def test_gzip_body_written_by_python() -> None:
    blob = gzip.compress(b"x" * 5000)
    p = Http1Parser(ParserConfig(max_body=100))
    (r,) = feed_pairs(
        p,
        (REQ, b"GET / HTTP/1.1\r\n\r\n", 1),
        (
            RESP,
            b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(blob) + blob,
            2,
        ),
    )
    assert r.fields["resp_body"] == "x" * 100 and r.fields["resp_body_size"] == len(blob)


def test_expire_spares_a_request_whose_response_is_streaming() -> None:
    p = Http1Parser(ParserConfig(request_timeout_ns=100))
    p.feed(REQ, b"GET /download HTTP/1.1\r\n\r\n", 0)
    p.feed(RESP, b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10, 50)
    p.feed(RESP, b"x" * 10, 190)
    assert p.expire(200) == []
    (r,) = p.expire(400)
    assert r.fields["req_path"] == "/download" and r.latency_ns is None


def test_endless_trailers_are_bounded() -> None:
    p = Http1Parser()
    p.feed(REQ, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n", 1)
    for _ in range(200):
        p.feed(REQ, b"X-T: 1\r\nX-U: 2\r\nX-V: 3\r\n", 2)
    assert len(p.req.msg.headers) <= 512


def test_connect_tunnel_ends_parsing() -> None:
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 200 Connection Established\r\n\r\n", 2),
        (REQ, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 3),
        (RESP, b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76", 4),
    )
    assert [(r.fields["req_method"], r.fields["req_path"], r.fields["resp_status"]) for r in recs] == [
        ("CONNECT", "example.com:443", 200)
    ]
    assert p.stats.parse_errors == 0


def test_mixed_line_endings_end_the_head_at_the_first_blank_line() -> None:
    """Found by hypothesis: a bare-LF blank line before a later CRLFCRLF ends the head there."""
    data = b"HEAD /a HTTP/1.1\r\nHost: x\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    for chunks in ([data], [data[:29], data[29:]]):
        p = Http1Parser()
        for c in chunks:
            p.feed(REQ, c, 1)
        assert [m.head.path for m in p.pending] == ["/a", "/b"]


def test_trailers_never_leak_into_a_shared_header_block() -> None:
    """Repeated header blocks share one parse; a message's trailers must stay its own."""
    req = b"POST /t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    p = Http1Parser()
    recs = feed_pairs(
        p,
        (REQ, req + b"0\r\nX-Trailer: 1\r\n\r\n" + req + b"0\r\n\r\n", 1),
        (RESP, b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", 2),
    )
    assert [json.loads(r.fields["req_headers"]) for r in recs] == [
        {"transfer-encoding": "chunked", "x-trailer": "1"},
        {"transfer-encoding": "chunked"},
    ]
