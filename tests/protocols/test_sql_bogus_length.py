"""A bogus length prefix on a MySQL or PostgreSQL connection blinds nothing after it.

Recorded sessions (tests/fixtures/mysql, pgsql) with a bogus header spliced in on the client's
side, where a send begins: it costs one parse error and a few dropped bytes, and every record the
clean session gives is still there. A genuinely large message still works.
"""

from __future__ import annotations

import struct

import pytest
from apptrace.protocols.common import ParserConfig, Record, Side
from apptrace.protocols.mysql import MySQLParser
from apptrace.protocols.pgsql import PgSQLParser
from hypothesis import given
from hypothesis import strategies as st

from tests.protocols.conftest import Chunks, bytewise, feed_parser, fixture_chunks
from tests.protocols.sql_properties import SETTINGS

REQ, RESP = Side.REQUEST, Side.RESPONSE
# The prefixes of the issue: a COM_QUERY of 16 MiB - 1, a Query of 2 GiB - 1.
BOGUS = {"mysql": b"\xff\xff\xff\x00\x03", "pgsql": b"Q\x7f\xff\xff\xff"}
PARSERS = {"mysql": MySQLParser, "pgsql": PgSQLParser}
FIXTURES = {
    "mysql": ["cli.jsonl", "prepared.jsonl", "deprecate_eof.jsonl", "cursor.jsonl"],
    "pgsql": ["psql.jsonl", "pgbench_prepared.jsonl", "pgbench_pipeline.jsonl", "asyncpg_binary.jsonl"],
}
CASES = [(proto, name) for proto, names in FIXTURES.items() for name in names]


def command_starts(proto: str, chunks: Chunks) -> list[int]:
    """Indexes of the client's chunks that begin a command, after the login."""
    out = []
    for i, (side, _, data) in enumerate(chunks):
        if side is not REQ:
            continue
        if proto == "mysql" and len(data) > 4 and data[3] == 0:
            out.append(i)
        if proto == "pgsql" and data[:1] in (b"Q", b"P", b"B"):
            out.append(i)
    return out


def splice(chunks: Chunks, at: int, bogus: bytes, alone: bool) -> Chunks:
    """The bogus header as a send of its own before chunk ``at``, or written in the same send."""
    side, ts, data = chunks[at]
    if alone:
        return [*chunks[:at], (side, ts, bogus), *chunks[at:]]
    return [*chunks[:at], (side, ts, bogus + data), *chunks[at + 1 :]]


def run(proto: str, chunks: Chunks) -> tuple[list[Record], dict[str, int]]:
    p = PARSERS[proto](ParserConfig())
    return feed_parser(p, chunks), p.stats.as_dict()


@pytest.mark.parametrize(("proto", "name"), CASES)
@pytest.mark.parametrize("alone", [True, False], ids=["own send", "same send"])
def test_bogus_length_costs_one_parse_error_and_no_record(proto: str, name: str, alone: bool) -> None:
    chunks = fixture_chunks(f"{proto}/{name}")
    clean, clean_stats = run(proto, chunks)
    assert clean and clean_stats["parse_errors"] == 0
    starts = command_starts(proto, chunks)
    for at in (starts[0], starts[len(starts) // 2], starts[-1]):
        records, stats = run(proto, splice(chunks, at, BOGUS[proto], alone))
        assert stats["parse_errors"] == 1, (at, stats)
        assert stats["dropped_bytes"] == clean_stats["dropped_bytes"] + len(BOGUS[proto])
        assert records == clean, at


@pytest.mark.parametrize("name", FIXTURES["pgsql"])
def test_pgsql_bogus_length_fed_byte_by_byte(name: str) -> None:
    """Cut into single bytes, sends no longer show where messages begin; a PostgreSQL header is
    judged whole (5 bytes), and the next message starts right after it."""
    chunks = fixture_chunks(f"pgsql/{name}")
    clean, clean_stats = run("pgsql", chunks)
    at = command_starts("pgsql", chunks)[1]
    records, stats = run("pgsql", bytewise(splice(chunks, at, BOGUS["pgsql"], True)))
    assert stats["parse_errors"] == 1
    assert stats["dropped_bytes"] == clean_stats["dropped_bytes"] + 5
    assert records == clean


@SETTINGS
@given(st.data())
def test_bogus_prefix_anywhere_a_send_begins(data) -> None:
    proto, name = data.draw(st.sampled_from(CASES))
    chunks = fixture_chunks(f"{proto}/{name}")
    clean, _ = run(proto, chunks)
    at = data.draw(st.sampled_from(command_starts(proto, chunks)))
    # the prefixes, or another length no peer reads: PostgreSQL's limit, MySQL's SQL check
    if proto == "pgsql":
        length = data.draw(st.integers((1 << 30) - 1, (1 << 31) - 1))
        bogus = data.draw(st.sampled_from([b"Q", b"P", b"B"])) + struct.pack(">i", length)
    else:
        length = data.draw(st.integers(1 << 16, (1 << 24) - 1))
        bogus = length.to_bytes(3, "little") + b"\x00" + data.draw(st.sampled_from([b"\x03", b"\x16", b"\x99"]))
    records, stats = run(proto, splice(chunks, at, bogus, data.draw(st.booleans())))
    assert stats["parse_errors"] == 1
    assert records == clean


def test_pgsql_lengths_past_what_the_peer_reads_are_lost_boundaries() -> None:
    """A Sync of 20000 bytes or a CommandComplete of 40000: no server or libpq reads those."""
    for side, bogus in ((REQ, b"S\x00\x00\x4e\x20"), (RESP, b"C\x00\x00\x9c\x40")):
        p = PgSQLParser()
        p.feed(REQ, b"Q\x00\x00\x00\x0dSELECT 1\x00", 1)  # past the startup packet a first message may be
        p.feed(side, bogus, 2)
        assert p.stats.parse_errors == 1
        assert not p._streams[side].buf and not p._streams[side].skip


def test_mysql_response_with_the_wrong_sequence_id_is_not_waited_for() -> None:
    p = MySQLParser()
    query = b"\x09\x00\x00\x00\x03SELECT 1"
    ok = b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"
    out = p.feed(REQ, query, 1) + p.feed(RESP, b"\xff\xff\xff\x07\x00", 2)
    assert p.stats.parse_errors == 1
    out += p.feed(REQ, query, 3) + p.feed(RESP, ok, 4)
    assert [r.fields["resp_status"] for r in out] == ["OK"]


@pytest.mark.parametrize("chunk", [1 << 14, 1000])
def test_a_genuinely_large_query_still_works(chunk: int) -> None:
    """A 20 MiB MySQL query (a 16 MiB packet and its continuation) and a 20 MiB PostgreSQL Query
    are one record each, followed by the next query as usual."""
    size = 20 << 20
    sql = b"INSERT INTO t VALUES ('" + b"x" * size + b"')"
    payload = b"\x03" + sql
    first, rest = payload[:0xFFFFFF], payload[0xFFFFFF:]
    mysql = b"\xff\xff\xff\x00" + first + len(rest).to_bytes(3, "little") + b"\x01" + rest
    pg = b"Q" + struct.pack(">i", len(sql) + 5) + sql + b"\x00"
    answers = {
        "mysql": (b"\x07\x00\x00\x02\x00\x00\x00\x02\x00\x00\x00", b"\x09\x00\x00\x00\x03SELECT 1",
                  b"\x07\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00"),
        "pgsql": (b"C\x00\x00\x00\x0fINSERT 0 1\x00Z\x00\x00\x00\x05I", b"Q\x00\x00\x00\x0dSELECT 1\x00",
                  b"C\x00\x00\x00\x0dSELECT 1\x00Z\x00\x00\x00\x05I"),
    }  # fmt: skip
    for proto, big in (("mysql", mysql), ("pgsql", pg)):
        answer, query, answer2 = answers[proto]
        p = PARSERS[proto](ParserConfig())
        out: list[Record] = []
        for i in range(0, len(big), chunk):
            out += p.feed(REQ, big[i : i + chunk], 1)
        out += p.feed(RESP, answer, 2) + p.feed(REQ, query, 3) + p.feed(RESP, answer2, 4)
        assert p.stats.parse_errors == 0, proto
        assert [r.fields["resp_status"] for r in out] == ["OK", "OK"], proto
        assert out[0].fields["req_body"].startswith("INSERT INTO t VALUES ('xxx"), proto
        assert out[1].fields["req_body"] == "SELECT 1", proto
