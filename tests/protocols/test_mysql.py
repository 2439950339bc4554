"""MySQL parser against bytes recorded from a real MariaDB 10.11 (see tests/peers/mysql_record.py)."""

from __future__ import annotations

import re
import struct

import pytest
from apptrace.protocols.common import Confidence, ParserConfig, Record, Side
from apptrace.protocols.mysql import MySQLParser

from tests.protocols.conftest import bytewise, feed_parser, fixture_chunks

REQ, RESP = Side.REQUEST, Side.RESPONSE
COLS = ("req_cmd", "req_body", "resp_status", "resp_body", "error_code", "rows")


def rows_of(records: list[Record]) -> list[tuple]:
    return [tuple(r.fields[c] for c in COLS) for r in records]


def pkt(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def run(name: str, **kw) -> tuple[MySQLParser, list[Record]]:
    p = MySQLParser(ParserConfig(**kw))
    return p, feed_parser(p, fixture_chunks(f"mysql/{name}"))


CLI = [
    ("COM_QUERY", "DROP TABLE IF EXISTS shop.items", "OK", "0 rows affected", None, None),
    ("COM_QUERY", "DROP PROCEDURE IF EXISTS shop.two_sets", "OK", "0 rows affected", None, None),
    (
        "COM_QUERY",
        "CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40), price DOUBLE)",
        "OK",
        "0 rows affected",
        None,
        None,
    ),
    ("COM_QUERY", "SELECT DATABASE()", "OK", "1 row", None, 1),
    ("COM_INIT_DB", "shop", "OK", "0 rows affected", None, None),
    (
        "COM_QUERY",
        "INSERT INTO items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25)",
        "OK",
        "3 rows affected",
        None,
        None,
    ),
    ("COM_QUERY", "SELECT id, name, price FROM items ORDER BY id", "OK", "3 rows", None, 3),
    (
        "COM_QUERY",
        "SELECT * FROM no_such_table",
        "ERR",
        "Table 'shop.no_such_table' doesn't exist",
        1146,
        None,
    ),
    ("COM_QUERY", "SELECT SLEEP(0.05)", "OK", "1 row", None, 1),
    ("COM_QUERY", "UPDATE items SET price = price * 2 WHERE id < 3", "OK", "2 rows affected", None, None),
    # one COM_QUERY, three statements: result set, OK, result set (SERVER_MORE_RESULTS_EXISTS)
    (
        "COM_QUERY",
        "SELECT id FROM items WHERE id < 3; UPDATE items SET price = 1 WHERE id = 3; SELECT 'two'",
        "OK",
        "3 rows; 1 row affected",
        None,
        3,
    ),
    (
        "COM_QUERY",
        "CREATE PROCEDURE two_sets() BEGIN SELECT 1; SELECT 2 UNION SELECT 3; END",
        "OK",
        "0 rows affected",
        None,
        None,
    ),
    ("COM_QUERY", "CALL two_sets()", "OK", "3 rows", None, 3),  # two result sets and the CALL's own OK
    # LOAD DATA LOCAL: the file the client streams is skipped, so is a MariaDB progress report
    (
        "COM_QUERY",
        "LOAD DATA LOCAL INFILE '/tmp/apptrace_items.csv' INTO TABLE items FIELDS TERMINATED BY ','",
        "OK",
        "2 rows affected",
        None,
        None,
    ),
    ("COM_QUIT", "", "NONE", None, None, None),
]


def test_cli_session_every_field() -> None:
    p, recs = run("cli.jsonl")
    assert rows_of(recs) == CLI
    assert all(r.table == "mysql_events" for r in recs)
    assert p.stats.as_dict() == {
        "parse_errors": 0,
        "gap_messages": 0,
        "evicted": 0,
        "unmatched_responses": 0,
        "dropped_bytes": 0,
    }


def test_latency_spans_request_first_byte_to_response_last_byte() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    _, recs = run("cli.jsonl")
    sleep = next(r for r in recs if r.fields["req_body"] == "SELECT SLEEP(0.05)")
    assert sleep.latency_ns is not None and sleep.latency_ns >= 50_000_000
    req_ts = next(ts for side, ts, d in chunks if side is REQ and b"SLEEP(0.05)" in d)
    assert sleep.time_ns - sleep.latency_ns == req_ts
    assert all(
        r.latency_ns is not None and r.latency_ns >= 0 for r in recs if r.fields["resp_status"] != "NONE"
    )
    quit_ = recs[-1]
    assert quit_.latency_ns is None


def test_login_and_auth_data_never_stored() -> None:
    for name in ("cli.jsonl", "prepared.jsonl", "deprecate_eof.jsonl"):
        _, recs = run(name)
        text = repr([r.fields for r in recs])
        assert re.search(r"\bapp\b", text) is None  # the user name
        assert "mysql_native_password" not in text and "caching_sha2" not in text
        assert all(not r.fields["req_body"].startswith("\\x") for r in recs)


PREPARED_INSERT = "INSERT INTO orders VALUES (?, ?, ?, ?, ?)"
PREPARED_SELECT = "SELECT id, who, amount FROM orders WHERE id >= ? ORDER BY id"
CREATE = "CREATE TABLE orders (id INT PRIMARY KEY, who VARCHAR(40), amount DOUBLE, at DATETIME, note TEXT)"


def _unprepared(sql: str) -> list[tuple]:
    # mysql-connector prepares even statements without parameters, resets before each execute
    return [
        ("COM_STMT_PREPARE", sql, "OK", None, None, None),
        ("COM_STMT_RESET", sql, "OK", "0 rows affected", None, None),
        ("COM_STMT_EXECUTE", sql, "OK", "0 rows affected", None, None),
        ("COM_STMT_CLOSE", sql, "NONE", None, None, None),
    ]


def test_prepared_statements_with_binary_parameters() -> None:
    p, recs = run("prepared.jsonl")
    got = rows_of(recs)
    # prepare responses carry a server-chosen id: check their shape, then compare the rest
    for row in got:
        if row[0] == "COM_STMT_PREPARE":
            assert row[3].startswith("stmt_id=")
    got = [(r[0], r[1], r[2], None, r[4], r[5]) if r[0] == "COM_STMT_PREPARE" else r for r in got]
    expected = [
        (
            "COM_QUERY",
            "SET NAMES 'utf8mb4' COLLATE 'utf8mb4_general_ci'",
            "OK",
            "0 rows affected",
            None,
            None,
        ),
        ("COM_QUERY", "SET @@session.autocommit = OFF", "OK", "0 rows affected", None, None),
        ("COM_PING", "", "OK", "0 rows affected", None, None),
        *_unprepared("DROP TABLE IF EXISTS orders"),
        *_unprepared(CREATE),
        ("COM_STMT_PREPARE", PREPARED_INSERT, "OK", None, None, None),
        ("COM_STMT_RESET", PREPARED_INSERT, "OK", "0 rows affected", None, None),
        (
            "COM_STMT_EXECUTE",
            "INSERT INTO orders VALUES (1, 'alice', 9.5, '2024-05-06 07:08:09', NULL)",
            "OK",
            "1 row affected",
            None,
            None,
        ),
        ("COM_STMT_RESET", PREPARED_INSERT, "OK", "0 rows affected", None, None),
        (
            "COM_STMT_EXECUTE",
            "INSERT INTO orders VALUES (2, 'bob', -3.25, '2024-05-06 07:08:10', 'it\\'s')",
            "OK",
            "1 row affected",
            None,
            None,
        ),
        ("COM_STMT_CLOSE", PREPARED_INSERT, "NONE", None, None, None),
        ("COM_STMT_PREPARE", PREPARED_SELECT, "OK", None, None, None),
        ("COM_STMT_RESET", PREPARED_SELECT, "OK", "0 rows affected", None, None),
        (
            "COM_STMT_EXECUTE",
            "SELECT id, who, amount FROM orders WHERE id >= 1 ORDER BY id",
            "OK",
            "2 rows",
            None,
            2,
        ),
        ("COM_STMT_CLOSE", PREPARED_SELECT, "NONE", None, None, None),
        ("COM_STMT_PREPARE", PREPARED_INSERT, "OK", None, None, None),
        ("COM_STMT_RESET", PREPARED_INSERT, "OK", "0 rows affected", None, None),
        (
            "COM_STMT_EXECUTE",
            "INSERT INTO orders VALUES (1, 'dup', 0.0, NULL, NULL)",
            "ERR",
            "Duplicate entry '1' for key 'PRIMARY'",
            1062,
            None,
        ),
        ("COM_STMT_CLOSE", PREPARED_INSERT, "NONE", None, None, None),
        ("COM_STMT_PREPARE", "SELECT SLEEP(?)", "OK", None, None, None),
        ("COM_STMT_RESET", "SELECT SLEEP(?)", "OK", "0 rows affected", None, None),
        ("COM_STMT_EXECUTE", "SELECT SLEEP(0.05)", "OK", "1 row", None, 1),
        ("COM_STMT_CLOSE", "SELECT SLEEP(?)", "NONE", None, None, None),
        ("COM_QUIT", "", "NONE", None, None, None),
    ]
    assert got == expected
    prep = [r for r in recs if r.fields["req_cmd"] == "COM_STMT_PREPARE"]
    assert prep[2].fields["resp_body"].endswith("params=5 columns=0")
    assert prep[3].fields["resp_body"].endswith("params=1 columns=3")
    sleep = [r for r in recs if r.fields["req_body"] == "SELECT SLEEP(0.05)"][0]
    assert sleep.latency_ns >= 50_000_000
    assert p.stats.parse_errors == 0


def test_deprecate_eof_auth_switch_and_remembered_param_types() -> None:
    p, recs = run("deprecate_eof.jsonl")
    got = rows_of(recs)
    assert got[4][3].endswith("params=2 columns=2")
    got[4] = got[4][:3] + (None,) + got[4][4:]
    sql = "SELECT name, price FROM items WHERE id > ? AND name <> ?"
    assert got == [
        ("COM_QUERY", "SELECT 1 AS a, 'x' AS b UNION SELECT 2, 'y'", "OK", "2 rows", None, 2),
        ("COM_QUERY", "SELECT * FROM nope", "ERR", "Table 'shop.nope' doesn't exist", 1146, None),
        (
            "COM_QUERY",
            "INSERT INTO items VALUES (9, 'fig', 2.5) ON DUPLICATE KEY UPDATE price = 2.5",
            "OK",
            "1 row affected",
            None,
            None,
        ),
        ("COM_PING", "", "OK", "0 rows affected", None, None),
        ("COM_STMT_PREPARE", sql, "OK", None, None, None),
        # first execute sends the types (LONGLONG, STRING), the second relies on them
        (
            "COM_STMT_EXECUTE",
            "SELECT name, price FROM items WHERE id > 1 AND name <> 'pear'",
            "OK",
            "4 rows",
            None,
            4,
        ),
        (
            "COM_STMT_EXECUTE",
            "SELECT name, price FROM items WHERE id > 0 AND name <> 'fig'",
            "OK",
            "5 rows",
            None,
            5,
        ),
        ("COM_STMT_CLOSE", sql, "NONE", None, None, None),
        ("COM_QUIT", "", "NONE", None, None, None),
    ]
    assert p.stats.parse_errors == 0 and p.stats.unmatched_responses == 0


@pytest.mark.parametrize("name", ["cli.jsonl", "prepared.jsonl", "deprecate_eof.jsonl", "cursor.jsonl"])
def test_byte_by_byte_same_records(name: str) -> None:
    chunks = fixture_chunks(f"mysql/{name}")
    whole = feed_parser(MySQLParser(), chunks)
    assert feed_parser(MySQLParser(), bytewise(chunks)) == whole


@pytest.mark.parametrize("name", ["cli.jsonl", "prepared.jsonl", "deprecate_eof.jsonl", "cursor.jsonl"])
def test_attached_mid_connection_infers_eof_mode(name: str) -> None:
    """Without the login packet the parser must work out DEPRECATE_EOF from the result sets."""
    chunks = fixture_chunks(f"mysql/{name}")
    # drop everything up to the end of authentication: the first response with an OK packet at seq 2 or 4
    start = next(i for i, (side, _, d) in enumerate(chunks) if side is REQ and d[3] == 0)
    p = MySQLParser()
    recs = feed_parser(p, chunks[start:])
    assert rows_of(recs) == rows_of(feed_parser(MySQLParser(), chunks))
    assert p.stats.parse_errors == 0


def test_statement_prepared_before_capture() -> None:
    chunks = fixture_chunks("mysql/deprecate_eof.jsonl")
    start = next(i for i, (side, _, d) in enumerate(chunks) if side is REQ and d[4:5] == b"\x17")
    recs = feed_parser(MySQLParser(), chunks[start:])
    assert recs[0].fields["req_cmd"] == "COM_STMT_EXECUTE"
    assert recs[0].fields["req_body"].startswith("stmt_id=")
    assert recs[0].fields["rows"] == 4


def test_gap_in_response_drops_that_exchange_only() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    p = MySQLParser()
    out = []
    victim = next(i for i, (side, _, d) in enumerate(chunks) if side is RESP and b"apple" in d)
    for i, (side, ts, data) in enumerate(chunks):
        if i == victim:
            out += p.feed(side, data[:30], ts)
            out += p.gap(side, len(data) - 30, ts)
            continue
        out += p.feed(side, data, ts)
    out += p.close(chunks[-1][1])
    expected = [r for r in CLI if r[1] != "SELECT id, name, price FROM items ORDER BY id"]
    assert rows_of(out) == expected
    assert p.stats.gap_messages == 1


def test_gap_in_request_loses_the_request_and_counts_its_response() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    p = MySQLParser()
    out = []
    victim = next(i for i, (side, _, d) in enumerate(chunks) if side is REQ and b"no_such_table" in d)
    for i, (side, ts, data) in enumerate(chunks):
        if i == victim:
            out += p.gap(side, len(data), ts)
        else:
            out += p.feed(side, data, ts)
    out += p.close(chunks[-1][1])
    assert rows_of(out) == [r for r in CLI if r[1] != "SELECT * FROM no_such_table"]
    assert p.stats.unmatched_responses == 1


def test_expire_and_close_emit_unanswered_requests() -> None:
    p = MySQLParser(ParserConfig(request_timeout_ns=1000))
    assert p.feed(REQ, pkt(0, b"\x03SELECT 1"), 10) == []
    assert p.expire(500) == []
    recs = p.expire(2000)
    assert [(r.fields["req_body"], r.fields["resp_status"], r.latency_ns) for r in recs] == [
        ("SELECT 1", None, None)
    ]
    p.feed(REQ, pkt(0, b"\x03SELECT 2"), 3000)
    recs = p.close(4000)
    assert [(r.fields["req_body"], r.latency_ns, r.time_ns) for r in recs] == [("SELECT 2", None, 4000)]
    assert p.stats.evicted == 2


def test_pending_requests_are_bounded() -> None:
    p = MySQLParser(ParserConfig(max_pending=4))
    out = []
    for i in range(10):
        out += p.feed(REQ, pkt(0, b"\x03SELECT %d" % i), i)
    assert len(out) == 6 and p.stats.evicted == 6
    assert len(p._pending) == 4


def test_sixteen_mib_packets_and_truncated_bodies() -> None:
    p = MySQLParser(ParserConfig(max_body=32, max_buffer=1 << 20))
    sql = b"SELECT '" + b"x" * (0xFFFFFF - 9) + b"'"
    payload = b"\x03" + sql
    assert len(payload) > 0xFFFFFF
    data = pkt(0, payload[:0xFFFFFF]) + pkt(1, payload[0xFFFFFF:])
    out = []
    for i in range(0, len(data), 1 << 16):
        out += p.feed(REQ, data[i : i + (1 << 16)], 1)
    # a 16 MiB text row, then the EOFs
    row = b"\xfd" + (0xFFFFFF - 4).to_bytes(3, "little") + b"y" * (0xFFFFFF - 4)
    resp = pkt(1, b"\x01") + pkt(
        2, b"\x03def\x00\x00\x00\x01a\x01a\x0c?\x00\x02\x00\x00\x00\x03\x01\x00\x00\x00\x00"
    )
    resp += pkt(3, b"\xfe\x00\x00\x02\x00") + pkt(4, row) + pkt(5, b"") + pkt(6, b"\xfe\x00\x00\x02\x00")
    for i in range(0, len(resp), 1 << 16):
        out += p.feed(RESP, resp[i : i + (1 << 16)], 2)
    assert rows_of(out) == [("COM_QUERY", "SELECT '" + "x" * 24, "OK", "1 row", None, 1)]
    assert p.stats.parse_errors == 0
    assert len(p._streams[REQ].buf) < (1 << 20) and len(p._streams[RESP].buf) < (1 << 20)


def test_multi_result_sets_from_one_query() -> None:
    """A CALL or multi-statement query: result sets chained with SERVER_MORE_RESULTS_EXISTS."""
    p = MySQLParser()
    p.feed(REQ, pkt(0, b"\x03SELECT 1; SELECT 2"), 1)
    col = b"\x03def\x00\x00\x00\x01a\x01a\x0c?\x00\x02\x00\x00\x00\x03\x01\x00\x00\x00\x00"
    resp = pkt(1, b"\x01") + pkt(2, col) + pkt(3, b"\xfe\x00\x00\x0a\x00") + pkt(4, b"\x011")
    resp += pkt(5, b"\xfe\x00\x00\x0a\x00")  # more results
    resp += pkt(6, b"\x01") + pkt(7, col) + pkt(8, b"\xfe\x00\x00\x02\x00") + pkt(9, b"\x012")
    resp += pkt(10, b"\xfe\x00\x00\x02\x00")
    assert rows_of(p.feed(RESP, resp, 5)) == [("COM_QUERY", "SELECT 1; SELECT 2", "OK", "2 rows", None, 2)]


def test_junk_is_counted_and_parser_resyncs_on_next_chunk() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    p = MySQLParser()
    out = []
    for side, ts, data in chunks:
        out += p.feed(side, data, ts)
        if side is RESP and b"apple" in data:
            out += p.feed(REQ, b"\x05\x00\x00\x07garbage", ts)  # not a command packet
    out += p.close(chunks[-1][1])
    assert rows_of(out) == CLI
    assert p.stats.parse_errors == 1


def test_detect() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    login = next(d for side, _, d in chunks if side is REQ)
    assert MySQLParser.detect(REQ, login) is Confidence.YES
    query = next(d for side, _, d in chunks if side is REQ and b"SLEEP" in d)
    assert MySQLParser.detect(REQ, query) is Confidence.MAYBE
    ok = next(d for side, _, d in chunks if side is RESP and d[4] == 0)
    assert MySQLParser.detect(RESP, ok) is Confidence.MAYBE
    for junk in (
        b"",
        b"GET / HTTP/1.1\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"\x00\x00\x00\x08\x04\xd2\x16\x2f",
        struct.pack(">i", 8) + struct.pack(">i", 196608),
    ):
        assert MySQLParser.detect(REQ, junk) is Confidence.NO


def _login(seq: int, caps: int = 0x010FA685) -> bytes:  # with CLIENT_DEPRECATE_EOF
    body = (
        struct.pack("<IIB23x", caps, 1 << 24, 45)
        + b"app\0"
        + b"\x14"
        + b"S" * 20
        + b"caching_sha2_password\0"
    )
    return pkt(seq, body)


def test_caching_sha2_more_data_exchange_skipped() -> None:
    """Login at seq 2 (after an SSLRequest the probes never see), AuthMoreData, full auth, then a query."""
    p = MySQLParser()
    assert MySQLParser.detect(REQ, _login(2)) is Confidence.YES
    out = p.feed(REQ, _login(2), 1)
    out += p.feed(RESP, pkt(3, b"\x01\x04"), 2)  # more data: perform full authentication
    out += p.feed(REQ, pkt(4, b"secret-password\0"), 3)  # the clear password, inside TLS
    out += p.feed(RESP, pkt(5, b"\x00\x00\x00\x02\x00\x00\x00"), 4)
    out += p.feed(REQ, pkt(0, b"\x03SELECT 1"), 5)
    col = b"\x03def\x00\x00\x00\x011\x011\x0c?\x00\x01\x00\x00\x00\x08\x81\x00\x00\x00\x00"
    out += p.feed(
        RESP, pkt(1, b"\x01") + pkt(2, col) + pkt(3, b"\x011") + pkt(4, b"\xfe\x00\x00\x02\x00\x00\x00"), 9
    )
    assert rows_of(out) == [("COM_QUERY", "SELECT 1", "OK", "1 row", None, 1)]
    assert out[0].latency_ns == 4
    assert "secret" not in repr(out)
    assert p.stats.parse_errors == 0


def test_change_user_is_not_recorded_and_its_auth_is_skipped() -> None:
    p = MySQLParser()
    out = p.feed(REQ, pkt(0, b"\x03SELECT 1"), 1)
    out += p.feed(RESP, pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), 2)
    out += p.feed(REQ, pkt(0, b"\x11bob\0\x14" + b"P" * 20 + b"db\0"), 3)
    out += p.feed(RESP, pkt(1, b"\xfemysql_native_password\0" + b"s" * 20 + b"\0"), 4)
    out += p.feed(REQ, pkt(2, b"A" * 20), 5)
    out += p.feed(RESP, pkt(3, b"\x00\x00\x00\x02\x00\x00\x00"), 6)
    out += p.feed(REQ, pkt(0, b"\x0e"), 7)
    out += p.feed(RESP, pkt(1, b"\x00\x00\x00\x02\x00\x00\x00"), 8)
    assert [r.fields["req_cmd"] for r in out] == ["COM_QUERY", "COM_PING"]
    assert "bob" not in repr(out) and "PPPP" not in repr(out)
    assert p.stats.parse_errors == 0 and p.stats.unmatched_responses == 0


@pytest.mark.parametrize("client_view", [True, False])
@pytest.mark.parametrize("name", ["cli.jsonl", "prepared.jsonl", "deprecate_eof.jsonl", "cursor.jsonl"])
def test_tracker_infers_mysql_and_role(name: str, client_view: bool) -> None:
    from apptrace.protocols.tracker import ConnectionTracker

    from tests.protocols.conftest import feed_tracker

    chunks = fixture_chunks(f"mysql/{name}")
    t = ConnectionTracker(role=None)
    recs = feed_tracker(t, chunks, client_view=client_view)
    assert t.protocol == "mysql"
    assert rows_of(recs) == rows_of(feed_parser(MySQLParser(), chunks))


def test_cursor_execute_then_fetches() -> None:
    """A read-only cursor: the execute's reply stops after the columns, COM_STMT_FETCH brings the rows."""
    p, recs = run("cursor.jsonl")
    got = rows_of(recs)
    assert got[0][3].endswith("params=1 columns=2")
    sql = "SELECT id, name FROM items WHERE id > ?"
    assert got[1:] == [
        ("COM_STMT_EXECUTE", "SELECT id, name FROM items WHERE id > 0", "OK", "cursor opened", None, 0),
        ("COM_STMT_FETCH", sql, "OK", "2 rows", None, 2),  # asked for 2
        ("COM_STMT_FETCH", sql, "OK", "4 rows", None, 4),  # asked for 10, 4 left
        ("COM_QUIT", "", "NONE", None, None, None),
    ]
    assert p.stats.parse_errors == 0


def test_lost_login_ok_does_not_stall() -> None:
    chunks = fixture_chunks("mysql/cli.jsonl")
    login_ok = next(i for i, (side, _, d) in enumerate(chunks) if side is RESP and d[3] == 2)
    p = MySQLParser()
    out = []
    for i, (side, ts, data) in enumerate(chunks):
        out += p.gap(side, len(data), ts) if i == login_ok else p.feed(side, data, ts)
    out += p.close(chunks[-1][1])
    assert rows_of(out) == CLI


def test_compressed_connection_is_counted_not_parsed() -> None:
    p = MySQLParser()
    out = p.feed(REQ, _login(1, 0x010FA685 | 0x20), 1)
    out += p.feed(RESP, b"\x07\x00\x00\x02\x00\x00\x00" + b"\x00\x00\x00\x02\x00\x00\x00", 2)
    out += p.feed(REQ, b"\x0d\x00\x00\x00\x00\x00\x00\x09\x00\x00\x00\x03SELECT 1", 3)
    assert out == []
    assert p.stats.parse_errors == 1 and p.stats.dropped_bytes > 0


def test_mariadb_bulk_execute_is_recorded() -> None:
    chunks = fixture_chunks("mysql/deprecate_eof.jsonl")
    p = MySQLParser()
    end = next(i for i, (side, _, d) in enumerate(chunks) if side is REQ and d[4:5] == b"\x17")
    feed_parser(p, chunks[:end], close=False)
    stmt_id = next(iter(p._stmts))
    out = p.feed(REQ, pkt(0, b"\xfa" + stmt_id.to_bytes(4, "little") + b"\x80\x00"), 10)
    out += p.feed(RESP, pkt(1, b"\x00\x03\x00\x02\x00\x00\x00"), 20)
    sql = "SELECT name, price FROM items WHERE id > ? AND name <> ?"
    assert rows_of(out) == [("COM_STMT_BULK_EXECUTE", sql, "OK", "3 rows affected", None, None)]
