"""Property tests for the pgsql parser: any input is survivable, chunking never changes the records."""

from __future__ import annotations

from apptrace.protocols.common import Side
from apptrace.protocols.pgsql import PgSQLParser
from hypothesis import strategies as st

from tests.protocols.conftest import Chunks
from tests.protocols.sql_properties import property_tests

FIXTURES = [
    "pgsql/psql.jsonl",
    "pgsql/pgbench_prepared.jsonl",
    "pgsql/pgbench_pipeline.jsonl",
    "pgsql/pgbench_pipeline_error.jsonl",
    "pgsql/asyncpg_binary.jsonl",
]


@st.composite
def framed(draw) -> Chunks:
    """Well-framed messages with random types and payloads: gets past the framer into the stitcher."""
    chunks = []
    for i in range(draw(st.integers(1, 20))):
        side = draw(st.sampled_from(list(Side)))
        t = draw(st.sampled_from(list(b"QPBDESHCXpF" if side is Side.REQUEST else b"RSKZTDCEN123tnsIV")))
        payload = draw(st.binary(max_size=40))
        if draw(st.booleans()):
            payload = payload.replace(b"\0", b"") + b"\0" + draw(st.binary(max_size=12))
        chunks.append((side, i, bytes([t]) + (len(payload) + 4).to_bytes(4, "big") + payload))
    return chunks



globals().update(property_tests(PgSQLParser, FIXTURES, framed))
