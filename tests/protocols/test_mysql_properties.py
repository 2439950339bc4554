"""Property tests for the mysql parser: any input is survivable, chunking never changes the records."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from protocols.common import Side
from protocols.mysql import MySQLParser
from tests.protocols.conftest import Chunks, bytewise, fixture_chunks
from tests.protocols.sql_properties import SETTINGS, SMALL, mutations, splits, strict_runner

FIXTURES = [
    "mysql/cli.jsonl",
    "mysql/prepared.jsonl",
    "mysql/deprecate_eof.jsonl",
    "mysql/cursor.jsonl",
]
strict_run = strict_runner(MySQLParser)
mutated = mutations(FIXTURES)


@st.composite
def framed(draw) -> Chunks:
    """Well-framed packets with random headers and payloads: gets past the framer into the stitcher."""
    chunks = []
    for i in range(draw(st.integers(1, 20))):
        side = draw(st.sampled_from(list(Side)))
        seq = draw(st.sampled_from([0, 1, 2, 3, draw(st.integers(0, 255))]))
        head = draw(
            st.sampled_from([b"", b"\x00", b"\x03", b"\x16", b"\x17", b"\xfe", b"\xff", b"\xfb", b"\x01"])
        )
        payload = head + draw(st.binary(max_size=40))
        chunks.append((side, i, len(payload).to_bytes(3, "little") + bytes([seq]) + payload))
    return chunks


@SETTINGS
@given(framed())
def test_framed_random_messages_never_raise(chunks) -> None:
    strict_run(chunks, SMALL)


@SETTINGS
@given(st.lists(st.tuples(st.sampled_from(list(Side)), st.binary(max_size=300)), max_size=12))
def test_random_bytes_never_raise(pieces) -> None:
    strict_run([(side, i, data) for i, (side, data) in enumerate(pieces) if data], SMALL)


@SETTINGS
@given(mutated())
def test_mutated_captures_never_raise(chunks) -> None:
    strict_run(chunks)
    strict_run(chunks, SMALL)


@SETTINGS
@given(st.data())
def test_gaps_anywhere_never_raise(data) -> None:
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES)))
    gaps = frozenset(data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=3)))
    recs, _ = strict_run(chunks, gaps=gaps)
    whole, _ = strict_run(chunks)
    assert len(recs) <= len(whole)


@SETTINGS
@given(st.data())
def test_chunking_never_changes_records(data) -> None:
    chunks = fixture_chunks(data.draw(st.sampled_from(FIXTURES)))
    whole, p = strict_run(chunks)
    assert p.stats.parse_errors == 0
    split, q = strict_run(data.draw(splits(chunks)))
    assert split == whole
    assert q.stats.as_dict() == p.stats.as_dict()


def test_byte_by_byte_gives_the_same_records() -> None:
    for rel in FIXTURES:
        chunks = fixture_chunks(rel)
        whole, _ = strict_run(chunks)
        assert whole
        assert strict_run(bytewise(chunks))[0] == whole
