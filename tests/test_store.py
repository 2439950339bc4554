"""Store: columnar inserts, upserts, redaction, 0600 files, retention, schema version — on real DuckDB files."""

from __future__ import annotations

import os
import stat
import time

import duckdb
import pytest

from apptrace.common.units import parse_duration, parse_size
from apptrace.store import schema
from apptrace.store.writer import Store, StoreError
from tests.conftest import read

NOW = time.time_ns()


def http_row(i: int = 0, **kw) -> dict:
    row = {c: None for c in schema.columns("http_events")}
    row.update(time_=NOW - i * 1_000_000, pid=100 + i % 3, comm="python3", service=f"svc{i % 2}",
               trace_role="server", local_addr="127.0.0.1", local_port=8443, remote_addr="127.0.0.1",
               remote_port=40000 + i, encrypted=True, tls_lib="openssl", latency=1000 * (i + 1),
               conn_id=f"{100 + i % 3}:5:0", http_version="1.1", req_method="GET", req_path=f"/p{i % 4}",
               req_headers='{"host":"x"}', req_body="", req_body_size=0, resp_status=200 + (i % 5) * 100,
               resp_message="OK", resp_headers="{}", resp_body="ok", resp_body_size=2, content_type="text/plain")
    row.update(kw)
    return row


def test_insert_roundtrip_types(tmp_path):
    db = str(tmp_path / "t.duckdb")
    with Store(db) as s:
        s.add_events("http_events", [http_row(i) for i in range(50)])
        s.add_events("mysql_events", [{"time_": NOW, "pid": 1, "req_cmd": "COM_QUERY", "req_body": "SELECT 1",
                                       "resp_status": "OK", "rows": 1, "error_code": None, "latency": 5}])
        s.add_events("pgsql_events", [{"time_": NOW, "pid": 1, "req_cmd": "QUERY", "resp_status": "ERR",
                                       "error_code": "42P01", "latency": None}])
        s.add_capture_stats([{"time_": NOW, "events": 10, "bytes": 1000, "lost_events": 2}])
        s.flush()
        assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 50}]
    types = dict(read(db, "SELECT column_name, data_type FROM information_schema.columns "
                          "WHERE table_name = 'http_events'"))
    assert types["time_"] == "TIMESTAMP_NS" and types["latency"] == "BIGINT"
    assert types["headers_partial"] == "BOOLEAN" and types["req_messages"] == "INTEGER"
    (t,) = read(db, "SELECT epoch_ns(max(time_)) FROM http_events")[0]
    assert t == NOW
    assert read(db, "SELECT error_code, latency FROM pgsql_events") == [("42P01", None)]
    assert read(db, "SELECT lost_events FROM capture_stats") == [(2,)]


def test_flush_is_columnar_and_buffers_until_flush(tmp_path):
    db = str(tmp_path / "t.duckdb")
    s = Store(db)
    s.add_events("http_events", [http_row(i) for i in range(10)])
    assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 0}]
    s.flush()
    assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 10}]
    s.close()


def test_unknown_event_table(tmp_path):
    with Store(str(tmp_path / "t.duckdb")) as s, pytest.raises(ValueError, match="http_events"):
        s.add_events("nope", [])


def test_upsert_connections_and_processes(tmp_path):
    db = str(tmp_path / "t.duckdb")
    with Store(db) as s:
        s.upsert_connections([{"conn_id": "1:3:0", "pid": 1, "bytes_sent": 5, "open_time": NOW},
                              {"conn_id": "1:3:0", "bytes_sent": 9},
                              {"conn_id": "2:3:0", "pid": 2}])
        s.flush()
        s.upsert_connections([{"conn_id": "1:3:0", "close_time": NOW + 5, "bytes_recv": 3}])
        s.upsert_processes([{"pid": 1, "start_time": NOW, "comm": "a"}, {"pid": 1, "start_time": NOW + 1}])
        s.flush()
        s.upsert_processes([{"pid": 1, "start_time": NOW, "exe": "/bin/a"}])
        s.flush()
    rows = read(db, "SELECT conn_id, pid, bytes_sent, bytes_recv, epoch_ns(open_time), epoch_ns(close_time) "
                    "FROM connections ORDER BY conn_id")
    assert rows == [("1:3:0", 1, 9, 3, NOW, NOW + 5), ("2:3:0", 2, None, None, None, None)]
    procs = read(db, "SELECT pid, epoch_ns(start_time), comm, exe FROM processes ORDER BY start_time")
    assert procs == [(1, NOW, "a", "/bin/a"), (1, NOW + 1, None, None)]


def test_redaction_default(tmp_path):
    db = str(tmp_path / "t.duckdb")
    secret = "Bearer s3cr3t"
    with Store(db, redact_headers=["X-Api-Key"]) as s:
        s.add_events("http_events", [http_row(
            0, req_headers=f'{{"authorization":"{secret}","cookie":"a=b","x-api-key":"k1","host":"h"}}',
            resp_headers='{"set-cookie":["a=1","b=2"],"content-type":"text/plain"}')])
        s.flush()
    import json

    (req, resp), = read(db, "SELECT req_headers, resp_headers FROM http_events")
    req, resp = json.loads(req), json.loads(resp)
    assert req == {"authorization": "<redacted>", "cookie": "<redacted>", "x-api-key": "<redacted>", "host": "h"}
    assert resp == {"set-cookie": ["<redacted>", "<redacted>"], "content-type": "text/plain"}
    raw = open(db, "rb").read()
    assert b"s3cr3t" not in raw


def test_redaction_columnar_equals_per_row():
    """Header columns are redacted once per distinct value; the result is Redactor.headers on every row.

    Covers repeated and distinct values, NULLs, a row with no header column at all, bytes, a dict
    (which sends the batch down the per-column path) and secrets in either column.
    """
    from apptrace.store.redact import Redactor
    from apptrace.store.writer import arrow_table

    r = Redactor(["X-Api-Key"])
    shared = '{":path":"/","user-agent":"h2load"}'
    secret = '{"authorization":"Bearer s3cr3t","host":"h"}'
    values = [shared, shared, secret, None, '{"X-API-KEY":"k"}', "Cookie: a=b\nHost: h", shared, secret]
    rows = [http_row(i, req_headers=v, resp_headers=values[-1 - i]) for i, v in enumerate(values)]
    rows.append({"time_": NOW})
    expect = [[None if v is None else r.headers(v) for v in (row.get(c) for row in rows)]
              for c in ("req_headers", "resp_headers")]
    got = arrow_table("http_events", rows, [], r)
    assert [got.column(c).to_pylist() for c in ("req_headers", "resp_headers")] == expect
    assert "s3cr3t" not in str(got.column("req_headers").to_pylist())

    rows[1]["req_headers"] = secret.encode()
    rows[3]["resp_headers"] = {"Set-Cookie": "a=1", "host": "h"}
    expect = [[None if v is None else r.headers(v) for v in (row.get(c) for row in rows)]
              for c in ("req_headers", "resp_headers")]
    got = arrow_table("http_events", rows, [], r)
    assert [got.column(c).to_pylist() for c in ("req_headers", "resp_headers")] == expect
    assert got.column("req_headers")[1].as_py() == '{"authorization":"<redacted>","host":"h"}'
    assert arrow_table("http_events", rows[:1], [], None).column("req_headers").to_pylist() == [shared]


def test_checkpoint_threshold_follows_size_cap(tmp_path):
    """64 MiB of WAL between checkpoints, but never more than an eighth of --max-size (16 MiB floor)."""
    def wal(**kw) -> str:
        with Store(str(tmp_path / "w.duckdb"), **kw) as s:
            return s.con.execute("SELECT current_setting('checkpoint_threshold')").fetchall()[0][0]

    assert wal() == "64.0 MiB"
    assert wal(max_size="10M") == "16.0 MiB"
    assert wal(max_size="256M") == "32.0 MiB"
    assert wal(max_size="2G") == "64.0 MiB"


def test_redaction_malformed_json_and_case(tmp_path):
    from apptrace.store.redact import Redactor

    r = Redactor()
    assert r.headers('{"Authorization": "x"}') == '{"Authorization":"<redacted>"}'
    assert "secret" not in r.headers("Authorization: secret\nHost: a")
    assert r.headers('{"host":"a"}') == '{"host":"a"}'
    assert r.headers(None) is None


def test_redaction_off(tmp_path):
    db = str(tmp_path / "t.duckdb")
    with Store(db, redact=False) as s:
        s.add_events("http_events", [http_row(0, req_headers='{"authorization":"Bearer x"}')])
        s.flush()
    assert read(db, "SELECT req_headers FROM http_events") == [('{"authorization":"Bearer x"}',)]


def test_files_are_0600(tmp_path):
    db = str(tmp_path / "t.duckdb")
    old = os.umask(0o022)
    try:
        s = Store(db)
        s.add_events("http_events", [http_row(i) for i in range(5)])
        s.flush()
        paths = [p for p in (db, db + ".wal") if os.path.exists(p)]
        for p in paths:
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        s.con.execute("CHECKPOINT")  # the WAL goes away and is re-created by the next write
        s.add_events("http_events", [http_row(1)])
        s.flush()
        s.serve()
        assert stat.S_IMODE(os.stat(db + ".sock").st_mode) == 0o600
        for p in (db, db + ".wal"):
            if os.path.exists(p):
                assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, p
        s.close()
        assert not os.path.exists(db + ".sock")
        assert stat.S_IMODE(os.stat(db).st_mode) == 0o600
    finally:
        os.umask(old)


def test_retention_deletes_old_rows(tmp_path):
    db = str(tmp_path / "t.duckdb")
    day = 86400 * 10**9
    with Store(db, retain="24h") as s:
        s.add_events("http_events", [http_row(0), http_row(1, time_=NOW - 2 * day)])
        s.add_events("mysql_events", [{"time_": NOW - 3 * day}, {"time_": NOW}])
        s.add_capture_stats([{"time_": NOW - 2 * day}, {"time_": NOW}])
        s.upsert_connections([{"conn_id": "old", "close_time": NOW - 2 * day}, {"conn_id": "open"}])
        s.flush()  # the first flush applies retention
        # later flushes do not delete again until retention_interval has passed
        s.add_events("http_events", [http_row(2, time_=NOW - 2 * day)])
        s.flush()
        assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 2}]
        s.apply_retention()
        assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 1}]
    assert read(db, "SELECT count(*) FROM mysql_events") == [(1,)]
    assert read(db, "SELECT count(*) FROM capture_stats") == [(1,)]
    assert read(db, "SELECT conn_id FROM connections") == [("open",)]


def test_size_cap_drops_oldest(tmp_path):
    db = str(tmp_path / "t.duckdb")
    with Store(db, max_size="1K") as s:
        s.add_events("http_events", [http_row(i) for i in range(400)])
        s.flush()  # first flush checks the cap: over 1K, the oldest quarter goes
        n = s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist()[0]["n"]
        assert 250 <= n < 400


def test_parse_duration_and_size(tmp_path):
    assert parse_duration("24h") == 24 * 3600 * 10**9
    assert parse_duration("1h30m") == 90 * 60 * 10**9
    assert parse_duration("500ms") == 500 * 10**6
    assert parse_size("2G") == 2 << 30 and parse_size("500M") == 500 << 20
    with pytest.raises(ValueError):
        parse_duration("soon")
    with pytest.raises(ValueError):
        parse_size("big")
    with pytest.raises(StoreError):  # the store says it in one line of its own
        Store(str(tmp_path / "t.duckdb"), retain="soon")


def test_schema_version_newer_is_refused(tmp_path):
    db = str(tmp_path / "t.duckdb")
    Store(db).close()
    con = duckdb.connect(db)
    con.execute("UPDATE apptrace_meta SET value = '999' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError) as e:
        Store(db)
    msg = str(e.value)
    assert "999" in msg and "\n" not in msg


def test_schema_version_older_is_migrated(tmp_path):
    db = str(tmp_path / "t.duckdb")
    Store(db).close()
    con = duckdb.connect(db)
    con.execute("UPDATE apptrace_meta SET value = '0' WHERE key = 'schema_version'")
    con.execute("ALTER TABLE http_events DROP COLUMN headers_partial")
    con.close()
    with Store(db) as s:
        s.add_events("http_events", [http_row(0, headers_partial=True)])
        s.flush()
    assert read(db, "SELECT headers_partial FROM http_events") == [(True,)]
    assert read(db, "SELECT value FROM apptrace_meta WHERE key = 'schema_version'") == [
        (str(schema.SCHEMA_VERSION),)]


def test_query_while_inserting_from_threads(tmp_path):
    import threading

    db = str(tmp_path / "t.duckdb")
    s = Store(db)
    errors: list[BaseException] = []

    def writer():
        try:
            for k in range(20):
                s.add_events("http_events", [http_row(i) for i in range(k * 10, k * 10 + 10)])
                s.flush()
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    seen = []
    while t.is_alive():
        seen.append(s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist()[0]["n"])
    t.join()
    s.close()
    assert not errors
    assert seen == sorted(seen)
    assert read(db, "SELECT count(*) FROM http_events") == [(200,)]


def test_wrong_types_are_converted_not_fatal(tmp_path):
    import datetime as dt

    db = str(tmp_path / "t.duckdb")
    with Store(db) as s:
        s.add_events("http_events", [http_row(0, resp_status="503", latency=12.0),
                                     http_row(1, resp_status="n/a", local_port=2**40),
                                     http_row(2, time_=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))])
        s.flush()
        assert any("resp_status" in e and "1 value" in e for e in s.type_errors)
    rows = read(db, "SELECT resp_status, latency, local_port FROM http_events ORDER BY remote_port")
    assert rows == [(503, 12, 8443), (None, 2000, None), (400, 3000, 8443)]
    assert read(db, "SELECT count(*) FROM http_events WHERE year(time_) = 2026")[0][0] >= 1


def test_redaction_property():
    """Whatever the case of the name, a secret header's value never survives; other headers are untouched."""
    import json

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from apptrace.store.redact import Redactor

    secret_names = st.sampled_from(["authorization", "cookie", "set-cookie", "proxy-authorization", "x-token"])
    cased = secret_names.flatmap(lambda n: st.tuples(st.just(n), st.lists(st.booleans(), min_size=len(n),
                                                                           max_size=len(n))))
    value = st.text(alphabet="abcdefghijklmnop0123456789 =;", min_size=6, max_size=30).map(lambda v: "S3CR" + v)

    @settings(max_examples=200, deadline=None)
    @given(secrets=st.lists(st.tuples(cased, st.one_of(value, st.lists(value, min_size=1, max_size=3))),
                            max_size=4),
           others=st.dictionaries(st.sampled_from(["host", "accept", "x-id"]), st.text(max_size=10), max_size=3))
    def check(secrets, others):
        headers = dict(others)
        for (name, upper), v in secrets:
            headers["".join(c.upper() if u else c for c, u in zip(name, upper, strict=True))] = v
        out = Redactor(["X-Token"]).headers(json.dumps(headers))
        assert "S3CR" not in out
        got = json.loads(out)
        for k in others:
            assert got[k] == headers[k]

    check()


def test_a_damaged_or_foreign_file_is_refused_with_its_real_cause(tmp_path):
    good = tmp_path / "good.duckdb"
    Store(str(good)).close()
    data = good.read_bytes()
    cases = {
        "truncated.duckdb": (data[: len(data) // 3], "corrupt"),
        "junk.duckdb": (bytes(range(256)) * 400, "not a DuckDB database, or is corrupt"),
        "lite.db": (b"SQLite format 3\0" + b"\0" * 4080, "is a SQLite database"),
    }
    for name, (content, says) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(StoreError) as e:
            Store(str(path))
        msg = str(e.value)
        assert says in msg and "\n" not in msg and "in use" not in msg, (name, msg)
