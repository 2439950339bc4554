"""Property tests for ConnectionTracker: arbitrary event sequences never raise, and nothing is lost silently."""

from __future__ import annotations

import os

import apptrace.protocols.infer as infer
import pytest
from apptrace.protocols import ConnectionTracker
from apptrace.protocols.common import ProtocolParser
from apptrace.protocols.http1 import Http1Parser
from apptrace.protocols.http2 import Http2Parser
from apptrace.protocols.http2.types import PREFACE
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.conftest import fixture_chunks

SETTINGS = settings(
    max_examples=int(os.environ.get("APPTRACE_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SEEDS = [d for rel in ("http1/pipelined.jsonl", "grpc/grpcio_calls.jsonl") for _, _, d in fixture_chunks(rel)]


@pytest.fixture
def strict(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let parser exceptions reach the tracker (where they are counted as tracker_errors), HTTP parsers only."""

    def feed(self, side, data, ts_ns):  # noqa: ANN001, ANN202
        return self._feed(side, data, ts_ns)

    monkeypatch.setattr(ProtocolParser, "feed", feed)
    monkeypatch.setattr(infer, "PARSER_CLASSES", (Http2Parser, Http1Parser))


payloads = st.one_of(
    st.binary(max_size=200),
    st.sampled_from(SEEDS),
    st.sampled_from([PREFACE, b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n"]),
)
events = st.lists(
    st.one_of(
        st.tuples(st.just("feed"), st.booleans(), payloads),
        st.tuples(st.just("gap"), st.booleans(), st.integers(0, 5000)),
        st.tuples(st.just("expire"), st.just(False), st.integers(0, 10**12)),
    ),
    max_size=25,
)


@SETTINGS
@given(events, st.sampled_from([None, "client", "server"]))
def test_any_event_sequence_is_survivable(strict: None, evs, role) -> None:
    t = ConnectionTracker(role)
    n = 0
    for i, (kind, egress, arg) in enumerate(evs):
        if kind == "feed":
            n += len(t.feed(egress, arg, i))
        elif kind == "gap":
            n += len(t.gap(egress, arg, i))
        else:
            n += len(t.expire(arg))
    n += len(t.close(len(evs)))
    assert t.stats["tracker_errors"] == 0
    assert t.protocol in ("http1", "http2", "unknown")  # close always settles inference
    assert t.role in (None, "client", "server")
    assert all(isinstance(v, int) and v >= 0 for v in t.stats.values())
