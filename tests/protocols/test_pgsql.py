"""PostgreSQL parser against bytes recorded from a real PostgreSQL 15 (see tests/peers/pgsql_record.py)."""

from __future__ import annotations

import struct

import pytest
from apptrace.protocols.common import Confidence, ParserConfig, ProtocolError, Record, Side
from apptrace.protocols.pgsql import PgSQLParser
from apptrace.protocols.pgsql.parse import parse_bind, render_value

from tests.protocols.conftest import bytewise, feed_parser, fixture_chunks

REQ, RESP = Side.REQUEST, Side.RESPONSE
COLS = ("req_cmd", "req_body", "resp_status", "resp_body", "error_code", "rows")
SKIPPED = "not executed: an earlier message of the batch failed"


def rows_of(records: list[Record]) -> list[tuple]:
    return [tuple(r.fields[c] for c in COLS) for r in records]


def msg(t: bytes, payload: bytes) -> bytes:
    return t + struct.pack(">i", len(payload) + 4) + payload


def run(name: str, **kw) -> tuple[PgSQLParser, list[Record]]:
    p = PgSQLParser(ParserConfig(**kw))
    return p, feed_parser(p, fixture_chunks(f"pgsql/{name}"))


PSQL = [
    ("QUERY", "DROP TABLE IF EXISTS items;", "OK", "DROP TABLE", None, None),
    (
        "QUERY",
        "CREATE TABLE items (id int PRIMARY KEY, name text, price float8);",
        "OK",
        "CREATE TABLE",
        None,
        None,
    ),
    (
        "QUERY",
        "INSERT INTO items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25);",
        "OK",
        "INSERT 0 3",
        None,
        None,
    ),
    ("QUERY", "SELECT id, name, price FROM items ORDER BY id;", "OK", "SELECT 3", None, 3),
    (
        "QUERY",
        "SELECT * FROM no_such_table;",
        "ERR",
        'ERROR: relation "no_such_table" does not exist',
        "42P01",
        None,
    ),
    ("QUERY", "SELECT pg_sleep(0.05);", "OK", "SELECT 1", None, 1),
    ("QUERY", "UPDATE items SET price = price * 2 WHERE id < 3;", "OK", "UPDATE 2", None, None),
    # one Query message with two statements: one record, tags joined, rows summed
    (
        "QUERY",
        "SELECT 1 AS a ; SELECT 2 AS b, 3 AS c UNION SELECT 4, 5;",
        "OK",
        "SELECT 1; SELECT 2",
        None,
        3,
    ),
    # COPY out (CopyOutResponse, CopyData) and in (the client's CopyData after CopyInResponse)
    ("QUERY", "COPY items TO STDOUT;", "OK", "COPY 3", None, 3),
    ("QUERY", "COPY  items FROM STDIN ", "OK", "COPY 2", None, None),
]


def test_psql_simple_queries_every_field() -> None:
    p, recs = run("psql.jsonl")
    assert rows_of(recs) == PSQL
    assert all(r.table == "pgsql_events" for r in recs)
    assert p.stats.as_dict() == {
        "parse_errors": 0,
        "gap_messages": 0,
        "evicted": 0,
        "unmatched_responses": 0,
        "dropped_bytes": 0,
    }


def test_latency_from_request_first_byte_to_response_last_byte() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    _, recs = run("psql.jsonl")
    sleep = recs[5]
    assert sleep.latency_ns >= 50_000_000
    req_ts = next(ts for side, ts, d in chunks if side is REQ and b"pg_sleep" in d)
    assert sleep.time_ns - sleep.latency_ns == req_ts
    assert all(r.latency_ns is not None and r.latency_ns >= 0 for r in recs)


def test_startup_and_scram_exchange_never_stored() -> None:
    for name in ("psql.jsonl", "pgbench_prepared.jsonl", "asyncpg_binary.jsonl"):
        chunks = fixture_chunks(f"pgsql/{name}")
        assert any(b"SCRAM-SHA-256" in d for _, _, d in chunks)
        _, recs = run(name)
        text = repr([r.fields for r in recs])
        for secret in ("SCRAM", "n,,n=", "c=biws", "user", "application_name"):
            assert secret not in text


def _pgbench_tx(aid: int, tid: int, delta: int) -> list[tuple]:
    return [
        ("EXECUTE", "BEGIN;", "OK", "BEGIN", None, None),
        (
            "EXECUTE",
            f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};",
            "OK",
            "UPDATE 1",
            None,
            None,
        ),
        ("EXECUTE", f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};", "OK", "SELECT 1", None, 1),
        (
            "EXECUTE",
            f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};",
            "OK",
            "UPDATE 1",
            None,
            None,
        ),
        (
            "EXECUTE",
            f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1;",
            "OK",
            "UPDATE 1",
            None,
            None,
        ),
        (
            "EXECUTE",
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES "
            f"({tid}, 1, {aid}, {delta}, CURRENT_TIMESTAMP);",
            "OK",
            "INSERT 0 1",
            None,
            None,
        ),
        ("EXECUTE", "END;", "OK", "COMMIT", None, None),
    ]


def _bind_values(chunks, stmt: bytes) -> list[list[str]]:
    """Text parameter values of every Bind of ``stmt`` in the capture (to learn pgbench's random picks)."""
    out = []
    for side, _, d in chunks:
        i = 0
        while side is REQ and i + 5 <= len(d):
            n = struct.unpack_from(">i", d, i + 1)[0]
            if d[i : i + 1] == b"B":
                _, name, _, values = parse_bind(d[i + 5 : i + 1 + n])
                if name == stmt:
                    out.append([v.decode() for v in values])
            i += 1 + n
    return out


def test_pgbench_prepared_extended_protocol() -> None:
    chunks = fixture_chunks("pgsql/pgbench_prepared.jsonl")
    p, recs = run("pgbench_prepared.jsonl")
    params = _bind_values(chunks, b"P_5")  # the history INSERT: tid, bid, aid, delta
    assert len(params) == 2
    expected = []
    for tid, _bid, aid, delta in params:
        expected += _pgbench_tx(int(aid), int(tid), int(delta))
    assert rows_of(recs) == expected
    assert p.stats.parse_errors == 0


def test_pgbench_pipeline_matched_in_order() -> None:
    chunks = fixture_chunks("pgsql/pgbench_pipeline.jsonl")
    p, recs = run("pgbench_pipeline.jsonl")
    got = rows_of(recs)
    assert len(got) == 6
    aids = [int(r[1].rsplit("= ", 1)[1].rstrip(";")) for r in got[::3]]
    for k, aid in enumerate(aids):
        assert got[3 * k : 3 * k + 3] == [
            (
                "EXECUTE",
                f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};",
                "OK",
                "SELECT 1",
                None,
                1,
            ),
            (
                "EXECUTE",
                f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid} + 1;",
                "OK",
                "SELECT 1",
                None,
                1,
            ),
            ("EXECUTE", "SELECT count(*) FROM pgbench_branches;", "OK", "SELECT 1", None, 1),
        ]
    # the three executes of a batch were sent together: same start, increasing ends
    batch = recs[:3]
    starts = {r.time_ns - r.latency_ns for r in batch}
    assert len(starts) == 1
    assert [r.time_ns for r in batch] == sorted(r.time_ns for r in batch)
    assert len(chunks) > 0 and p.stats.parse_errors == 0


def test_pipeline_error_skips_rest_of_batch() -> None:
    _, recs = run("pgbench_pipeline_error.jsonl")
    assert rows_of(recs) == [
        ("EXECUTE", "SELECT 1;", "OK", "SELECT 1", None, 1),
        ("EXECUTE", "SELECT 1 / 0;", "ERR", "ERROR: division by zero", "22012", None),
        ("EXECUTE", "SELECT 2;", "ERR", SKIPPED, None, None),
    ]
    assert recs[2].latency_ns is None


def test_asyncpg_binary_parameters() -> None:
    p, recs = run("asyncpg_binary.jsonl")
    assert rows_of(recs) == [
        (
            "QUERY",
            "CREATE TEMP TABLE t (i2 int2, i8 int8, b bool, f4 float4, f8 float8, v varchar, u uuid, "
            "by bytea, ts timestamp, tz timestamptz)",
            "OK",
            "CREATE TABLE",
            None,
            None,
        ),
        (
            "EXECUTE",
            "INSERT INTO t VALUES (-7, 1099511627776, true, 1.5, -2.25, 'it''s', "
            "'00000000-0000-0000-0000-000000001234', '\\x00ff', '2024-05-06 07:08:09.123456', "
            "'2024-05-06 07:08:09+00')",
            "OK",
            "INSERT 0 1",
            None,
            None,
        ),
        ("EXECUTE", "SELECT * FROM t WHERE i2 = -7 AND v = 'it''s'", "OK", "SELECT 1", None, 1),
        ("EXECUTE", "SELECT 1::int / 0", "ERR", "ERROR: division by zero", "22012", None),
        ("EXECUTE", "SELECT pg_sleep(0.05)", "OK", "SELECT 1", None, 1),
    ]
    assert recs[-1].latency_ns >= 50_000_000
    # asyncpg prepares in a round trip of its own: latency covers Bind..ReadyForQuery only
    assert recs[2].latency_ns < recs[-1].latency_ns
    assert p.stats.parse_errors == 0


ALL = [
    "psql.jsonl",
    "pgbench_prepared.jsonl",
    "pgbench_pipeline.jsonl",
    "pgbench_pipeline_error.jsonl",
    "asyncpg_binary.jsonl",
]


@pytest.mark.parametrize("name", ALL)
def test_byte_by_byte_same_records(name: str) -> None:
    chunks = fixture_chunks(f"pgsql/{name}")
    assert feed_parser(PgSQLParser(), bytewise(chunks)) == feed_parser(PgSQLParser(), chunks)


def test_attached_mid_connection() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    start = next(i for i, (side, _, d) in enumerate(chunks) if side is REQ and d[:1] == b"Q")
    p = PgSQLParser()
    assert rows_of(feed_parser(p, chunks[start:])) == PSQL
    assert p.stats.parse_errors == 0


def test_statement_prepared_before_capture() -> None:
    chunks = fixture_chunks("pgsql/pgbench_prepared.jsonl")
    # skip the first transaction, in which pgbench sent its Parse messages
    binds = [i for i, (side, _, d) in enumerate(chunks) if side is REQ and d[:1] == b"B"]
    recs = feed_parser(PgSQLParser(), chunks[binds[7] :])
    assert recs and all(r.fields["resp_status"] == "OK" for r in recs)
    assert recs[0].fields["req_body"].startswith("<statement 'P_")


def test_gap_in_response_drops_that_query_only() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    victim = next(i for i, (side, _, d) in enumerate(chunks) if side is RESP and b"apple" in d)
    p = PgSQLParser()
    out = []
    for i, (side, ts, data) in enumerate(chunks):
        if i == victim:
            out += p.feed(side, data[:20], ts)
            out += p.gap(side, len(data) - 20, ts)
        else:
            out += p.feed(side, data, ts)
    out += p.close(chunks[-1][1])
    assert rows_of(out) == [r for r in PSQL if not r[1].startswith("SELECT id, name")]
    assert p.stats.gap_messages == 1


def test_expire_close_and_bounded_pending() -> None:
    p = PgSQLParser(ParserConfig(request_timeout_ns=1000, max_pending=3))
    p.feed(REQ, msg(b"Q", b"SELECT 1\0"), 10)
    assert p.expire(500) == []
    recs = p.expire(2000)
    assert [(r.fields["req_body"], r.fields["resp_status"], r.latency_ns) for r in recs] == [
        ("SELECT 1", None, None)
    ]
    out = []
    for i in range(6):
        out += p.feed(REQ, msg(b"Q", b"SELECT %d\0" % i), 3000 + i)
    assert len(out) == 3 and len(p._ops) == 3
    assert [r.fields["req_body"] for r in p.close(9000)] == ["SELECT 3", "SELECT 4", "SELECT 5"]
    assert p.stats.evicted == 7


def test_parse_error_without_execute_is_recorded_as_parse() -> None:
    p = PgSQLParser()
    p.feed(REQ, msg(b"P", b"s1\0SELEC 1\0\0\0") + msg(b"D", b"Ss1\0") + msg(b"H", b""), 1)
    err = b'SERROR\0VERROR\0C42601\0Msyntax error at or near "SELEC"\0\0'
    recs = p.feed(RESP, msg(b"E", err), 2)
    assert rows_of(recs) == [
        ("PARSE", "SELEC 1", "ERR", 'ERROR: syntax error at or near "SELEC"', "42601", None)
    ]
    # the server skips until Sync: a Bind/Execute sent meanwhile is recorded as skipped
    recs = p.feed(REQ, msg(b"B", b"\0s1\0\0\0\0\0\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b""), 3)
    assert rows_of(recs) == [("EXECUTE", "SELEC 1", "ERR", SKIPPED, None, None)]
    assert p.feed(RESP, msg(b"Z", b"I"), 4) == []
    assert not p._ops


def test_bind_with_mismatched_format_codes_is_a_parse_error_not_a_crash_at_close() -> None:
    p = PgSQLParser()
    p.feed(REQ, msg(b"P", b"s1\0SELECT $1, $2, $3\0\0\0"), 1)
    two_formats_three_values = b"\0s1\0" + struct.pack(">HhhH", 2, 0, 0, 3) + (struct.pack(">i", 1) + b"1") * 3
    p.feed(REQ, msg(b"B", two_formats_three_values) + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b""), 2)
    assert p.stats.parse_errors == 1
    p.close(3)  # nothing left over that fails when rendered
    with pytest.raises(ProtocolError, match="2 format codes for 3 values"):
        parse_bind(two_formats_three_values)


def test_junk_counted_and_resync_on_next_chunk() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    p = PgSQLParser()
    out = []
    victim = next(i for i, (side, _, d) in enumerate(chunks) if side is RESP and b"apple" in d)
    for i, (side, ts, data) in enumerate(chunks):
        out += p.feed(side, data, ts)
        if i == victim:
            out += p.feed(REQ, b"\xee\x00\x00\x00\x09garbage", ts)
    out += p.close(chunks[-1][1])
    assert rows_of(out) == PSQL
    assert p.stats.parse_errors == 1


def test_render_binary_values() -> None:
    assert render_value(struct.pack(">i", -5), 1, 23) == "-5"
    assert render_value(b"\x01", 1, 16) == "true"
    assert render_value(struct.pack(">d", 0.5), 1, 701) == "0.5"
    assert render_value(b"\x00\x01", 1, 17) == "'\\x0001'"
    assert render_value(b"\xde\xad", 1, 99999) == "'\\xdead'"
    assert render_value(None, 1, 23) == "NULL"
    assert render_value(b"42", 0, 0) == "42"
    assert render_value(b"O'Neil", 0, 25) == "'O''Neil'"
    # numeric 12345.678: ndigits 3, weight 1, sign +, dscale 3, digits 1 2345 6780
    assert render_value(struct.pack(">hhHhhhh", 3, 1, 0, 3, 1, 2345, 6780), 1, 1700) == "12345.678"
    assert render_value(struct.pack(">i", 1), 1, 1082) == "'2000-01-02'"


def test_detect() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    startup = chunks[0][2]
    assert PgSQLParser.detect(REQ, startup) is Confidence.YES
    query = next(d for side, _, d in chunks if side is REQ and d[:1] == b"Q")
    assert PgSQLParser.detect(REQ, query) is Confidence.MAYBE
    ready = msg(b"Z", b"I")
    assert PgSQLParser.detect(RESP, ready) is Confidence.MAYBE
    for junk in (
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x20\x00\x00\x01\x03SELECT 1",
    ):
        assert PgSQLParser.detect(REQ, junk) is Confidence.NO


def test_big_message_in_small_chunks_is_linear_and_bounded() -> None:
    p = PgSQLParser(ParserConfig(max_body=16, max_buffer=1 << 20))
    sql = b"SELECT '" + b"x" * (3 << 20) + b"'\0"  # bigger than the buffer cap
    data = msg(b"Q", sql)
    for i in range(0, len(data), 4096):
        p.feed(REQ, memoryview(data)[i : i + 4096], 1)
        assert len(p._req_stream.buf) <= (1 << 20)
    ok = msg(b"T", b"\0\x01x\0" + b"\0" * 18) + msg(b"D", b"\0\x01\0\0\0\x01x") + msg(b"C", b"SELECT 1\0")
    recs = p.feed(RESP, ok + msg(b"Z", b"I"), 2)
    assert rows_of(recs) == [("QUERY", "SELECT 'xxxxxxxx", "OK", "SELECT 1", None, 1)]
    assert p.stats.parse_errors == 0


def test_expire_in_a_pipeline_keeps_the_stream_aligned() -> None:
    p = PgSQLParser(ParserConfig(request_timeout_ns=1000))
    p.feed(REQ, msg(b"P", b"s\0SELECT $1\0\0\0") + msg(b"S", b""), 0)
    p.feed(RESP, msg(b"1", b"") + msg(b"Z", b"I"), 1)
    batch = msg(b"B", b"\0s\0\0\0\0\x01\0\0\0\x017\0\0") + msg(b"E", b"\0\0\0\0\0") + msg(b"S", b"")
    p.feed(REQ, batch, 10)
    assert p.expire(500) == []
    recs = p.expire(5000)  # the server is stuck: the Execute is given up, its Sync still awaited
    assert rows_of(recs) == [("EXECUTE", "SELECT 7", None, None, None, None)]
    late = msg(b"2", b"") + msg(b"D", b"\0\x01\0\0\0\x017") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    p.feed(RESP, late, 6000)
    p.feed(REQ, batch, 7000)
    recs = p.feed(
        RESP,
        msg(b"2", b"") + msg(b"D", b"\0\x01\0\0\0\x017") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"),
        7005,
    )
    assert rows_of(recs) == [("EXECUTE", "SELECT 7", "OK", "SELECT 1", None, 1)]
    assert recs[0].latency_ns == 5


@pytest.mark.parametrize("client_view", [True, False])
@pytest.mark.parametrize("name", ALL)
def test_tracker_infers_pgsql_and_role(name: str, client_view: bool) -> None:
    from apptrace.protocols.tracker import ConnectionTracker

    from tests.protocols.conftest import feed_tracker

    chunks = fixture_chunks(f"pgsql/{name}")
    t = ConnectionTracker(role=None)
    recs = feed_tracker(t, chunks, client_view=client_view)
    assert t.protocol == "pgsql"
    assert rows_of(recs) == rows_of(feed_parser(PgSQLParser(), chunks))


def test_lost_ready_for_query_after_login_does_not_stall() -> None:
    chunks = fixture_chunks("pgsql/psql.jsonl")
    # drop the response chunk that ends authentication (it carries the first ReadyForQuery)
    auth_end = next(i for i, (side, _, d) in enumerate(chunks) if side is RESP and b"Z\0\0\0\x05I" in d)
    p = PgSQLParser()
    out = []
    for i, (side, ts, data) in enumerate(chunks):
        out += p.gap(side, len(data), ts) if i == auth_end else p.feed(side, data, ts)
    out += p.close(chunks[-1][1])
    assert rows_of(out) == PSQL


def test_what_follows_the_end_of_login_in_its_chunk_is_handled_as_after_login() -> None:
    # the parser reads a chunk's handler table once: the rest of the chunk that ends the login
    # must still be handled as by a logged-in connection, as when it comes in a chunk of its own
    startup = struct.pack(">ii", 16, 196608) + b"user\0u\0\0"
    login_end = msg(b"R", struct.pack(">i", 0)) + msg(b"S", b"a\0b\0") + msg(b"Z", b"I")
    after = msg(b"E", b"SERROR\0C57P01\0Mterminating\0\0") + msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I")
    whole, split = PgSQLParser(), PgSQLParser()
    for p in (whole, split):
        p.feed(REQ, startup, 1)
    whole.feed(RESP, login_end + after, 2)
    split.feed(RESP, login_end, 2)
    split.feed(RESP, after, 2)
    assert whole.stats == split.stats
    assert whole.stats.unmatched_responses == 2  # the ErrorResponse and the CommandComplete
    out = []
    for p in (whole, split):  # and the connection goes on logged in
        p.feed(REQ, msg(b"Q", b"SELECT 2\0"), 3)
        out.append(rows_of(p.feed(RESP, msg(b"C", b"SELECT 1\0") + msg(b"Z", b"I"), 4)))
    assert out[0] == out[1] == [("QUERY", "SELECT 2", "OK", "SELECT 1", None, 0)]
