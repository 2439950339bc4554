"""apptrace watch: filters (hubble rules), rendering, --json lines, and following a live tracer's socket."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from apptrace.cli import main as cli_main
from apptrace.store.writer import Store

APPTRACE = os.path.join(os.path.dirname(sys.executable), "apptrace")


def events(now: int) -> dict[str, list[dict]]:
    http = [
        dict(time_=now - 3 * 10**9, pid=42, service="checkout", trace_role="server", local_addr="10.0.0.9",
             local_port=8443, remote_addr="10.0.0.5", remote_port=5123, encrypted=True, tls_lib="openssl",
             latency=12_300_000, http_version="1.1", req_method="POST", req_path="/api/pay",
             req_headers='{"authorization":"Bearer s3cret","content-type":"application/json"}',
             req_body='{"amount": 10}', req_body_size=14, resp_status=503, resp_message="Service Unavailable",
             resp_headers='{"content-type":"application/json"}', resp_body='{"error":"upstream"}'),
        dict(time_=now - 2 * 10**9, pid=43, service="cart", trace_role="client", latency=800_000,
             http_version="2", req_method="POST", req_path="/shop.Cart/Add", resp_status=200, grpc_status=5,
             grpc_message="not found", req_body="x" * 5000, req_body_size=9000),
        dict(time_=now - 1 * 10**9, pid=42, service="checkout", trace_role="server", latency=1_000_000,
             req_method="GET", req_path="/health", resp_status=200),
        dict(time_=now - 1 * 10**9 + 1, pid=44, service="checkout", trace_role="server", latency=1_000_000,
             req_method="GET", req_path="/missing", resp_status=404),
    ]
    mysql = [dict(time_=now - 10**8, pid=44, service="checkout", trace_role="client", latency=300_000,
                  req_cmd="COM_QUERY", req_body="SELECT * FROM orders WHERE id = 7", resp_status="ERR",
                  resp_body="Table 'shop.orders' doesn't exist", error_code=1146)]
    return {"http_events": http, "mysql_events": mysql}


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("w") / "w.duckdb")
    with Store(path) as s:
        for t, rows in events(time.time_ns()).items():
            s.add_events(t, rows)
        s.flush()
    return path


def watch_json(capsys, db: str, *flags: str) -> list[dict]:
    assert cli_main(["watch", "--db", db, "--json", *flags]) == 0
    return [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]


def test_all_and_order(db, capsys):
    rows = watch_json(capsys, db)
    assert [r["protocol"] for r in rows] == ["http", "http", "http", "http", "mysql"]
    assert rows[0]["time_"] < rows[-1]["time_"]
    assert "s3cret" not in json.dumps(rows)


def test_last_counts_across_protocols(db, capsys):
    rows = watch_json(capsys, db, "--last", "2")
    assert [r.get("req_path") or r["req_cmd"] for r in rows] == ["/missing", "COM_QUERY"]


def test_a_window_too_big_to_show_keeps_its_newest_rows_and_says_so(tmp_path, capsys):
    from apptrace.query import watch

    path = str(tmp_path / "big.duckdb")
    now = time.time_ns()
    n = watch.BATCH + 500
    with Store(path) as s:
        s.add_events("http_events", [dict(time_=now - (n - i) * 10**6, pid=1, req_method="GET",
                                          req_path=f"/r{i}", resp_status=200) for i in range(n)])
        s.flush()
    rows = watch_json(capsys, path, "--since", "1h")
    assert len(rows) == watch.BATCH
    assert rows[-1]["req_path"] == f"/r{n - 1}" and rows[0]["req_path"] == f"/r{n - watch.BATCH}", "the newest"
    capsys.readouterr()
    assert cli_main(["watch", "--db", path, "--json", "--since", "1h"]) == 0
    err = capsys.readouterr().err
    assert f"showing the newest {watch.BATCH} of {n} events" in err, err


@pytest.mark.parametrize("flags, paths", [
    (["--status", "5+"], ["/api/pay"]),
    (["--status", "500-599"], ["/api/pay"]),
    (["--status", "404"], ["/missing"]),
    (["--status", "404", "--status", "503"], ["/api/pay", "/missing"]),  # repeated flag: OR
    (["--status", "err", "--protocol", "http"], ["/api/pay", "/shop.Cart/Add"]),  # gRPC status 5 is an error
    (["--path", "^/api/", "--service", "checkout"], ["/api/pay"]),  # different flags: AND
    (["--protocol", "http", "--not", "--status", "200"], ["/api/pay", "/missing"]),
    (["--protocol", "http", "--pid", "43"], ["/shop.Cart/Add"]),
    (["--protocol", "http", "--not", "--pid", "42"], ["/shop.Cart/Add", "/missing"]),
    (["--protocol", "http", "--last", "2"], ["/health", "/missing"]),
])
def test_filters(db, capsys, flags, paths):
    rows = watch_json(capsys, db, *flags)
    assert [r["req_path"] for r in rows] == paths


def test_sql_filters(db, capsys):
    rows = watch_json(capsys, db, "--http-status", "err", "--protocol", "mysql", "-o", "json")
    assert [r["error_code"] for r in rows] == [1146]
    assert watch_json(capsys, db, "--protocol", "mysql", "--path", "orders")[0]["req_cmd"] == "COM_QUERY"


def test_human_rendering(db, capsys):
    assert cli_main(["watch", "--db", db, "--max-body", "100"]) == 0
    out = capsys.readouterr().out
    assert "→ POST /api/pay  HTTP/1.1" in out
    assert "← 503 Service Unavailable" in out and "12.3ms" in out
    assert "authorization: <redacted>" in out and '"amount": 10' in out
    assert "grpc-status 5 not found" in out
    assert "(9000 bytes, showing 100)" in out
    assert "← ERR 1146" in out and "doesn't exist" in out


def test_bad_input(db, capsys):
    assert cli_main(["watch", "--db", db, "--status", "5x"]) == 2
    err = capsys.readouterr().err
    assert "bad --status" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["watch", "--db", db, "--path", "("]) == 2
    assert "bad --path" in capsys.readouterr().err
    assert cli_main(["watch", "--db", db, "--protocol", "mysql", "--status", "5+"]) == 2
    assert cli_main(["watch", "--db", db + ".nope"]) == 2


def test_print_sql(db, capsys):
    assert cli_main(["watch", "--db", db, "--status", "5+", "--print-sql"]) == 0
    out = capsys.readouterr().out
    assert "resp_status BETWEEN 500 AND 599" in out and "mysql_events" not in out


def test_follow_through_the_tracer_socket(tmp_path):
    """A Store serves <db>.sock; `watch -f --json` prints rows flushed after it started, once each."""
    db = str(tmp_path / "live.duckdb")
    store = Store(db)
    store.add_events("http_events", [dict(time_=time.time_ns() - 60 * 10**9, req_path="/old", resp_status=200)])
    store.flush()
    store.serve()
    p = subprocess.Popen([APPTRACE, "watch", "--db", db, "-f", "--json", "--interval", "0.1", "--since", "10s"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, p.kill)  # a safety net only; nothing here asserts on time
    guard.start()
    try:
        for i in range(5):
            store.add_events("http_events", [dict(time_=time.time_ns(), req_path=f"/new/{i}", resp_status=200,
                                                  pid=1, latency=i)])
            store.flush()
        got = [json.loads(p.stdout.readline())["req_path"] for _ in range(5)]
        assert got == [f"/new/{i}" for i in range(5)]
        store.add_events("http_events", [dict(time_=time.time_ns(), req_path="/late", resp_status=500)])
        store.flush()
        assert json.loads(p.stdout.readline())["req_path"] == "/late"  # and nothing repeated before it
    finally:
        p.terminate()
        p.wait()
        guard.cancel()
        store.close()


def test_follow_without_tracer_picks_up_a_tracer_that_starts(tmp_path):
    """watch -f on a file nobody writes does not hold it; a tracer can start, and its rows show up."""
    db = str(tmp_path / "later.duckdb")
    with Store(db) as s:
        s.add_events("http_events", [dict(time_=time.time_ns(), req_path="/before", resp_status=200)])
        s.flush()
    p = subprocess.Popen([APPTRACE, "watch", "--db", db, "-f", "--json", "--interval", "0.05", "--since", "1h"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, p.kill)
    guard.start()
    try:
        assert json.loads(p.stdout.readline())["req_path"] == "/before"
        store = Store(db)  # would fail with a lock error if watch kept the file open
        try:
            store.serve()
            store.add_events("http_events", [dict(time_=time.time_ns(), req_path="/after", resp_status=200)])
            store.flush()
            assert json.loads(p.stdout.readline())["req_path"] == "/after"
        finally:
            store.close()
    finally:
        p.terminate()
        p.wait()
        guard.cancel()
