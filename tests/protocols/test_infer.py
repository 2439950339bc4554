"""Protocol inference: which parser, which role, from which chunk."""

from __future__ import annotations

import pytest
from apptrace.protocols.common import Confidence, ProtocolParser, Side
from apptrace.protocols.http1 import Http1Parser
from apptrace.protocols.http2 import Http2Parser
from apptrace.protocols.http2.types import PREFACE
from apptrace.protocols.infer import PARSER_CLASSES, Inferrer, decide_chunk

from tests.protocols.conftest import FIXTURES, fixture_chunks

FIXTURE_FILES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.jsonl"))


def decide(role, *events, classes=None, final=False):
    inf = Inferrer(role, classes)
    for egress, data in events:
        inf.add_data(egress, data, 0)
    return inf.decide(final)


def test_parser_classes_in_tie_order() -> None:
    """Every parser takes part in inference, the most specific signatures first (ties go to the earlier)."""
    assert [c.name for c in PARSER_CLASSES] == ["http2", "http1", "pgsql", "mysql"]


def test_http1_client_and_server() -> None:
    d = decide(None, (True, b"GET / HTTP/1.1\r\n\r\n"))
    assert (d.parser_cls, d.role, d.confidence) == (Http1Parser, "client", Confidence.YES)
    d = decide(None, (True, b"HTTP/1.1 200 OK\r\n\r\n"))
    assert (d.parser_cls, d.role) == (Http1Parser, "server")
    d = decide(None, (False, b"POST /x HTTP/1.0\r\n"))
    assert (d.parser_cls, d.role) == (Http1Parser, "server")


def test_http2_preface_decides_role() -> None:
    d = decide(None, (False, PREFACE))
    assert (d.parser_cls, d.role) == (Http2Parser, "server")
    d = decide(None, (True, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"))
    assert (d.parser_cls, d.role) == (Http2Parser, "client")


def test_wait_on_short_prefixes_then_decide_on_close() -> None:
    assert decide(None, (True, b"GE")) is None
    d = decide(None, (True, b"GE"), final=True)
    assert d.parser_cls is Http1Parser and d.confidence is Confidence.MAYBE


def test_yes_beats_maybe() -> None:
    class Greedy(ProtocolParser):
        name = "greedy"

        @classmethod
        def detect(cls, side: Side, data: bytes) -> Confidence:
            return Confidence.MAYBE

    d = decide(None, (True, b"GET / HTTP/1.1\r\n\r\n"), classes=[Greedy, Http1Parser])
    assert d.parser_cls is Http1Parser


def test_a_broken_detect_is_ignored() -> None:
    class Broken(ProtocolParser):
        @classmethod
        def detect(cls, side: Side, data: bytes) -> Confidence:
            raise RuntimeError("bug")

    d = decide(None, (True, b"GET / HTTP/1.1\r\n\r\n"), classes=[Broken, Http1Parser])
    assert d.parser_cls is Http1Parser


def test_give_up_after_cap() -> None:
    inf = Inferrer(None)
    for _ in range(100):
        inf.add_data(True, b"\xff" * 200, 0)
    d = inf.decide()
    assert d is not None and d.parser_cls is None


def test_later_chunk_can_be_the_start() -> None:
    d = decide("client", (True, b"\x00garbage"), (True, b"GET / HTTP/1.1\r\n\r\n"))
    assert d.parser_cls is Http1Parser and d.start == (1, 0)


@pytest.mark.parametrize("role", [None, "client", "server"])
@pytest.mark.parametrize("final", [False, True])
def test_one_chunk_shortcut_agrees_with_the_general_ranking(role, final) -> None:
    """decide_chunk (every first chunk) must say what the general ranking says about the same buffer."""
    chunks = [d for rel in FIXTURE_FILES for _, _, d in fixture_chunks(rel)]
    chunks += [b"GE", b"HTTP/1.", PREFACE[:5], PREFACE, b"\x00garbage", b"\xff" * 300, b"\xff" * 20000, b"Q"]
    for data in chunks:
        for cut in sorted({len(data), 1, 7, 300}):
            chunk = data[:cut]
            for egress in (True, False):
                one = Inferrer(role)
                one.add_data(egress, chunk, 0)
                # A zero-byte gap on the other direction adds no candidate but takes the general path.
                general = Inferrer(role)
                general.add_data(egress, chunk, 0)
                general.add_gap(not egress, 0, 0)
                assert _key(one.decide(final)) == _key(general.decide(final)), (chunk[:40], egress)
                assert _key(
                    decide_chunk(role, PARSER_CLASSES, egress, chunk, len(chunk), 1, final)
                ) == _key(general.decide(final))


def _key(dec):
    return None if dec is None else (dec.parser_cls, dec.role, dec.confidence, dec.start)
