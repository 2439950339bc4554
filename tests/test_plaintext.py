"""Plaintext (non-TLS) capture (issue 13, part 2): real peers over plain TCP and Unix sockets, the real tracer.

Each test starts ``apptrace trace`` and drives real clients against real servers that speak without TLS, then
checks the rows the pipeline stitched from the raw capture, every column as the TLS tests do, with
``encrypted = false`` and no ``tls_lib``: each request exactly once per traced side. Also: a PostgreSQL or
MariaDB connection that upgrades to TLS gives its rows once (from the TLS probes, no plaintext prefix
connection), an iperf3 transfer is counted in ``unknown_protocol_conns`` and makes no rows, and
``--no-plaintext`` captures none of it.

The tracer sees the whole machine, and other tests run beside these: rows are picked by the pids of the
processes each test starts, and the servers listen on ports (and sockets) of their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import duckdb
import pytest

from apptrace.capture.procfs import listening_ports
from tests.conftest import ROOT, free_port, nghttpd_command, require_tool, serving
from tests.sql_servers import Proc, stop
from tests.test_e2e_protocols import (
    MARIADB_SQL,
    MS,
    PSQL_EXPECTED,
    PSQL_SQL,
    PYTHON_COMM,
    _brief,
    _h2_row,
    _headers,
    _one,
    _outcome,
    _rows,
)

pytestmark = pytest.mark.ebpf

UA = "apptrace-plain"
INDEX = b"<html><body>apptrace plaintext h2c</body></html>\n"
HELLO = b"hello over plain http\n"


def _plain(row: dict, *, pid: int, comm: str, role: str, service: str | None = None,
           local: tuple[str | None, int | None] | None = None, remote: tuple[str | None, int | None] | None = None,
           min_latency_ns: int | None = 1) -> None:
    """The columns every plaintext row has: no TLS, the process, its role and its connection's addresses."""
    msg = _brief(row)
    assert row["pid"] == pid, msg
    assert row["comm"] == comm, msg
    assert row["service"] == (service or comm), msg
    assert row["trace_role"] == role, msg
    assert row["encrypted"] is False, msg
    assert row["tls_lib"] is None, msg
    if local is not None:
        assert (row["local_addr"], row["local_port"]) == local, msg
    if remote is not None:
        assert (row["remote_addr"], row["remote_port"]) == remote, msg
    if min_latency_ns is not None:
        assert row["latency"] is not None and row["latency"] >= min_latency_ns, msg
    assert row["time_"] is not None and row["time_"] > 0, msg
    assert row["conn_id"], msg


def _tcp_pair(client: dict, server: dict, port: int) -> None:
    """Both sides of one TCP connection: 127.0.0.1 both ends, the ports mirrored."""
    assert (client["remote_addr"], client["remote_port"]) == ("127.0.0.1", port), _brief(client)
    assert (server["local_addr"], server["local_port"]) == ("127.0.0.1", port), _brief(server)
    assert client["local_addr"] == server["remote_addr"] == "127.0.0.1"
    assert isinstance(client["local_port"], int) and client["local_port"] == server["remote_port"]


def _sorted(cap, table: str, pid: int) -> list[dict]:
    return sorted(_rows(cap, table, pid), key=lambda r: r["time_"])


def _plain_conns(cap, pid: int) -> list:
    return [c for c in cap.for_pid(pid) if c.tls_lib is None]


# ---- HTTP/1: curl and Python's http.server -----------------------------------------------------------------


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("plain-www")
    (root / "hello.txt").write_bytes(HELLO)
    port = free_port()
    with serving([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(root)],
                 port, stderr=subprocess.DEVNULL) as server:
        yield server


def test_http1_curl_against_python_http_server(http_server, tracer):
    t = tracer()
    base = f"http://127.0.0.1:{http_server.port}"
    proc = subprocess.Popen([require_tool("curl"), "-sS", "-A", UA, f"{base}/hello.txt", f"{base}/missing"],
                            stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.startswith(HELLO), out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client = _sorted(cap, "http_events", proc.pid)
    server = _sorted(cap, "http_events", http_server.pid)
    assert len(client) == 2 and len(server) == 2, ([_brief(r) for r in client], [_brief(r) for r in server])
    for c, s in zip(client, server, strict=True):
        _plain(c, pid=proc.pid, comm="curl", role="client")
        _plain(s, pid=http_server.pid, comm=PYTHON_COMM, role="server", service="http.server")
        _tcp_pair(c, s, http_server.port)
    for side in (client, server):
        hello, missing = side
        for r, path in ((hello, "/hello.txt"), (missing, "/missing")):
            assert r["req_method"] == "GET" and r["req_path"] == path and r["req_route"] == path, _brief(r)
            req = _headers(r["req_headers"])
            assert req["user-agent"] == UA and req["host"] == f"127.0.0.1:{http_server.port}"
            assert r["req_body"] in ("", None) and r["req_body_size"] == 0
            assert r["grpc_status"] is None and r["stream_id"] is None
            assert _headers(r["resp_headers"])["server"].startswith("SimpleHTTP/")
        assert hello["resp_status"] == 200 and hello["resp_message"] == "OK"
        assert hello["resp_body"] == HELLO.decode() and hello["resp_body_size"] == len(HELLO)
        assert hello["content_type"] == "text/plain"
        assert missing["resp_status"] == 404 and missing["resp_message"] == "File not found"
        assert missing["resp_body_size"] > 0 and "404" in missing["resp_body"]
    # http.server closes each connection after its response: two connections, one row each
    assert len({r["conn_id"] for r in client}) == 2 and len({r["conn_id"] for r in server}) == 2
    assert "plaintext capture: on" in cap.stderr


def test_no_plaintext_captures_none(http_server, tracer):
    t = tracer("--no-plaintext")
    proc = subprocess.run([require_tool("curl"), "-sS", f"http://127.0.0.1:{http_server.port}/hello.txt"],
                          capture_output=True, timeout=30)
    assert proc.returncode == 0 and proc.stdout == HELLO
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    plain = [r for rows in cap.rows.values() for r in rows if r.get("encrypted") is False]
    assert plain == [], [_brief(r) for r in plain]
    assert [c for c in cap.conns if c.tls_lib is None] == []
    assert "plaintext capture: off" in cap.stderr


# ---- HTTP/2 prior knowledge (h2c): nghttpd --no-tls, h2load and curl ---------------------------------------------


@pytest.fixture(scope="module")
def nghttpd_h2c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    docroot = tmp_path_factory.mktemp("plain-docroot")
    (docroot / "index.html").write_bytes(INDEX)
    port = free_port()
    with serving(nghttpd_command(docroot, port), port, stderr=subprocess.DEVNULL) as server:
        yield server


def _h2c_row(row: dict, port: int, stream_id: int | None, ua: str | None) -> None:
    _h2_row(row, port, stream_id, ua, scheme="http", index=INDEX)


def test_h2c_curl_prior_knowledge(nghttpd_h2c, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("curl"), "-sS", "--http2-prior-knowledge", "-A", UA,
                             f"http://127.0.0.1:{nghttpd_h2c.port}/index.html"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == INDEX
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client = _one(_rows(cap, "http_events", proc.pid), "curl")
    server = _one(_rows(cap, "http_events", nghttpd_h2c.pid), "nghttpd")
    _plain(client, pid=proc.pid, comm="curl", role="client")
    _plain(server, pid=nghttpd_h2c.pid, comm="nghttpd", role="server")
    _tcp_pair(client, server, nghttpd_h2c.port)
    for r in (client, server):
        _h2c_row(r, nghttpd_h2c.port, 1, UA)


def test_h2c_h2load(nghttpd_h2c, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("h2load"), "-n", "50", "-c", "2", "-m", "1",
                             f"http://127.0.0.1:{nghttpd_h2c.port}/index.html"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "50 succeeded" in out, out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    server = _rows(cap, "http_events", nghttpd_h2c.pid)
    client = _rows(cap, "http_events", proc.pid)
    assert len(server) == 50 and len(client) == 50, (len(server), len(client))
    for role, rows in (("server", server), ("client", client)):
        by_conn: dict[str, list[int]] = {}
        for r in rows:
            if role == "server":
                _plain(r, pid=nghttpd_h2c.pid, comm="nghttpd", role="server",
                       local=("127.0.0.1", nghttpd_h2c.port))
            else:
                _plain(r, pid=proc.pid, comm="h2load", role="client", remote=("127.0.0.1", nghttpd_h2c.port))
            _h2c_row(r, nghttpd_h2c.port, None, None)
            assert _headers(r["req_headers"])["user-agent"].startswith("h2load")
            by_conn.setdefault(r["conn_id"], []).append(r["stream_id"])
        assert sorted(len(v) for v in by_conn.values()) == [25, 25], (role, by_conn)
        for ids in by_conn.values():
            assert sorted(ids) == list(range(1, 50, 2)), (role, ids)
    assert sorted(r["remote_port"] for r in server) == sorted(r["local_port"] for r in client)


# ---- gRPC over an insecure channel: grpcio on both sides ------------------------------------------------------


@pytest.fixture(scope="module")
def grpc_insecure() -> Iterator[Proc]:
    port = free_port()
    with serving([sys.executable, "-m", "tests.peers.grpcio_insecure_server", str(port)], port, cwd=ROOT) as server:
        yield server


def test_grpc_insecure_both_sides(grpc_insecure, tracer):
    t = tracer()
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.e2e_grpc_client", str(grpc_insecure.port),
                             "--insecure"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert json.loads(out) == {"unary": "echo:ping", "fail": [5, "no such thing"],
                               "stream": ["item 0", "item 1", "item 2"]}
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    port = grpc_insecure.port
    sides = {
        "client": (proc.pid, "tests.peers.e2e_grpc_client"),
        "server": (grpc_insecure.pid, "tests.peers.grpcio_insecure_server"),
    }
    by_side = {}
    for role, (pid, service) in sides.items():
        rows = _rows(cap, "http_events", pid)
        assert len(rows) == 3, [_brief(r) for r in rows]
        by_path = {r["req_path"]: r for r in rows}
        assert set(by_path) == {"/apptrace.Echo/Unary", "/apptrace.Echo/Fail", "/apptrace.Echo/Stream"}, (role, [(_brief(r), r["req_headers"], r["resp_headers"], r["headers_partial"]) for r in rows])
        for r in rows:
            _plain(r, pid=pid, comm=PYTHON_COMM, role=role, service=service)
            assert r["http_version"] == "2" and r["req_method"] == "POST" and r["req_route"] == r["req_path"]
            req = _headers(r["req_headers"])
            assert req[":scheme"] == "http" and req[":authority"] == f"127.0.0.1:{port}"
            assert req["content-type"] == "application/grpc" and req["te"] == "trailers"
            assert req["user-agent"].startswith("grpc-python/")
            assert r["resp_status"] == 200 and r["content_type"] == "application/grpc"
            assert r["req_messages"] == 1
        assert len({r["conn_id"] for r in rows}) == 1  # one channel, one connection
        unary, fail, stream = (by_path[f"/apptrace.Echo/{m}"] for m in ("Unary", "Fail", "Stream"))
        assert (unary["req_body"], unary["req_body_size"]) == ("ping", 5 + 4)
        assert (unary["resp_body"], unary["resp_body_size"], unary["resp_messages"]) == ("echo:ping", 5 + 9, 1)
        assert (unary["grpc_status"], unary["grpc_message"]) == (0, None)
        assert unary["latency"] >= 50 * MS
        assert (fail["grpc_status"], fail["grpc_message"]) == (5, "no such thing")
        assert fail["resp_messages"] == 0 and fail["resp_body_size"] == 0
        assert (stream["grpc_status"], stream["resp_messages"]) == (0, 3)
        assert stream["resp_body_size"] == 3 * (5 + 6)
        by_side[role] = unary
    _tcp_pair(by_side["client"], by_side["server"], port)


# ---- MariaDB without TLS: TCP and its Unix socket ---------------------------------------------------------------

MARIADB_EXPECTED = [
    ("COM_QUERY", "SELECT id, name, price FROM shop.items ORDER BY id", "OK", "3 rows", None, 3),
    ("COM_QUERY", "SELECT * FROM shop.no_such_table", "ERR", "Table 'shop.no_such_table' doesn't exist", 1146,
     None),
    ("COM_QUERY", "SELECT SLEEP(0.05)", "OK", "1 row", None, 1),
    ("COM_QUIT", "", "NONE", None, None, None),
]


def _mariadb_cli(mariadb: Proc, *where: str) -> subprocess.Popen:
    proc = subprocess.Popen([require_tool("mariadb"), "--no-defaults", "--skip-ssl", "--force", *where, "-uapp",
                             "-psecret"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(MARIADB_SQL, timeout=60)
    assert proc.returncode == 0 and "ERROR 1146" in err and "plum" in out, (out, err)  # --force: goes on
    return proc


def _mariadb_sides(cap, client_pid: int, server_pid: int) -> tuple[list[dict], list[dict]]:
    client = _sorted(cap, "mysql_events", client_pid)
    # the server also answers other clients (other tests' and its own): this connection's rows are the ones
    # on the client's connection, picked by its conn_id through the queries only this test sends
    server_all = _sorted(cap, "mysql_events", server_pid)
    ours = {r["conn_id"] for r in server_all if r["req_body"] == "SELECT * FROM shop.no_such_table"}
    assert len(ours) == 1, ours
    server = [r for r in server_all if r["conn_id"] in ours]
    for side in (client, server):
        assert [_outcome(r) for r in side] == MARIADB_EXPECTED, [_brief(r) for r in side]
        assert all(r["latency"] > 0 for r in side[:3]) and side[2]["latency"] >= 50 * MS
        assert side[3]["latency"] is None
        assert len({r["conn_id"] for r in side}) == 1
    return client, server


def test_mariadb_plaintext_tcp(mariadb, tracer):
    t = tracer()
    proc = _mariadb_cli(mariadb, "-h127.0.0.1", f"-P{mariadb.port}")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client, server = _mariadb_sides(cap, proc.pid, mariadb.pid)
    for r in client:
        _plain(r, pid=proc.pid, comm="mariadb", role="client", min_latency_ns=None)
    for r in server:
        _plain(r, pid=mariadb.pid, comm="mariadbd", role="server", min_latency_ns=None)
    _tcp_pair(client[0], server[0], mariadb.port)


def test_mariadb_plaintext_unix_socket(mariadb, tracer):
    sock = mariadb.extra["socket"]
    t = tracer()
    proc = _mariadb_cli(mariadb, f"--socket={sock}")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client, server = _mariadb_sides(cap, proc.pid, mariadb.pid)
    # No 4-tuple: the socket's path is the address, on the side that names it; no ports.
    for r in client:
        _plain(r, pid=proc.pid, comm="mariadb", role="client", local=(None, None), remote=(sock, None),
               min_latency_ns=None)
    for r in server:
        _plain(r, pid=mariadb.pid, comm="mariadbd", role="server", local=(sock, None), remote=(None, None),
               min_latency_ns=None)


def test_mariadb_tls_upgrade_gives_one_connection(mariadb, tracer):
    """The greeting and SSL Request go by in plaintext, then TLS: rows come once, from the TLS probes."""
    t = tracer()
    proc = subprocess.Popen([require_tool("mariadb"), "--no-defaults", "--ssl", "--force", "-h127.0.0.1",
                             f"-P{mariadb.port}", "-uapp", "-psecret"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(MARIADB_SQL, timeout=60)
    assert "ERROR 1146" in err and "plum" in out, (out, err)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client = _sorted(cap, "mysql_events", proc.pid)
    assert [_outcome(r) for r in client] == MARIADB_EXPECTED
    assert all(r["encrypted"] is True and r["tls_lib"] == "openssl" for r in client)
    assert len({r["conn_id"] for r in client}) == 1
    assert _plain_conns(cap, proc.pid) == []  # the plaintext prefix made no connection of its own
    server = [r for r in cap.rows.get("mysql_events", []) if r["pid"] == mariadb.pid
              and r["remote_port"] == client[0]["local_port"]]
    assert [_outcome(r) for r in sorted(server, key=lambda r: r["time_"])] == MARIADB_EXPECTED
    assert all(r["encrypted"] is True for r in server)


# ---- PostgreSQL with sslmode=disable: psql and pgbench, TCP and the Unix socket ------------------------------------


def _pg_dsn(pg: Proc, unix: bool, sslmode: str = "disable") -> str:
    host = pg.extra["dir"] if unix else "127.0.0.1"
    return f"host={host} port={pg.port} user=postgres dbname=postgres sslmode={sslmode}"


def _pg_socket(pg: Proc) -> str:
    return os.path.join(pg.extra["dir"], f".s.PGSQL.{pg.port}")


def _psql(pg: Proc, dsn: str) -> tuple[int, int]:
    """psql running PSQL_SQL; its pid and the server backend's."""
    proc = subprocess.Popen([require_tool("psql"), "-X", "-At", dsn], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(PSQL_SQL)
    proc.stdin.flush()
    time.sleep(1.0)  # the backend outlives its first event: the tracer reads its /proc in time
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[1:] == ["1|apple|0.5", "2|pear|0.75", "3|plum|1.25", ""], out
    return proc.pid, int(lines[0])


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_psql_plaintext(postgres, tracer, unix):
    t = tracer()
    client_pid, backend = _psql(postgres, _pg_dsn(postgres, unix))
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client = _sorted(cap, "pgsql_events", client_pid)
    server = _sorted(cap, "pgsql_events", backend)
    for side in (client, server):
        assert [_outcome(r) for r in side] == PSQL_EXPECTED, [_brief(r) for r in side]
        assert side[3]["latency"] >= 50 * MS
        assert len({r["conn_id"] for r in side}) == 1
    path = _pg_socket(postgres)
    for r in client:
        _plain(r, pid=client_pid, comm="psql", role="client",
               local=(None, None) if unix else None, remote=(path, None) if unix else None)
    for r in server:
        # the backend was forked by the postmaster, which accepted the socket
        _plain(r, pid=backend, comm="postgres", role="server", service="postgres",
               local=(path, None) if unix else None, remote=(None, None) if unix else None)
    if not unix:
        _tcp_pair(client[0], server[0], postgres.port)
    assert _rows(cap, "pgsql_events", postgres.pid) == []


PGBENCH_SCRIPT = """\\set id 2
\\set tok {tok}
SELECT id, name, :tok::int AS tok FROM items WHERE id = :id;
\\sleep 300 ms
"""


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
def test_pgbench_prepared_plaintext(postgres, tracer, tmp_path, unix):
    tok = 100_000 + (os.getpid() * 2 + int(unix)) % 900_000  # tells this run's backend from others'
    script = tmp_path / "bench.sql"
    script.write_text(PGBENCH_SCRIPT.format(tok=tok))
    t = tracer()
    proc = subprocess.Popen([require_tool("pgbench"), "-n", "-M", "prepared", "-c", "1", "-t", "3", "-f",
                             str(script), _pg_dsn(postgres, unix)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "actually processed: 3/3" in out, out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    sql = f"SELECT id, name, {tok}::int AS tok FROM items WHERE id = 2;"
    expected = [("EXECUTE", sql, "OK", "SELECT 1", None, 1)] * 3
    client = _sorted(cap, "pgsql_events", proc.pid)
    backends = {r["pid"] for r in cap.rows.get("pgsql_events", []) if r["trace_role"] == "server"
                and r["req_body"] == sql}
    assert len(backends) == 1 and backends.isdisjoint({proc.pid, postgres.pid}), backends
    server = _sorted(cap, "pgsql_events", backends.pop())
    for side, role, comm in ((client, "client", "pgbench"), (server, "server", "postgres")):
        assert [_outcome(r) for r in side] == expected, [_brief(r) for r in side]
        for r in side:
            _plain(r, pid=r["pid"], comm=comm, role=role, service=comm)
        assert len({r["conn_id"] for r in side}) == 1
    if unix:
        assert {(r["remote_addr"], r["remote_port"]) for r in client} == {(_pg_socket(postgres), None)}
        assert {(r["local_addr"], r["local_port"]) for r in server} == {(_pg_socket(postgres), None)}
    else:
        _tcp_pair(client[0], server[0], postgres.port)


def test_psql_tls_upgrade_gives_one_connection(postgres, tracer):
    """SSLRequest and 'S' go by in plaintext, then TLS: rows come once, from the TLS probes."""
    t = tracer()
    client_pid, backend = _psql(postgres, _pg_dsn(postgres, False, "require"))
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    for pid in (client_pid, backend):
        rows = _sorted(cap, "pgsql_events", pid)
        assert [_outcome(r) for r in rows] == PSQL_EXPECTED, [_brief(r) for r in rows]
        assert all(r["encrypted"] is True and r["tls_lib"] == "openssl" for r in rows)
        assert len({r["conn_id"] for r in rows}) == 1
        assert _plain_conns(cap, pid) == []  # the SSLRequest made no plaintext connection


# ---- unknown protocols: counted, never copied ------------------------------------------------------------------


def test_iperf3_is_an_unknown_protocol(tracer):
    iperf3 = require_tool("iperf3")
    port = free_port()
    server = subprocess.Popen([iperf3, "-s", "-1", "-B", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        # not wait_port: a connection to see it listen would be iperf3's one client (-1)
        deadline = time.monotonic() + 30
        while port not in listening_ports() and time.monotonic() < deadline:
            time.sleep(0.05)
        t = tracer("--pid", str(server.pid))
        client = subprocess.run([iperf3, "-c", "127.0.0.1", "-p", str(port), "-n", "8M"],
                                capture_output=True, text=True, timeout=60)
        assert client.returncode == 0, client.stderr
        server.wait(timeout=30)
        cap = t.stop()
    finally:
        stop(server)
    assert cap.returncode == 0, cap.stderr
    assert [r for rows in cap.rows.values() for r in rows if r.get("pid") == server.pid] == []
    assert cap.for_pid(server.pid) == []  # not one byte copied
    # iperf3's control connection and its data connection: neither starts like a protocol we parse
    counted = cap.pipeline.totals.unknown_protocol_conns
    assert counted == 2, counted
    assert f"iperf3 pid {server.pid}: 2" in cap.stderr and "unknown_protocol_conns=2" in cap.stderr
    # and per process in the DB
    with duckdb.connect(t.db, read_only=True) as con:
        procs = con.execute("SELECT pid, comm, unknown_protocol_conns FROM processes "
                            "WHERE unknown_protocol_conns > 0").fetchall()
    assert procs == [(server.pid, "iperf3", 2)], procs
