"""Property tests for the mysql parser: any input is survivable, chunking never changes the records."""

from __future__ import annotations

from apptrace.protocols.common import Side
from apptrace.protocols.mysql import MySQLParser
from hypothesis import strategies as st

from tests.protocols.conftest import Chunks
from tests.protocols.sql_properties import property_tests

FIXTURES = [
    "mysql/cli.jsonl",
    "mysql/prepared.jsonl",
    "mysql/deprecate_eof.jsonl",
    "mysql/cursor.jsonl",
]


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



globals().update(property_tests(MySQLParser, FIXTURES, framed))
