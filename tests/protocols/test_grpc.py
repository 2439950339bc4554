"""gRPC over HTTP/2: a real grpcio client against the h2-based peer in tests/peers/grpc_server.py."""

from __future__ import annotations

import json

import pytest
from apptrace.protocols import ConnectionTracker
from apptrace.protocols.http2 import Http2Parser

from tests.peers.grpc_server import UNARY_DELAY_S
from tests.protocols.conftest import bytewise, feed_parser, feed_tracker, fixture_chunks

FIX = "grpc/grpcio_calls.jsonl"


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_grpcio_unary_stream_and_error(split: bool) -> None:
    chunks = fixture_chunks(FIX)
    if split:
        chunks = bytewise(chunks)
    p = Http2Parser()
    unary, stream, fail = feed_parser(p, chunks)
    assert p.stats.as_dict() == dict.fromkeys(p.stats.as_dict(), 0)

    f = unary.fields
    assert (f["http_version"], f["req_method"], f["req_path"], f["stream_id"]) == (
        "2", "POST", "/apptrace.Echo/Unary", 1,
    )  # fmt: skip
    req_h = json.loads(f["req_headers"])
    assert req_h["content-type"] == "application/grpc" and req_h["te"] == "trailers"
    assert req_h["user-agent"].startswith("grpc-python/")
    assert f["req_body"] == "ping" and f["req_body_size"] == 9  # 5-byte prefix + 4 bytes
    assert f["resp_status"] == 200 and f["resp_body"] == "echo:ping" and f["resp_body_size"] == 14
    assert json.loads(f["resp_headers"]) == {
        ":status": "200",
        "content-type": "application/grpc",
        "grpc-status": "0",
    }
    assert f["content_type"] == "application/grpc"
    assert (f["grpc_status"], f["grpc_message"]) == (0, None)
    assert (f["req_messages"], f["resp_messages"]) == (1, 1)
    assert f["headers_partial"] is False
    assert unary.latency_ns is not None and unary.latency_ns >= UNARY_DELAY_S * 1e9

    f = stream.fields
    assert (f["req_path"], f["stream_id"], f["grpc_status"]) == ("/apptrace.Echo/Stream", 3, 0)
    assert (f["req_messages"], f["resp_messages"]) == (1, 3)
    assert f["req_body"] == "go" and f["resp_body"] == "item 0item 1item 2" and f["resp_body_size"] == 33

    f = fail.fields  # trailers-only response
    assert (f["req_path"], f["stream_id"], f["resp_status"]) == ("/apptrace.Echo/Fail", 5, 200)
    assert (f["grpc_status"], f["grpc_message"]) == (5, "no such thing")
    assert (f["req_messages"], f["resp_messages"]) == (1, 0)
    assert f["resp_body"] == "" and f["resp_body_size"] == 0


@pytest.mark.parametrize("client_view", [True, False], ids=["client", "server"])
def test_tracker_infers_http2_and_role(client_view: bool) -> None:
    t = ConnectionTracker()
    recs = feed_tracker(t, fixture_chunks(FIX), client_view=client_view)
    assert (t.protocol, t.role) == ("http2", "client" if client_view else "server")
    assert [r.fields["grpc_status"] for r in recs] == [0, 0, 5]


@pytest.mark.parametrize("client_view", [True, False], ids=["client", "server"])
def test_attached_mid_connection(client_view: bool) -> None:
    """Start capturing after the first call: no preface, HPACK dynamic table unknown."""
    t = ConnectionTracker()
    stream, fail = feed_tracker(t, fixture_chunks(FIX)[5:], client_view=client_view)
    assert (t.protocol, t.role) == ("http2", "client" if client_view else "server")
    assert t.stats["parse_errors"] == 0
    f = stream.fields
    assert f["headers_partial"] is True
    # literal and static-table fields survive; dynamic-table references are dropped
    assert (f["req_method"], f["req_path"], f["resp_status"]) == ("POST", "/apptrace.Echo/Stream", 200)
    assert json.loads(f["req_headers"])["grpc-timeout"] == "10100m"
    assert (f["req_messages"], f["resp_messages"]) == (1, 3)  # gRPC recognised from grpc-* headers
    assert f["resp_body"] == "item 0item 1item 2"
    assert stream.latency_ns is not None and stream.latency_ns > 0
    assert fail.fields["grpc_message"] == "no such thing" and fail.fields["headers_partial"] is True


def test_attached_mid_frame() -> None:
    """The first captured byte is inside a frame: alignment is found by plausibility."""
    chunks = fixture_chunks(FIX)[5:]
    side, ts, data = chunks[0]
    chunks[0] = (side, ts, data[5:])  # inside the PING frame's header
    p = Http2Parser()
    recs = feed_parser(p, chunks)
    assert [r.fields["req_path"] for r in recs] == ["/apptrace.Echo/Stream", "/apptrace.Echo/Fail"]
    assert p.stats.dropped_bytes > 0


@pytest.mark.parametrize("split", [False, True], ids=["whole", "bytewise"])
def test_grpcio_gzip_compressed_messages(split: bool) -> None:
    """grpcio with Compression.Gzip: messages flagged compressed are inflated for display."""
    chunks = fixture_chunks("grpc/grpcio_gzip.jsonl")
    if split:
        chunks = bytewise(chunks)
    p = Http2Parser()
    (r,) = feed_parser(p, chunks)
    f = r.fields
    assert json.loads(f["req_headers"])["grpc-encoding"] == "gzip"
    assert json.loads(f["resp_headers"])["grpc-encoding"] == "gzip"
    assert f["req_body"] == "compress me " * 8
    assert f["resp_body"] == "echo:" + "compress me " * 8
    assert (f["req_body_size"], f["resp_body_size"]) == (40, 44)  # wire sizes, prefixes included
    assert (f["req_messages"], f["resp_messages"], f["grpc_status"]) == (1, 1, 0)
    assert r.latency_ns is not None and r.latency_ns >= UNARY_DELAY_S * 1e9
