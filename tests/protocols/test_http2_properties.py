"""Property tests for HTTP/2: any input is survivable, and chunking never changes the records."""

from __future__ import annotations

import os

from apptrace.protocols import ConnectionTracker
from apptrace.protocols.common import Side
from apptrace.protocols.http2 import Http2Parser
from apptrace.protocols.http2.types import PREFACE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.conftest import Chunks, feed_tracker, fixture_chunks, mutations, splits
from tests.protocols.test_http1_properties import FIXTURES as HTTP1_FIXTURES

FIXTURES = [
    "http2/curl_h2c.jsonl",
    "http2/nghttp_multi.jsonl",
    "http2/h2load.jsonl",
    "grpc/grpcio_calls.jsonl",
    "grpc/grpcio_gzip.jsonl",
]
SETTINGS = settings(
    max_examples=int(os.environ.get("APPTRACE_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def strict_run(chunks: Chunks, skip: int = 0):
    p = Http2Parser()
    out = []
    for side, ts, data in chunks[skip:]:
        out += p._feed(side, data, ts)
    out += p.close(chunks[-1][1] if chunks else 0)
    return out, p


mutated = mutations(FIXTURES)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(list(Side)), st.binary(max_size=300)), max_size=12), st.booleans())
def test_random_bytes_never_raise(events, preface: bool) -> None:
    chunks = [(side, i, data) for i, (side, data) in enumerate(events)]
    if preface:
        chunks.insert(0, (Side.REQUEST, 0, PREFACE))
    strict_run(chunks)


@SETTINGS
@given(st.data())
def test_records_do_not_depend_on_chunking(data) -> None:
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES)))
    whole, p1 = strict_run(chunks)
    split, p2 = strict_run(data.draw(splits(chunks)))
    assert split == whole
    assert p2.stats.parse_errors == p1.stats.parse_errors == 0


@SETTINGS
@given(st.data())
def test_mid_connection_records_do_not_depend_on_chunking(data) -> None:
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES)))
    skip = data.draw(st.integers(1, len(chunks) - 1))
    whole, _ = strict_run(chunks, skip)
    split, _ = strict_run(data.draw(splits(chunks[skip:])))
    assert split == whole


@SETTINGS
@given(st.data())
def test_mutated_captures_never_raise_and_do_not_depend_on_chunking(data) -> None:
    chunks = data.draw(mutated())
    whole, p1 = strict_run(chunks)
    split, p2 = strict_run(data.draw(splits(chunks)))
    assert split == whole
    assert p2.stats.parse_errors == p1.stats.parse_errors


@SETTINGS
@given(st.data())
def test_gaps_never_raise(data) -> None:
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES)))
    p = Http2Parser()
    for side, ts, payload in chunks:
        if data.draw(st.booleans()):
            p._feed(side, payload, ts)
        else:
            cut = data.draw(st.integers(0, len(payload)))
            p._feed(side, payload[:cut], ts)
            p.gap(side, len(payload) - cut, ts)
    p.close(0)


@SETTINGS
@given(st.data())
def test_tracker_records_do_not_depend_on_chunking(data) -> None:
    """From the connection's start, inference + replay is as split-proof as the parsers."""
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES + HTTP1_FIXTURES)))
    view = data.draw(st.booleans())
    t1, t2 = ConnectionTracker(), ConnectionTracker()
    whole = feed_tracker(t1, chunks, client_view=view)
    split = feed_tracker(t2, data.draw(splits(chunks)), client_view=view)
    assert split == whole and (t1.protocol, t1.role) == (t2.protocol, t2.role)
    assert t2.stats == t1.stats or t2.stats["parse_errors"] == t1.stats["parse_errors"] == 0
