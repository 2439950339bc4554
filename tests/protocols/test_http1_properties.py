"""Property tests for HTTP/1: any input is survivable, and chunking never changes the records."""

from __future__ import annotations

import os

from apptrace.protocols.common import Side
from apptrace.protocols.http1 import Http1Parser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.conftest import Chunks, fixture_chunks, mutations, splits

FIXTURES = [
    "http1/curl_keepalive.jsonl",
    "http1/curl_chunked.jsonl",
    "http1/curl_gzip.jsonl",
    "http1/curl_head.jsonl",
    "http1/curl_post_expect.jsonl",
    "http1/curl_http10_close.jsonl",
    "http1/pipelined.jsonl",
]
ALL = [c for rel in FIXTURES for c in fixture_chunks(rel)]
SETTINGS = settings(
    max_examples=int(os.environ.get("APPTRACE_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def strict_run(chunks: Chunks):
    """Feed through ``_feed`` so that a bug raises here instead of being counted as a parse error."""
    p = Http1Parser()
    out = []
    for side, ts, data in chunks:
        out += p._feed(side, data, ts)
    out += p.close(chunks[-1][1] if chunks else 0)
    return out, p


mutated = mutations(FIXTURES)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(list(Side)), st.binary(max_size=300)), max_size=12))
def test_random_bytes_never_raise(events) -> None:
    strict_run([(side, i, data) for i, (side, data) in enumerate(events)])


@SETTINGS
@given(st.data())
def test_records_do_not_depend_on_chunking(data) -> None:
    rel = data.draw(st.sampled_from(FIXTURES))
    chunks = fixture_chunks(rel)
    whole, p1 = strict_run(chunks)
    split, p2 = strict_run(data.draw(splits(chunks)))
    assert split == whole
    assert p2.stats.parse_errors == p1.stats.parse_errors == 0


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
    p = Http1Parser()
    for side, ts, payload in chunks:
        if data.draw(st.booleans()):
            p._feed(side, payload, ts)
        else:
            cut = data.draw(st.integers(0, len(payload)))
            p._feed(side, payload[:cut], ts)
            p.gap(side, len(payload) - cut, ts)
    p.close(0)
    assert p.stats.parse_errors == 0 or p.stats.gap_messages > 0


def test_concatenated_fixtures_on_one_connection() -> None:
    """Every fixture's requests, then every response, as one long pipelined connection."""
    reqs = b"".join(d for side, _, d in ALL if side is Side.REQUEST)
    resps = b"".join(d for side, _, d in ALL if side is Side.RESPONSE)
    p = Http1Parser()
    out = p.feed(Side.REQUEST, reqs, 1) + p.feed(Side.RESPONSE, resps, 2) + p.close(3)
    # the close-delimited HTTP/1.0 response swallows whatever follows it, as a real client would
    answered = [r for r in out if r.latency_ns is not None]
    assert len(answered) == 9 and len(out) == 12 and p.stats.parse_errors == 0
