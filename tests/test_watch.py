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


# -- readable output, more filters, the header ---------------------------------------------------------------------
def test_json_gives_headers_as_objects(db, capsys):
    rows = watch_json(capsys, db, "--path", "^/api/pay$")
    assert rows[0]["req_headers"] == {"authorization": "<redacted>", "content-type": "application/json"}
    assert rows[0]["resp_headers"] == {"content-type": "application/json"}


@pytest.fixture(scope="module")
def net_db(tmp_path_factory):
    """Rows from two processes on known addresses and ports, gRPC and plain HTTP, at known ages."""
    path = str(tmp_path_factory.mktemp("n") / "n.duckdb")
    now = time.time_ns()
    common = dict(trace_role="client", latency=2_000_000, resp_status=200, http_version="2")
    http = [
        dict(time_=now - 50 * 60 * 10**9, pid=1, comm="nginx", local_addr="10.0.0.1", local_port=443,
             remote_addr="10.0.0.2", remote_port=5000, req_method="GET", req_path="/old", **common),
        dict(time_=now - 20 * 60 * 10**9, pid=1, comm="nginx", local_addr="10.0.0.1", local_port=443,
             remote_addr="10.0.0.2", remote_port=5001, req_method="GET", req_path="/middle", **common),
        dict(time_=now - 60 * 10**9, pid=2, comm="grpc-client", local_addr="::ffff:10.0.0.3", local_port=6000,
             remote_addr="10.0.0.4", remote_port=50051, req_method="POST", req_path="/pkg.Svc/Call", grpc_status=0,
             **common),
        dict(time_=now - 30 * 10**9, pid=2, comm="grpc-client", local_addr="10.0.0.3", local_port=6001,
             remote_addr="10.0.0.4", remote_port=50051, req_method="POST", req_path="/pkg.Svc/Fail", grpc_status=14,
             **common),
    ]
    with Store(path) as s:
        s.add_events("http_events", http)
        s.flush()
    return path


@pytest.mark.parametrize("flags, paths", [
    (["--since", "1h"], ["/old", "/middle", "/pkg.Svc/Call", "/pkg.Svc/Fail"]),
    (["--since", "1h", "--until", "10m"], ["/old", "/middle"]),
    (["--since", "30m", "--until", "10m"], ["/middle"]),
    (["--since", "1h", "--comm", "nginx"], ["/old", "/middle"]),
    (["--since", "1h", "--not", "--comm", "nginx"], ["/pkg.Svc/Call", "/pkg.Svc/Fail"]),
    (["--since", "1h", "--protocol", "grpc"], ["/pkg.Svc/Call", "/pkg.Svc/Fail"]),
    (["--since", "1h", "--not", "--protocol", "grpc"], ["/old", "/middle"]),
    (["--since", "1h", "--protocol", "grpc", "--status", "err"], ["/pkg.Svc/Fail"]),
    (["--since", "1h", "--addr", "10.0.0.3"], ["/pkg.Svc/Call", "/pkg.Svc/Fail"]),  # also as ::ffff:10.0.0.3
    (["--since", "1h", "--addr", "10.0.0.2"], ["/old", "/middle"]),  # a remote address
    (["--since", "1h", "--port", "5001"], ["/middle"]),  # a remote port
    (["--since", "1h", "--port", "443", "--port", "6001"], ["/old", "/middle", "/pkg.Svc/Fail"]),
    (["--since", "1h", "--not", "--port", "50051"], ["/old", "/middle"]),
])
def test_until_comm_grpc_address_and_port_filters(net_db, capsys, flags, paths):
    rows = watch_json(capsys, net_db, *flags)
    assert [r["req_path"] for r in rows] == paths


def test_output_table_is_one_line_per_request(net_db, capsys):
    assert cli_main(["watch", "--db", net_db, "--since", "1h", "-o", "table"]) == 0
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert lines[1].split()[:2] == ["TIME", "SERVICE"], out  # under the header line
    body = lines[2:]
    assert len(body) == 4 and "GET /old" in body[0] and "grpc 14" in body[3] and "POST /pkg.Svc/Fail" in body[3]
    assert "2.00ms" in body[0]


@pytest.mark.parametrize("flags", [["--not"], ["--status", "500", "--not"], ["--not", "--json", "--pid", "1"],
                                   ["--not", "--not", "--pid", "1"], ["--not", "-f", "--pid", "1"]])
def test_a_stray_not_is_refused_in_one_line(db, capsys, flags):
    assert cli_main(["watch", "--db", db, *flags]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--not" in err, err


def test_bad_addresses_and_windows_are_refused(db, capsys):
    assert cli_main(["watch", "--db", db, "--addr", "10.0.0.300"]) == 2
    assert "bad --addr" in capsys.readouterr().err
    assert cli_main(["watch", "--db", db, "--since", "5m", "--until", "10m"]) == 2
    assert "--until 10m" in capsys.readouterr().err
    assert cli_main(["watch", "--db", db, "-f", "--until", "1m"]) == 2
    assert "-f" in capsys.readouterr().err


def test_colours_on_a_terminal_and_none_when_piped(db):
    from tests.test_cli import run_on_terminal

    out = run_on_terminal([APPTRACE, "watch", "--db", db, "--no-body"], cols=120)
    red = "\x1b[1;31m"
    lines = out.splitlines()
    failed = [ln for ln in lines if "← 503" in ln or "grpc-status 5" in ln or "← ERR" in ln]
    assert len(failed) == 3 and all(red in ln for ln in failed), out
    ok = [ln for ln in lines if "← 200" in ln and "grpc-status" not in ln]
    assert ok and not any(red in ln for ln in ok), out
    table = run_on_terminal([APPTRACE, "watch", "--db", db, "-o", "table"], cols=120)
    assert any(red in ln and "503" in ln for ln in table.splitlines()), table
    piped = subprocess.run([APPTRACE, "watch", "--db", db], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "TERM": "xterm-256color"})
    assert "← 503" in piped.stdout and "\x1b[" not in piped.stdout


def test_header_says_when_rows_end_and_an_empty_window_says_which(net_db, capsys):
    import re

    assert cli_main(["watch", "--db", net_db, "--json", "--since", "1h"]) == 0
    out, err = capsys.readouterr()
    m = re.search(r"rows end (\d+) s ago", err)
    assert m and int(m.group(1)) >= 30 and "no tracer running" in err, err
    assert "last 1h" in err and all(ln.startswith("{") for ln in out.splitlines())
    assert cli_main(["watch", "--db", net_db, "--since", "10s"]) == 0
    out, err = capsys.readouterr()
    assert "rows end" in out  # a reader's header, on the terminal's stream
    assert "no events in the last 10s (since " in err, err


def test_the_live_header_says_how_far_analysis_is_behind(tmp_path, capsys):
    """Through the socket a tracer serves: the newest capture_stats row has 3 MiB still to parse, 40 s old."""
    import re

    db = str(tmp_path / "lag.duckdb")
    store = Store(db)
    now = time.time_ns()
    store.add_events("http_events", [dict(time_=now - 40 * 10**9, req_path="/x", resp_status=200)])
    store.add_capture_stats([dict(time_=now - 90 * 10**9, events=1, backlog_bytes=0),
                             dict(time_=now - 40 * 10**9, events=5, backlog_bytes=3 << 20)])
    store.flush()
    store.serve()
    try:
        assert cli_main(["watch", "--db", db, "--json", "--since", "1h"]) == 0
        err = capsys.readouterr().err
        m = re.search(r"tracer live, analysis (\d+) s behind \(3\.0 MiB to parse\)", err)
        assert m and int(m.group(1)) >= 40, err
        store.add_capture_stats([dict(time_=time.time_ns(), events=5, backlog_bytes=0)])
        store.flush()
        assert cli_main(["watch", "--db", db, "--json", "--since", "1h"]) == 0
        assert "tracer live, analysis caught up" in capsys.readouterr().err
    finally:
        store.close()


def test_follow_before_the_db_exists_waits_for_it(tmp_path):
    db = str(tmp_path / "notyet.duckdb")
    p = subprocess.Popen([APPTRACE, "watch", "--db", db, "-f", "--json", "--interval", "0.05"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    guard = threading.Timer(120, p.kill)  # a safety net only; nothing here asserts on time
    guard.start()
    try:
        said = p.stderr.readline()
        assert "waiting for" in said and db in said, said
        store = Store(db)
        try:
            store.serve()
            store.add_events("http_events", [dict(time_=time.time_ns() + 10**9, req_path="/first",
                                                  resp_status=200)])
            store.flush()
            assert json.loads(p.stdout.readline())["req_path"] == "/first"
        finally:
            store.close()
        assert p.poll() is None, "still following"
    finally:
        p.terminate()
        _, err = p.communicate()
        guard.cancel()
    assert (said + err).count("waiting for") == 1, said + err


@pytest.mark.ebpf
def test_a_real_tracer_is_named_live_in_the_header(tracer, https_server):
    from tests.conftest import require_tool

    server = https_server()
    # analysis at normal priority and never pausing: this machine is shared, and the header, not the pausing, is
    # what is tested here
    t = tracer("--pid", str(server.pid), "--analysis-priority", "0", "--analysis-yield-above", "100")
    curl = require_tool("curl")
    for _ in range(5):
        subprocess.run([curl, "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{server.port}/"], check=True)
    header = ""
    deadline = time.monotonic() + 60  # a safety net for a tracer that never answers, not an assertion on time
    while time.monotonic() < deadline:
        p = subprocess.run([APPTRACE, "watch", "--db", t.db, "--json", "--since", "1h", "--pid", str(server.pid)],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        header = p.stderr
        if len(p.stdout.splitlines()) == 5 and "caught up" in header:
            break
        time.sleep(0.5)
    assert "rows end" in header and "tracer live, analysis caught up" in header, header
