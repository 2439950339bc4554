"""HTTP/2 parser: real captures (curl, nghttp, h2load ↔ nghttpd) and synthetic frames from h2's encoder."""

from __future__ import annotations

import json

import hpack
import pytest
from apptrace.protocols.common import ParserCaches, ParserConfig, Side
from apptrace.protocols.http2 import Http2Parser
from apptrace.protocols.http2.types import PREFACE
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    HeadersFrame,
    PushPromiseFrame,
    RstStreamFrame,
    SettingsFrame,
)

from tests.protocols.conftest import bytewise, feed_parser, fixture_chunks

REQ, RESP = Side.REQUEST, Side.RESPONSE
INDEX = "<html><body>hello from nghttpd</body></html>\n"


def run(rel: str, split: bool = False):
    chunks = fixture_chunks(rel)
    if split:
        chunks = bytewise(chunks)
    p = Http2Parser()
    return feed_parser(p, chunks), p


def no_errors(p: Http2Parser) -> bool:
    return p.stats.as_dict() == dict.fromkeys(p.stats.as_dict(), 0)


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_curl_h2c(split: bool) -> None:
    (r,), p = run("http2/curl_h2c.jsonl", split)
    assert no_errors(p)
    f = r.fields
    assert (f["http_version"], f["req_method"], f["req_path"], f["stream_id"]) == (
        "2",
        "GET",
        "/index.html",
        1,
    )
    req_h = json.loads(f["req_headers"])
    assert req_h[":scheme"] == "http" and req_h["user-agent"] == "curl/7.88.1" and req_h["accept"] == "*/*"
    assert req_h[":authority"].startswith("127.0.0.1:")
    assert f["req_body"] == "" and f["req_body_size"] == 0
    assert f["resp_status"] == 200 and f["resp_message"] is None
    resp_h = json.loads(f["resp_headers"])
    assert resp_h[":status"] == "200" and resp_h["server"] == "nghttpd nghttp2/1.52.0"
    assert resp_h["content-length"] == "45" and resp_h["content-type"] == "text/html"
    assert f["resp_body"] == INDEX and f["resp_body_size"] == 45
    assert f["content_type"] == "text/html"
    assert f["grpc_status"] is None and f["grpc_message"] is None
    assert f["req_messages"] is None and f["resp_messages"] is None
    assert f["headers_partial"] is False
    chunks = fixture_chunks("http2/curl_h2c.jsonl")
    req_ts = [ts for side, ts, _ in chunks if side is REQ]
    assert r.latency_ns is not None and 0 < r.latency_ns <= chunks[-1][1] - req_ts[0]


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_nghttp_multiple_streams(split: bool) -> None:
    recs, p = run("http2/nghttp_multi.jsonl", split)
    assert no_errors(p)
    got = [
        (r.fields["stream_id"], r.fields["req_path"], r.fields["resp_status"], r.fields["content_type"])
        for r in recs
    ]
    assert got == [
        (13, "/index.html", 200, "text/html"),
        (15, "/data.json", 200, "application/json"),
        (17, "/missing", 404, "text/html; charset=UTF-8"),
    ]
    assert recs[1].fields["resp_body"] == '{"answer": 42}\n'
    assert recs[2].fields["resp_body"].startswith("<html><head><title>404 Not Found</title>")
    assert recs[2].fields["resp_body_size"] == 148
    assert json.loads(recs[0].fields["req_headers"])["accept-encoding"] == "gzip, deflate"


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_h2load_concurrent_streams(split: bool) -> None:
    recs, p = run("http2/h2load.jsonl", split)
    assert no_errors(p)
    assert [r.fields["stream_id"] for r in recs] == [1, 3, 5, 7, 9, 11, 13, 15]
    for r in recs:
        assert r.fields["req_path"] == "/index.html" and r.fields["resp_status"] == 200
        assert r.fields["resp_body"] == INDEX and r.latency_ns is not None and r.latency_ns > 0
        assert json.loads(r.fields["req_headers"])["user-agent"] == "h2load nghttp2/1.52.0"


# -- synthetic connections -----------------------------------------------------------------------


class Conn:
    """Builds both directions of a connection with real hpack encoders and hyperframe frames."""

    def __init__(self) -> None:
        self.enc = {REQ: hpack.Encoder(), RESP: hpack.Encoder()}
        self.chunks: list[tuple[Side, int, bytes]] = [(REQ, 0, PREFACE + SettingsFrame(0).serialize())]
        self.chunks.append((RESP, 0, SettingsFrame(0).serialize()))
        self.ts = 0

    def add(self, side: Side, *frames, ts: int | None = None) -> None:
        self.ts = self.ts + 1 if ts is None else ts
        self.chunks.append((side, self.ts, b"".join(f.serialize() for f in frames)))

    def headers(self, side: Side, sid: int, hdrs, end: bool = False, **kw) -> HeadersFrame:
        f = HeadersFrame(sid, self.enc[side].encode(hdrs), **kw)
        f.flags.add("END_HEADERS")
        if end:
            f.flags.add("END_STREAM")
        return f

    def data(self, sid: int, payload: bytes, end: bool = False, pad: int = 0) -> DataFrame:
        f = DataFrame(sid, payload)
        if pad:
            f.flags.add("PADDED")
            f.pad_length = pad
        if end:
            f.flags.add("END_STREAM")
        return f


GET = [(":method", "GET"), (":scheme", "https"), (":path", "/"), (":authority", "example.com")]


def test_padding_priority_continuation_trailers() -> None:
    c = Conn()
    block = c.enc[REQ].encode([*GET, ("x-big", "v" * 300)])
    h = HeadersFrame(1, block[:50])
    h.flags.add("PADDED")
    h.flags.add("PRIORITY")
    h.pad_length = 7
    h.depends_on, h.stream_weight = 0, 16
    c1 = ContinuationFrame(1, block[50:200])
    c2 = ContinuationFrame(1, block[200:])
    c2.flags.add("END_HEADERS")
    c.add(REQ, h, c1, c2, c.data(1, b"req-body", end=True, pad=5), ts=10)
    c.add(RESP, c.headers(RESP, 1, [(":status", "200"), ("content-type", "text/plain")]), ts=20)
    c.add(RESP, c.data(1, b"hello ", pad=3), c.data(1, b"there"), ts=30)
    c.add(RESP, c.headers(RESP, 1, [("x-trailer", "t")], end=True), ts=40)
    p = Http2Parser()
    (r,) = feed_parser(p, c.chunks)
    assert no_errors(p)
    f = r.fields
    assert json.loads(f["req_headers"])["x-big"] == "v" * 300
    assert f["req_body"] == "req-body" and f["req_body_size"] == 8
    assert f["resp_body"] == "hello there" and f["resp_body_size"] == 11
    assert json.loads(f["resp_headers"]) == {":status": "200", "content-type": "text/plain", "x-trailer": "t"}
    assert r.latency_ns == 30 and r.time_ns == 40


def test_informational_headers_are_not_final() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, [*GET, ("expect", "100-continue")]), ts=1)
    c.add(RESP, c.headers(RESP, 1, [(":status", "100")]), ts=2)
    c.add(REQ, c.data(1, b"x", end=True), ts=3)
    c.add(RESP, c.headers(RESP, 1, [(":status", "204")], end=True), ts=4)
    (r,) = feed_parser(Http2Parser(), c.chunks)
    assert r.fields["resp_status"] == 204 and r.latency_ns == 3


def test_rst_stream_emits_what_we_have() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True), ts=1)
    c.add(REQ, c.headers(REQ, 3, [*GET[:2], (":path", "/slow"), GET[3]], end=True), ts=2)
    c.add(RESP, c.headers(RESP, 3, [(":status", "200")]), c.data(3, b"part"), ts=3)
    c.add(REQ, RstStreamFrame(1, error_code=8), ts=4)
    c.add(REQ, RstStreamFrame(3, error_code=8), ts=5)
    p = Http2Parser()
    recs = feed_parser(p, c.chunks)
    assert [(r.fields["stream_id"], r.fields["resp_status"], r.fields["resp_message"]) for r in recs] == [
        (1, None, "RST_STREAM CANCEL"),
        (3, 200, "RST_STREAM CANCEL"),
    ]
    assert recs[1].fields["resp_body"] == "part" and recs[1].latency_ns == 3


def test_settings_header_table_size() -> None:
    """A client allowing a bigger table lets the server's encoder grow it; the decoder must follow."""
    c = Conn()
    c.chunks[0] = (
        REQ,
        0,
        PREFACE + SettingsFrame(0, settings={SettingsFrame.HEADER_TABLE_SIZE: 8192}).serialize(),
    )
    c.enc[RESP].header_table_size = 8192
    c.add(REQ, c.headers(REQ, 1, GET, end=True))
    c.add(RESP, c.headers(RESP, 1, [(":status", "200"), ("x-a", "a" * 5000)], end=True))
    c.add(REQ, c.headers(REQ, 3, GET, end=True))
    c.add(RESP, c.headers(RESP, 3, [(":status", "200"), ("x-a", "a" * 5000)], end=True))
    p = Http2Parser()
    recs = feed_parser(p, c.chunks)
    assert no_errors(p)
    assert [json.loads(r.fields["resp_headers"])["x-a"] for r in recs] == ["a" * 5000] * 2
    assert not any(r.fields["headers_partial"] for r in recs)


def test_server_push() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True), ts=1)
    pp = PushPromiseFrame(
        1, promised_stream_id=2, data=c.enc[RESP].encode([*GET[:2], (":path", "/style.css"), GET[3]])
    )
    pp.flags.add("END_HEADERS")
    c.add(RESP, pp, c.headers(RESP, 1, [(":status", "200")], end=True), ts=2)
    c.add(
        RESP,
        c.headers(RESP, 2, [(":status", "200"), ("content-type", "text/css")]),
        c.data(2, b"p{}", end=True),
        ts=3,
    )
    recs = feed_parser(Http2Parser(), c.chunks)
    assert [(r.fields["stream_id"], r.fields["req_path"], r.fields["resp_body"]) for r in recs] == [
        (1, "/", ""),
        (2, "/style.css", "p{}"),
    ]


def test_gzip_body_and_truncation() -> None:
    import gzip

    blob = gzip.compress(b"z" * 3000)
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True))
    c.add(
        RESP,
        c.headers(RESP, 1, [(":status", "200"), ("content-encoding", "gzip")]),
        c.data(1, blob, end=True),
    )
    (r,) = feed_parser(Http2Parser(ParserConfig(max_body=100)), c.chunks)
    assert r.fields["resp_body"] == "z" * 100 and r.fields["resp_body_size"] == len(blob)


def test_close_and_expire_emit_open_streams() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True), ts=1000)
    c.add(REQ, c.headers(REQ, 3, GET, end=True), ts=5000)
    p = Http2Parser(ParserConfig(request_timeout_ns=1000))
    assert feed_parser(p, c.chunks, close=False) == []
    (old,) = p.expire(2500)
    assert old.fields["stream_id"] == 1 and old.latency_ns is None and old.fields["resp_status"] is None
    (new,) = p.close(9000)
    assert new.fields["stream_id"] == 3 and p.stats.evicted == 2


def test_stream_cap() -> None:
    c = Conn()
    for sid in (1, 3, 5):
        c.add(REQ, c.headers(REQ, sid, GET, end=True))
    p = Http2Parser(ParserConfig(max_pending=2))
    recs = feed_parser(p, c.chunks, close=False)
    assert [r.fields["stream_id"] for r in recs] == [1] and p.stats.evicted == 1


def test_unmatched_response_counted() -> None:
    c = Conn()
    c.add(RESP, c.headers(RESP, 1, [(":status", "200")], end=True))
    p = Http2Parser()
    (r,) = feed_parser(p, c.chunks)
    assert p.stats.unmatched_responses == 1
    # kept (nothing is dropped in silence), but marked: no request, no latency
    assert (r.fields["resp_status"], r.fields["req_method"], r.fields["headers_partial"]) == (200, None, True)
    assert r.latency_ns is None


def test_hpack_error_falls_back_to_tolerant() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, [*GET, ("x-custom", "one")], end=True))
    lost = c.chunks.pop()  # the request that inserted x-custom into the dynamic table is never seen
    assert lost
    c.add(REQ, c.headers(REQ, 3, [*GET, ("x-custom", "one")], end=True))
    c.add(RESP, c.headers(RESP, 3, [(":status", "200")], end=True))
    p = Http2Parser()
    (r,) = feed_parser(p, c.chunks)
    assert p.stats.parse_errors == 1
    assert r.fields["headers_partial"] is True and r.fields["req_method"] == "GET"
    assert "x-custom" not in json.loads(r.fields["req_headers"])


def test_gap_inside_data_frame_keeps_that_stream_incomplete() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True), c.headers(REQ, 3, GET, end=True))
    c.add(RESP, c.headers(RESP, 1, [(":status", "200")]), c.headers(RESP, 3, [(":status", "200")]))
    p = Http2Parser()
    out = feed_parser(p, c.chunks, close=False)
    frame = c.data(1, b"A" * 100, end=True).serialize()
    out += p.feed(RESP, frame[:40], 10)
    out += p.gap(RESP, 30, 11)
    out += p.feed(RESP, frame[70:] + c.data(3, b"fine", end=True).serialize(), 12)
    fields = [(r.fields["stream_id"], r.fields["resp_body"], r.fields["resp_body_size"], r.fields["body_incomplete"])
              for r in out]
    assert fields == [(1, "", 100, True), (3, "fine", 4, False)]
    assert p.stats.gap_messages == 0 and p.stats.parse_errors == 0


def test_gap_of_unknown_extent_realigns() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True))
    p = Http2Parser()
    out = feed_parser(p, c.chunks, close=False)
    out += p.gap(RESP, 1000, 5)
    tail = (
        b"junk-junk"
        + c.headers(RESP, 1, [(":status", "503")]).serialize()
        + c.data(1, b"x", end=True).serialize()
    )
    out += p.feed(RESP, tail, 6)
    assert [(r.fields["stream_id"], r.fields["resp_status"], r.fields["headers_partial"]) for r in out] == [
        (1, 503, True)
    ]


def test_garbage_never_raises() -> None:
    p = Http2Parser()
    p.feed(REQ, PREFACE + b"\xff" * 100, 1)
    p.feed(RESP, b"\x00\x00\x01\x00\x00\x00\x00\x00\x01", 2)
    p.close(3)
    assert p.stats.parse_errors >= 1


def test_detect() -> None:
    from apptrace.protocols.common import Confidence

    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET), c.data(1, b"x", end=True))
    c.add(RESP, c.headers(RESP, 1, [(":status", "200")]), c.data(1, b"y", end=True))
    assert Http2Parser.detect(REQ, PREFACE) is Confidence.YES
    assert Http2Parser.detect(REQ, PREFACE[:10]) is Confidence.MAYBE
    assert Http2Parser.detect(RESP, PREFACE) is Confidence.NO
    req_frames, resp_frames = c.chunks[2][2], c.chunks[3][2]
    assert Http2Parser.detect(REQ, req_frames) is Confidence.MAYBE
    assert Http2Parser.detect(RESP, req_frames) is Confidence.NO  # opens with :method
    assert Http2Parser.detect(RESP, resp_frames) is Confidence.MAYBE
    assert Http2Parser.detect(REQ, resp_frames) is Confidence.NO
    assert Http2Parser.detect(REQ, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is Confidence.NO


def test_endless_continuation_is_bounded() -> None:
    c = Conn()
    c.add(REQ, HeadersFrame(1, b"\x82"))  # no END_HEADERS
    p = Http2Parser()
    feed_parser(p, c.chunks, close=False)
    for _ in range(300):
        p.feed(REQ, ContinuationFrame(1, b"\x00" * 1000).serialize(), 5)
    assert p.stats.parse_errors == 1 and p.dirs[REQ].block is None


def test_expire_spares_active_streams() -> None:
    c = Conn()
    c.add(REQ, c.headers(REQ, 1, GET, end=True), ts=0)
    c.add(RESP, c.headers(RESP, 1, [(":status", "200")]), c.data(1, b"a"), ts=50)
    p = Http2Parser(ParserConfig(request_timeout_ns=100))
    feed_parser(p, c.chunks, close=False)
    p.feed(RESP, c.data(1, b"b").serialize(), 190)
    assert p.expire(200) == []
    (r,) = p.expire(400)
    assert r.fields["resp_body"] == "ab" and r.latency_ns is None


def test_tolerant_decoder_matches_hpack_and_bounds_expansion() -> None:
    import random

    from apptrace.protocols.http2.parse import TolerantDecoder

    rng = random.Random(7)
    enc, real, tol = hpack.Encoder(), hpack.Decoder(), TolerantDecoder()
    for _ in range(300):
        hdrs = [(":method", rng.choice(["GET", "POST"])), (":path", f"/p{rng.randint(0, 30)}")]
        hdrs += [(f"x-{rng.randint(0, 9)}", "v" * rng.randint(0, 200)) for _ in range(rng.randint(0, 4))]
        block = enc.encode(hdrs)
        assert tol.decode(block) == (real.decode(block, raw=True), False)
    # one 4000-byte entry referenced 2000 times: decoding stops, the block is partial
    enc = hpack.Encoder()
    first = enc.encode([("x-big", "b" * 4000)])
    tol = TolerantDecoder(max_list=64 * 1024)
    tol.decode(first)
    fields, partial = tol.decode(b"\xbe" * 2000)
    assert partial and sum(len(k) + len(v) for k, v in fields) <= 64 * 1024 + 4100


def test_split_cookie_crumbs_rejoin_with_semicolons() -> None:
    c = Conn()
    c.add(
        REQ,
        c.headers(
            REQ, 1, [*GET, ("cookie", "a=1"), ("cookie", "b=2"), ("accept", "x"), ("accept", "y")], end=True
        ),
    )
    c.add(RESP, c.headers(RESP, 1, [(":status", "204")], end=True))
    (r,) = feed_parser(Http2Parser(), c.chunks)
    h = json.loads(r.fields["req_headers"])
    assert (h["cookie"], h["accept"]) == ("a=1; b=2", "x, y")


def test_opening_blocks_shared_across_connections_decode_the_same() -> None:
    """Connections that open with the same header blocks reuse one decode (ParserCaches.http2_opening_blocks).

    Every capture replayed as several connections sharing one pipeline's caches, in whole chunks
    and byte by byte, gives the records and stats of parsers that each decode every block
    themselves (caches of their own); and a connection whose peer then sends a different block
    decodes it against the right table.
    """
    files = ["http2/curl_h2c.jsonl", "http2/nghttp_multi.jsonl", "http2/h2load.jsonl",
             "grpc/grpcio_calls.jsonl", "grpc/grpcio_gzip.jsonl"]

    def replay(caches: ParserCaches | None) -> list:
        out = []
        for rnd in range(3):
            for rel in files:
                chunks = fixture_chunks(rel)
                if rnd == 1:
                    chunks = bytewise(chunks)
                p = Http2Parser(None, caches)
                recs = feed_parser(p, chunks)
                out.append((rel, [(r.time_ns, r.latency_ns, r.fields) for r in recs], p.stats.as_dict()))
        return out

    caches = ParserCaches()
    shared = replay(caches)
    assert len(caches.http2_opening_blocks) > 0
    assert shared == replay(None)

    # Two connections share an opening block, then differ: each later block needs the table
    # the shared one left (an indexed reference to the entry it inserted).
    caches = ParserCaches()
    got = []
    for path in ("/a", "/b"):
        enc = hpack.Encoder()
        first = enc.encode([(":method", "GET"), (":path", "/x"), ("x-k", "v1")])
        second = enc.encode([(":method", "GET"), (":path", path), ("x-k", "v1")])
        frames = PREFACE + SettingsFrame(0).serialize()
        frames += HeadersFrame(1, data=first, flags=["END_HEADERS", "END_STREAM"]).serialize()
        frames += HeadersFrame(3, data=second, flags=["END_HEADERS", "END_STREAM"]).serialize()
        p = Http2Parser(None, caches)
        p.feed(REQ, frames, 1)
        recs = p.close(2)
        got.append(sorted((r.fields["stream_id"], r.fields["req_path"], r.fields["req_headers"]) for r in recs))
        assert p.stats.parse_errors == 0
    assert [g[0][1] for g in got] == ["/x", "/x"]
    assert [g[1][1] for g in got] == ["/a", "/b"]
    assert all('"x-k":"v1"' in g[1][2] for g in got)
