"""End-to-end protocol tests (issue 3 acceptance): real TLS servers and clients, the real tracer, stored rows.

Each server starts once per module, on a free port on 127.0.0.1, before any tracer. Every test starts
``apptrace trace`` (the ``tracer`` fixture), drives real clients, stops the tracer and checks the rows the
pipeline stitched from the raw capture: every column of the table contract, for each side that uses a
traceable TLS library. Timing is only ever asserted as a lower bound (latency ≥ the server's known delay):
this machine is shared and noisy.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.conftest import APPTRACE, ROOT, free_port, nghttpd_command, require_tool, serving
from tests.sql_servers import Proc

pytestmark = pytest.mark.ebpf

UA = "apptrace-e2e"
MS = 1_000_000  # ns
# The DataFrame script of the first seed article, verbatim (its comment line and the px.display call):
# it must run as written.
SEED_SCRIPT = ROOT / "tests" / "fixtures" / "seeds" / "seed_000.pxl"
# The kernel names a process after the file it exec'd: python, python3 or python3.11, by how pytest was started.
PYTHON_COMM = os.path.basename(sys.executable)[:15]


# ---- helpers ---------------------------------------------------------------------------------------------


def _require_module(name: str, package: str) -> None:
    """Fail, never skip, when a client library the test drives is missing."""
    import importlib.util

    if importlib.util.find_spec(name.split(".")[0]) is None or importlib.util.find_spec(name) is None:
        pytest.fail(f"{package} is not installed in this venv: install the test extras (pip install -e '.[test]')",
                    pytrace=False)


def _one(rows: list[dict], what: str) -> dict:
    assert len(rows) == 1, f"expected exactly one {what} row, got {len(rows)}: {rows}"
    return rows[0]


def _rows(cap, table: str, pid: int, role: str | None = None) -> list[dict]:
    return [r for r in cap.rows.get(table, []) if r["pid"] == pid and (role is None or r["trace_role"] == role)]


def _headers(raw: str | None) -> dict:
    """req_headers/resp_headers JSON as a {lower-case name: value} dict."""
    assert raw is not None
    data = json.loads(raw)
    if isinstance(data, dict):
        return {k.lower(): v for k, v in data.items()}
    return {k.lower(): v for k, v in data}


def _brief(row: dict) -> str:
    """The columns that identify a row, for assertion messages (pytest elides long dict reprs)."""
    keys = ("pid", "comm", "service", "trace_role", "local_addr", "local_port", "remote_addr", "remote_port",
            "encrypted", "tls_lib", "latency", "conn_id", "req_path", "req_cmd", "req_body")
    return repr({k: row.get(k) for k in keys if k in row})


def _common(row: dict, *, pid: int, comm: str, role: str, local_port: int | None = None,
            remote_port: int | None = None, min_latency_ns: int | None = 1, service: str | None = None) -> None:
    """The columns shared by every event table."""
    msg = _brief(row)
    assert row["pid"] == pid, msg
    assert row["comm"] == comm, msg
    assert row["trace_role"] == role, msg
    assert row["encrypted"] is True, msg
    assert row["tls_lib"] == "openssl", msg
    assert row["local_addr"] == "127.0.0.1", msg
    assert row["remote_addr"] == "127.0.0.1" and isinstance(row["remote_port"], int), msg
    if local_port is not None:
        assert row["local_port"] == local_port, msg
    if remote_port is not None:
        assert row["remote_port"] == remote_port, msg
    assert isinstance(row["local_port"], int), msg
    if min_latency_ns is not None:  # None: the caller checks latency (NULL when no answer is expected)
        assert row["latency"] is not None and row["latency"] >= min_latency_ns, msg
    assert row["time_"] is not None and row["time_"] > 0, msg
    assert row["service"] == (service or comm), msg
    assert row["conn_id"], msg


def _pair(client: dict, server: dict, server_port: int) -> None:
    """The client's and the server's row of one exchange describe one TCP connection, mirrored."""
    assert client["remote_port"] == server_port and server["local_port"] == server_port
    assert client["local_port"] == server["remote_port"]


# ---- servers (module-scoped, started before any tracer) ----------------------------------------------------


@pytest.fixture(scope="module")
def demo(certs: dict[str, str]) -> Iterator[Proc]:
    port = free_port()
    with serving([sys.executable, "-m", "apptrace.demo.server", "--port", str(port), "--cert", certs["server"],
                  "--key", certs["server-key"]], port, cwd=ROOT) as server:
        yield server


INDEX = b"<html><body>apptrace e2e over h2</body></html>\n"


@pytest.fixture(scope="module")
def nghttpd(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    docroot = tmp_path_factory.mktemp("docroot")
    (docroot / "index.html").write_bytes(INDEX)
    port = free_port()
    with serving(nghttpd_command(docroot, port, certs), port, stderr=subprocess.DEVNULL) as server:
        yield server


@pytest.fixture(scope="module")
def grpc_server(certs: dict[str, str]) -> Iterator[Proc]:
    port = free_port()
    with serving([sys.executable, "-m", "tests.peers.e2e_grpc_server", "--port", str(port), "--cert",
                  certs["server"], "--key", certs["server-key"]], port, cwd=ROOT) as server:
        yield server


def _debug(cap) -> None:
    if os.environ.get("E2E_DEBUG"):
        for table, rows in cap.rows.items():
            for r in rows:
                print(table, {k: v for k, v in r.items()})


# ---- 1. HTTP/2 and HTTP/1.1 ------------------------------------------------------------------------------


def _h2_row(row: dict, port: int, stream_id: int | None, ua: str | None, *, scheme: str = "https",
            index: bytes = INDEX) -> None:
    """An HTTP/2 GET /index.html answered 200 by nghttpd with ``index``, as either side stores it (over TLS,
    or h2c with scheme 'http'); ``stream_id`` None when the caller checks the streams itself."""
    assert row["http_version"] == "2", _brief(row)
    assert row["req_method"] == "GET" and row["req_path"] == "/index.html"
    req = _headers(row["req_headers"])
    assert req[":method"] == "GET" and req[":path"] == "/index.html" and req[":scheme"] == scheme
    assert req[":authority"] == f"127.0.0.1:{port}"
    if ua is not None:
        assert req["user-agent"] == ua
    assert row["req_body"] in ("", None) and row["req_body_size"] == 0
    assert row["resp_status"] == 200 and row["resp_message"] is None
    resp = _headers(row["resp_headers"])
    assert resp[":status"] == "200" and resp["content-length"] == str(len(index))
    assert resp["content-type"] == "text/html" and resp["server"].startswith("nghttpd")
    assert row["resp_body"] == index.decode() and row["resp_body_size"] == len(index)
    assert row["content_type"] == "text/html"
    assert row["grpc_status"] is None and row["grpc_message"] is None
    assert row["req_messages"] is None and row["resp_messages"] is None
    if stream_id is not None:
        assert row["stream_id"] == stream_id
    assert row["headers_partial"] is False


def test_curl_http2_get_against_nghttpd(nghttpd, certs, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("curl"), "-sS", "--http2", "-A", UA, "--cacert", certs["ca"],
                             f"https://127.0.0.1:{nghttpd.port}/index.html"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == INDEX
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    client = _one(_rows(cap, "http_events", proc.pid), "curl")
    server = _one(_rows(cap, "http_events", nghttpd.pid), "nghttpd")
    _common(client, pid=proc.pid, comm="curl", role="client", remote_port=nghttpd.port)
    _common(server, pid=nghttpd.pid, comm="nghttpd", role="server", local_port=nghttpd.port)
    _h2_row(client, nghttpd.port, 1, UA)
    _h2_row(server, nghttpd.port, 1, UA)
    _pair(client, server, nghttpd.port)


def test_h2load_against_nghttpd(nghttpd, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("h2load"), "-n", "50", "-c", "2", "-m", "1",
                             f"https://127.0.0.1:{nghttpd.port}/index.html"], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "50 succeeded" in out, out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    server = _rows(cap, "http_events", nghttpd.pid)
    client = _rows(cap, "http_events", proc.pid)
    assert len(server) == 50, [(r["conn_id"], r["stream_id"]) for r in server]
    assert len(client) == 50, [(r["conn_id"], r["stream_id"]) for r in client]
    for side, rows, role in (("server", server, "server"), ("client", client, "client")):
        by_conn: dict[str, list[int]] = {}
        for r in rows:
            if role == "server":
                _common(r, pid=nghttpd.pid, comm="nghttpd", role="server", local_port=nghttpd.port)
            else:
                _common(r, pid=proc.pid, comm="h2load", role="client", remote_port=nghttpd.port)
            _h2_row(r, nghttpd.port, r["stream_id"], None)
            assert _headers(r["req_headers"])["user-agent"].startswith("h2load")
            by_conn.setdefault(r["conn_id"], []).append(r["stream_id"])
        # two connections, 25 requests each, one stream at a time: client stream ids 1, 3, 5 … 49 on each
        assert sorted(len(v) for v in by_conn.values()) == [25, 25], (side, by_conn)
        for ids in by_conn.values():
            assert sorted(ids) == list(range(1, 50, 2)), (side, ids)
    assert sorted(r["remote_port"] for r in server) == sorted(r["local_port"] for r in client)


FD_REUSE_CLIENT = """
import http.client, ssl, sys, time
ctx = ssl._create_unverified_context()
def get(port):
    c = http.client.HTTPSConnection('127.0.0.1', port, context=ctx)
    c.request('GET', '/hello')
    assert c.getresponse().read() == b'hello from apptrace-demo\\n'
    return c
port = int(sys.argv[1])
a = get(port)
print(a.sock.getsockname()[1], a.sock.fileno(), flush=True)
a.close()
time.sleep(0.3)  # the server closes its end too: connection b gets the same fd on both sides
b = get(port)
print(b.sock.getsockname()[1], b.sock.fileno(), flush=True)
sys.stdin.readline()  # b stays open until the test says so
b.close()
"""


def _reuse_one_fd_while_stopped(t, client_script: str, port: int):
    """Run a client that makes two connections on the same fd while the capture process is stopped.

    The kernel side keeps capturing into the ring buffer meanwhile; the tracer then sees the
    first connection's events after its fd was reused. Returns the client's pid, both local
    ports, and the capture.
    """
    os.kill(t.proc.pid, signal.SIGSTOP)
    proc = subprocess.Popen([sys.executable, "-c", client_script, str(port)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        port_a, fd_a = map(int, proc.stdout.readline().split())
        port_b, fd_b = map(int, proc.stdout.readline().split())
        assert fd_a == fd_b and port_a != port_b
    finally:
        os.kill(t.proc.pid, signal.SIGCONT)
    time.sleep(1.0)  # connection b is still open while the tracer catches up
    proc.communicate("\n", timeout=30)
    assert proc.returncode == 0
    cap = t.stop()
    _debug(cap)
    return proc.pid, port_a, port_b, cap


def test_fd_reused_before_the_tracer_looks(demo, tracer):
    """A busy tracer (here: stopped for a moment) sees a connection's events after its fd was reused.

    /proc then shows the next connection on that fd: the kernel's 4-tuple (accept's sockaddr, connect's
    address, TCP state changes) must win over it.
    """
    client_pid, port_a, port_b, cap = _reuse_one_fd_while_stopped(tracer(), FD_REUSE_CLIENT, demo.port)
    client = sorted(_rows(cap, "http_events", client_pid), key=lambda r: r["time_"])
    server = sorted(_rows(cap, "http_events", demo.pid), key=lambda r: r["time_"])
    assert [r["req_path"] for r in client] == [r["req_path"] for r in server] == ["/hello", "/hello"]
    assert [r["local_port"] for r in client] == [port_a, port_b]
    assert [r["remote_port"] for r in server] == [port_a, port_b]


H2_FD_REUSE_CLIENT = """
import socket, ssl, sys, time
import h2.config, h2.connection, h2.events
ctx = ssl._create_unverified_context()
ctx.set_alpn_protocols(['h2'])
def get(port):
    tls = ctx.wrap_socket(socket.create_connection(('127.0.0.1', port)))
    assert tls.selected_alpn_protocol() == 'h2'
    time.sleep(0.05)  # nghttpd speaks first: its SETTINGS go out before it reads anything
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(':method', 'GET'), (':path', '/index.html'), (':scheme', 'https'),
                          (':authority', '127.0.0.1:%d' % port)], end_stream=True)
    tls.sendall(conn.data_to_send())
    done = False
    while not done:
        data = tls.recv(65536)
        assert data
        done = any(isinstance(e, h2.events.StreamEnded) for e in conn.receive_data(data))
        tls.sendall(conn.data_to_send())
    return tls
port = int(sys.argv[1])
a = get(port)
print(a.getsockname()[1], a.fileno(), flush=True)
a.close()
time.sleep(0.3)  # nghttpd closes its end too: connection b gets the same fd on both sides
b = get(port)
print(b.getsockname()[1], b.fileno(), flush=True)
sys.stdin.readline()  # b stays open until the test says so
b.close()
"""


def test_fd_reused_before_the_tracer_looks_nghttpd(nghttpd, tracer):
    """As above, with nghttpd: accept4(fd, NULL, NULL) gives no peer address and its first SSL call is a write,
    so the kernel side learns the peer only from a later TCP read, and must report the connection again then."""
    client_pid, port_a, port_b, cap = _reuse_one_fd_while_stopped(tracer(), H2_FD_REUSE_CLIENT, nghttpd.port)
    client = sorted(_rows(cap, "http_events", client_pid), key=lambda r: r["time_"])
    server = sorted(_rows(cap, "http_events", nghttpd.pid), key=lambda r: r["time_"])
    assert [r["resp_status"] for r in client] == [r["resp_status"] for r in server] == [200, 200]
    assert [r["local_port"] for r in client] == [port_a, port_b]
    assert [(r["remote_addr"], r["remote_port"]) for r in server] == [("127.0.0.1", port_a), ("127.0.0.1", port_b)]


def test_short_lived_client_seen_after_it_exited(demo, certs, tracer):
    """A tracer that lags (here: stopped) handles a curl's events after curl exited: /proc has nothing left."""
    t = tracer()
    os.kill(t.proc.pid, signal.SIGSTOP)
    try:
        proc = subprocess.run([require_tool("curl"), "-sS", "--http1.1", "-A", UA, "--cacert", certs["ca"],
                               f"https://127.0.0.1:{demo.port}/hello"], capture_output=True, timeout=30)
        assert proc.returncode == 0 and proc.stdout == b"hello from apptrace-demo\n"
    finally:
        os.kill(t.proc.pid, signal.SIGCONT)
    cap = t.stop()
    _debug(cap)
    server = _one(_rows(cap, "http_events", demo.pid), "demo server")
    clients = [r for r in cap.rows.get("http_events", []) if r["trace_role"] == "client"
               and r["remote_port"] == demo.port and r["local_port"] == server["remote_port"]]
    client = _one(clients, "curl")
    assert client["req_path"] == "/hello" and client["resp_status"] == 200
    assert (client["comm"], client["service"]) == ("curl", "curl"), _brief(client)


def test_http1_latency_against_sleeping_server(demo, certs, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("curl"), "-sS", "--http1.1", "-A", UA, "--cacert", certs["ca"],
                             f"https://127.0.0.1:{demo.port}/sleep?ms=50"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out == b"slept 50 ms\n"
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    client = _one(_rows(cap, "http_events", proc.pid), "curl")
    server = _one(_rows(cap, "http_events", demo.pid), "demo server")
    _common(client, pid=proc.pid, comm="curl", role="client", remote_port=demo.port, min_latency_ns=50 * MS)
    _common(server, pid=demo.pid, comm=PYTHON_COMM, role="server", local_port=demo.port,
            min_latency_ns=50 * MS, service="apptrace.demo.server")
    _pair(client, server, demo.port)
    for row in (client, server):
        assert row["http_version"] == "1.1"
        assert row["req_method"] == "GET" and row["req_path"] == "/sleep?ms=50" and row["req_route"] == "/sleep"
        req = _headers(row["req_headers"])
        assert req["host"] == f"127.0.0.1:{demo.port}" and req["user-agent"] == UA and req["accept"] == "*/*"
        assert row["req_body"] in ("", None) and row["req_body_size"] == 0
        assert row["resp_status"] == 200 and row["resp_message"] == "OK"
        assert _headers(row["resp_headers"]) == {"server": "apptrace-demo", "content-type": "text/plain",
                                                 "content-length": "12"}
        assert row["resp_body"] == "slept 50 ms\n" and row["resp_body_size"] == 12
        assert row["content_type"] == "text/plain"
        assert row["grpc_status"] is None and row["grpc_message"] is None and row["stream_id"] is None
        assert row["req_messages"] is None and row["resp_messages"] is None and row["headers_partial"] is False


# ---- 2. gRPC: grpcio client (stripped BoringSSL, invisible) → Python ssl + h2 server (captured) --------------


def test_grpc_server_side_only(grpc_server, certs, tracer):
    _require_module("grpc", "grpcio")
    t = tracer()
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.e2e_grpc_client", str(grpc_server.port),
                             certs["ca"]], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert json.loads(out) == {"unary": "echo:ping", "fail": [5, "no such thing"],
                               "stream": ["item 0", "item 1", "item 2"]}
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    # grpcio's own BoringSSL has no symbols: nothing of the client's can be captured, and nothing is made up
    assert _rows(cap, "http_events", proc.pid) == []
    rows = {r["req_path"]: r for r in _rows(cap, "http_events", grpc_server.pid)}
    assert len(_rows(cap, "http_events", grpc_server.pid)) == 3
    assert set(rows) == {"/apptrace.Echo/Unary", "/apptrace.Echo/Fail", "/apptrace.Echo/Stream"}
    port = grpc_server.port
    for r in rows.values():
        _common(r, pid=grpc_server.pid, comm=PYTHON_COMM, role="server", local_port=port,
                service="tests.peers.e2e_grpc_server")
        assert r["http_version"] == "2" and r["req_method"] == "POST" and r["req_route"] == r["req_path"]
        req = _headers(r["req_headers"])
        assert req[":method"] == "POST" and req[":scheme"] == "https" and req[":authority"] == f"127.0.0.1:{port}"
        assert req[":path"] == r["req_path"] and req["content-type"] == "application/grpc" and req["te"] == "trailers"
        assert req["user-agent"].startswith("grpc-python/")
        assert r["resp_status"] == 200 and r["resp_message"] is None
        assert r["content_type"] == "application/grpc"
        assert r["req_messages"] == 1 and r["headers_partial"] is False
    assert len({r["conn_id"] for r in rows.values()}) == 1  # one channel, one connection
    assert len({r["remote_port"] for r in rows.values()}) == 1

    unary, fail, stream = rows["/apptrace.Echo/Unary"], rows["/apptrace.Echo/Fail"], rows["/apptrace.Echo/Stream"]
    # messages are shown without their 5-byte length prefixes; sizes are the DATA bytes on the wire
    assert (unary["req_body"], unary["req_body_size"]) == ("ping", 5 + 4)
    assert (unary["resp_body"], unary["resp_body_size"], unary["resp_messages"]) == ("echo:ping", 5 + 9, 1)
    assert (unary["grpc_status"], unary["grpc_message"]) == (0, None)
    assert _headers(unary["resp_headers"]) == {":status": "200", "content-type": "application/grpc",
                                               "grpc-status": "0"}
    assert unary["latency"] >= 50 * MS  # the server's handler sleeps 50 ms

    assert (fail["req_body"], fail["req_body_size"]) == ("x", 5 + 1)
    assert (fail["resp_body"], fail["resp_body_size"], fail["resp_messages"]) == ("", 0, 0)
    assert (fail["grpc_status"], fail["grpc_message"]) == (5, "no such thing")  # NOT_FOUND, trailers-only
    assert _headers(fail["resp_headers"]) == {":status": "200", "content-type": "application/grpc",
                                              "grpc-status": "5", "grpc-message": "no such thing"}

    assert (stream["req_body"], stream["req_body_size"]) == ("go", 5 + 2)
    assert stream["resp_messages"] == 3
    assert (stream["resp_body"], stream["resp_body_size"]) == ("item 0item 1item 2", 3 * (5 + 6))
    assert (stream["grpc_status"], stream["grpc_message"]) == (0, None)

    # the calls were made one after another on one connection: stream ids 1, 3, 5 in call order
    assert [unary["stream_id"], fail["stream_id"], stream["stream_id"]] == [1, 3, 5]
    assert unary["time_"] < fail["time_"] < stream["time_"]


# ---- 3. MariaDB with TLS ----------------------------------------------------------------------------------

MARIADB_SQL = """SELECT id, name, price FROM shop.items ORDER BY id;
SELECT * FROM shop.no_such_table;
SELECT SLEEP(0.05);
"""


def _sql_rows(cap, table: str, pid: int, role: str, comm: str, port: int, service: str | None = None) -> list[dict]:
    """One side's rows of one connection, in time order, with the common columns checked."""
    rows = sorted(_rows(cap, table, pid), key=lambda r: r["time_"])
    assert rows, f"no {table} rows for {comm} (pid {pid})"
    for r in rows:
        if role == "server":
            _common(r, pid=pid, comm=comm, role=role, local_port=port, service=service, min_latency_ns=None)
        else:
            _common(r, pid=pid, comm=comm, role=role, remote_port=port, service=service, min_latency_ns=None)
    assert len({r["conn_id"] for r in rows}) == 1, {r["conn_id"] for r in rows}
    return rows


def _outcome(r: dict) -> tuple:
    return (r["req_cmd"], r["req_body"], r["resp_status"], r["resp_body"], r["error_code"], r["rows"])


def test_mariadb_cli_queries(mariadb, tracer):
    t = tracer()
    proc = subprocess.Popen([require_tool("mariadb"), "--no-defaults", "--ssl", "--force", "-h127.0.0.1",
                             f"-P{mariadb.port}", "-uapp", "-psecret"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(MARIADB_SQL, timeout=60)
    assert "ERROR 1146" in err and "plum" in out, (out, err)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    expected = [
        ("COM_QUERY", "SELECT id, name, price FROM shop.items ORDER BY id", "OK", "3 rows", None, 3),
        ("COM_QUERY", "SELECT * FROM shop.no_such_table", "ERR", "Table 'shop.no_such_table' doesn't exist", 1146,
         None),
        ("COM_QUERY", "SELECT SLEEP(0.05)", "OK", "1 row", None, 1),
        ("COM_QUIT", "", "NONE", None, None, None),
    ]
    client = _sql_rows(cap, "mysql_events", proc.pid, "client", "mariadb", mariadb.port)
    server = _sql_rows(cap, "mysql_events", mariadb.pid, "server", "mariadbd", mariadb.port)
    for side in (client, server):
        assert [_outcome(r) for r in side] == expected
        for r in side[:3]:
            assert r["latency"] > 0
        assert side[2]["latency"] >= 50 * MS  # SLEEP(0.05)
        assert side[3]["latency"] is None  # COM_QUIT expects no answer
    _pair(client[0], server[0], mariadb.port)


def test_mariadb_prepared_statements(mariadb, tracer):
    _require_module("mysql.connector", "mysql-connector-python")
    t = tracer()
    proc = subprocess.Popen([sys.executable, "-m", "tests.peers.e2e_mysql_prepared", str(mariadb.port)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert json.loads(out) == {"tls": "TLSv1.3", "results": [[[3, "plum"]], [[2, "pear"], [3, "plum"]]]}
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    sql = "SELECT id, name FROM items WHERE id > ? AND name <> ? AND price < ?"
    client = _sql_rows(cap, "mysql_events", proc.pid, "client", "python", mariadb.port,
                       service="tests.peers.e2e_mysql_prepared")
    server = _sql_rows(cap, "mysql_events", mariadb.pid, "server", "mariadbd", mariadb.port)
    _pair(client[0], server[0], mariadb.port)
    for side in (client, server):
        # the connector's own session setup (SET NAMES …, autocommit, ping) answered OK
        setup = side[: next(i for i, r in enumerate(side) if r["req_cmd"] == "COM_STMT_PREPARE")]
        assert setup and all(r["req_cmd"] in ("COM_QUERY", "COM_PING") and r["resp_status"] == "OK"
                             and r["error_code"] is None for r in setup), [_outcome(r) for r in setup]
        stmt = [r for r in side if r["req_cmd"] in ("COM_STMT_PREPARE", "COM_STMT_EXECUTE", "COM_STMT_CLOSE")]
        assert len(stmt) == 4, [_outcome(r) for r in side]
        prep = stmt[0]
        assert re.fullmatch(r"stmt_id=\d+ params=3 columns=2", prep["resp_body"]), prep["resp_body"]
        assert _outcome(prep) == ("COM_STMT_PREPARE", sql, "OK", prep["resp_body"], None, None)
        # binary parameters (LONGLONG, VAR_STRING, DOUBLE) decoded into the prepared SQL
        assert [_outcome(r) for r in stmt[1:]] == [
            ("COM_STMT_EXECUTE", "SELECT id, name FROM items WHERE id > 1 AND name <> 'pear' AND price < 2.0",
             "OK", "1 row", None, 1),
            ("COM_STMT_EXECUTE", "SELECT id, name FROM items WHERE id > 0 AND name <> 'apple' AND price < 2.0",
             "OK", "2 rows", None, 2),
            ("COM_STMT_CLOSE", sql, "NONE", None, None, None),
        ]
        assert all(r["latency"] > 0 for r in stmt[:3]) and stmt[3]["latency"] is None
        # between executes the connector resets the statement: named by its SQL too
        resets = [r for r in side if r["req_cmd"] == "COM_STMT_RESET"]
        assert all(_outcome(r) == ("COM_STMT_RESET", sql, "OK", "0 rows affected", None, None) for r in resets)
        assert side[-1]["req_cmd"] == "COM_QUIT" and side[-1]["resp_status"] == "NONE"


# ---- 4. PostgreSQL 15 with ssl=on -------------------------------------------------------------------------

PSQL_SQL = """SELECT pg_backend_pid();
SELECT id, name, price FROM items ORDER BY id;
SELECT * FROM no_such_table;
SELECT pg_sleep(0.05);
"""


def _pg_dsn(pg: Proc) -> str:
    return f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres sslmode=require"


PSQL_EXPECTED = [
    ("QUERY", "SELECT pg_backend_pid();", "OK", "SELECT 1", None, 1),
    ("QUERY", "SELECT id, name, price FROM items ORDER BY id;", "OK", "SELECT 3", None, 3),
    ("QUERY", "SELECT * FROM no_such_table;", "ERR", 'ERROR: relation "no_such_table" does not exist', "42P01", None),
    ("QUERY", "SELECT pg_sleep(0.05);", "OK", "SELECT 1", None, 1),
]


def _psql_session(pg: Proc) -> tuple[subprocess.Popen, int, str]:
    """psql over TLS running PSQL_SQL; returns the process, the server backend's pid and stderr.

    The session stays open a second after its last query: the backend is a short-lived process, and
    the tracer reads its name from /proc (see test_short_lived_backend_comm).
    """
    proc = subprocess.Popen([require_tool("psql"), "-X", "-At", _pg_dsn(pg)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    proc.stdin.write(PSQL_SQL)
    proc.stdin.flush()
    time.sleep(1.0)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    lines = out.splitlines()
    assert lines[1:] == ["1|apple|0.5", "2|pear|0.75", "3|plum|1.25", ""], out
    assert 'ERROR:  relation "no_such_table" does not exist' in err, err
    return proc, int(lines[0]), err


def _pg_server_row(r: dict, backend: int, port: int, client_port: int) -> None:
    """A PostgreSQL backend's row.

    The backend's socket was accepted by the postmaster, another process, and its process title replaces its
    argv ('postgres: user db host(port) state'): the 4-tuple comes from the TCP read inside an SSL call, the
    service from the title's part before the colon.
    """
    msg = _brief(r)
    assert r["pid"] == backend and r["trace_role"] == "server", msg
    assert r["encrypted"] is True and r["tls_lib"] == "openssl", msg
    assert r["time_"] > 0 and r["conn_id"] and ":-1:" not in r["conn_id"], msg
    assert (r["local_addr"], r["local_port"]) == ("127.0.0.1", port), msg
    assert (r["remote_addr"], r["remote_port"]) == ("127.0.0.1", client_port), msg
    assert r["service"] == "postgres", msg


def test_psql_simple_queries(postgres, tracer):
    t = tracer()
    proc, backend, _ = _psql_session(postgres)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    client = _sql_rows(cap, "pgsql_events", proc.pid, "client", "psql", postgres.port)
    server = sorted(_rows(cap, "pgsql_events", backend), key=lambda r: r["time_"])
    assert backend != postgres.pid  # one backend process per connection, forked by the postmaster
    assert _rows(cap, "pgsql_events", postgres.pid) == []
    for r in server:
        _pg_server_row(r, backend, postgres.port, client[0]["local_port"])
        assert r["comm"] == "postgres", _brief(r)
    assert len({r["conn_id"] for r in server}) == 1
    for side in (client, server):
        assert [_outcome(r) for r in side] == PSQL_EXPECTED
        assert all(r["latency"] > 0 for r in side)
        assert side[3]["latency"] >= 50 * MS  # pg_sleep(0.05)


def test_pid_follows_the_processes_it_forks(postgres, tracer):
    """--pid of the postmaster traces the backends it forks for new connections (their TLS handshake and first
    query come before user space could hear of them); --no-follow-forks leaves them out, and psql too."""
    t = tracer("--pid", str(postgres.pid))
    _proc, backend, _ = _psql_session(postgres)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    server = sorted(_rows(cap, "pgsql_events", backend), key=lambda r: r["time_"])
    assert [_outcome(r) for r in server] == PSQL_EXPECTED, [_brief(r) for r in server]
    assert all(r["pid"] == backend and r["trace_role"] == "server" for r in server)
    assert {r["pid"] for r in cap.rows.get("pgsql_events", [])} == {backend}  # not psql: it is no child

    t = tracer("--pid", str(postgres.pid), "--no-follow-forks")
    _psql_session(postgres)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert cap.rows.get("pgsql_events", []) == []


def test_postgres_session_opened_before_the_tracer(postgres, tracer):
    """A backend whose connection and process title predate the tracer: service 'postgres', not the title."""
    app = f"e2e-svc-{os.getpid()}"
    proc = subprocess.Popen([require_tool("psql"), "-X", "-At", f"{_pg_dsn(postgres)} application_name={app}"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:  # psql connects before it reads stdin
            q = subprocess.run([require_tool("psql"), "-X", "-At", "-h", postgres.extra["dir"], "-p",
                                str(postgres.port), "-U", "postgres", "-c",
                                f"SELECT pid, client_port FROM pg_stat_activity WHERE application_name = '{app}'"],
                               capture_output=True, text=True, timeout=30)
            found = tuple(map(int, q.stdout.strip().split("|"))) if q.stdout.strip() else None
            time.sleep(0.05)
        assert found is not None, "psql never connected"
        backend, client_port = found
        t = tracer()
        assert proc.stdin is not None
        proc.stdin.write("SELECT 1;\nSELECT 2;\n")
        proc.stdin.flush()
        time.sleep(1.0)  # the backend outlives its first event by far: the tracer reads its /proc in time
        out, err = proc.communicate(timeout=60)
        assert out == "1\n2\n", (out, err)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cap = t.stop()
    server = _rows(cap, "pgsql_events", backend)
    assert [_outcome(r) for r in server] == [("QUERY", "SELECT 1;", "OK", "SELECT 1", None, 1),
                                             ("QUERY", "SELECT 2;", "OK", "SELECT 1", None, 1)]
    assert len({r["conn_id"] for r in server}) == 1
    for r in server:
        assert r["comm"] == "postgres", _brief(r)
        _pg_server_row(r, backend, postgres.port, client_port)  # the server's own word for the peer port
    # psql's end was open before the tracer too: its socket is found in /proc when the tracer starts
    client = _sql_rows(cap, "pgsql_events", proc.pid, "client", "psql", postgres.port)
    assert [_outcome(r) for r in client] == [_outcome(r) for r in server]
    assert all(r["latency"] > 0 for r in client)
    _pair(client[0], server[0], postgres.port)


def test_short_lived_backend_seen_after_it_exited(postgres, tracer):
    """A tracer that lags (here: stopped) handles a backend's events after it exited: /proc has nothing left.

    The backend was forked by the postmaster, never exec'd: no exec event names it; the kernel's comm must.
    """
    t = tracer()
    os.kill(t.proc.pid, signal.SIGSTOP)
    try:
        proc = subprocess.run([require_tool("psql"), "-X", "-At", _pg_dsn(postgres), "-c",
                               "SELECT pg_backend_pid()"], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        backend = int(proc.stdout)
        deadline = time.monotonic() + 10
        while os.path.exists(f"/proc/{backend}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{backend}")
    finally:
        os.kill(t.proc.pid, signal.SIGCONT)
    cap = t.stop()
    _debug(cap)
    row = _one(_rows(cap, "pgsql_events", backend), "backend")
    assert _outcome(row) == ("QUERY", "SELECT pg_backend_pid()", "OK", "SELECT 1", None, 1)
    assert (row["comm"], row["service"]) == ("postgres", "postgres"), _brief(row)


# pgbench's sleep command: the backend outlives its first event by far, so the tracer reads its /proc in
# time (a backend that exits first: test_short_lived_backend_seen_after_it_exited)
PGBENCH_SCRIPT = """\\set id 2
\\set tok {tok}
SELECT id, name, :tok::int AS tok FROM items WHERE id = :id;
UPDATE items SET price = price WHERE id = :id AND :tok > 0;
\\sleep 300 ms
"""


def test_pgbench_prepared(postgres, tracer, tmp_path):
    # The tracer sees every process on this shared machine, other PostgreSQL servers' backends included: a
    # token of this run, bound as a parameter, tells our backend's rows from theirs.
    tok = 100_000 + os.getpid() % 900_000
    script = tmp_path / "bench.sql"
    script.write_text(PGBENCH_SCRIPT.format(tok=tok))
    t = tracer()
    proc = subprocess.Popen([require_tool("pgbench"), "-n", "-M", "prepared", "-c", "1", "-t", "3", "-f",
                             str(script), _pg_dsn(postgres)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and "query mode: prepared" in out and "actually processed: 3/3" in out, out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    _debug(cap)
    # extended protocol: Parse once, then Bind/Execute/Sync per statement; one row per Execute, with
    # pgbench's $1, $2 replaced by the values it bound (text format)
    expected = [
        ("EXECUTE", f"SELECT id, name, {tok}::int AS tok FROM items WHERE id = 2;", "OK", "SELECT 1", None, 1),
        ("EXECUTE", f"UPDATE items SET price = price WHERE id = 2 AND {tok} > 0;", "OK", "UPDATE 1", None, None),
    ] * 3
    client = _sql_rows(cap, "pgsql_events", proc.pid, "client", "pgbench", postgres.port)
    backends = {r["pid"] for r in cap.rows.get("pgsql_events", [])
                if r["trace_role"] == "server" and r["req_body"] == expected[0][1]}
    assert len(backends) == 1 and backends.isdisjoint({proc.pid, postgres.pid}), backends
    backend = backends.pop()
    server = sorted(_rows(cap, "pgsql_events", backend), key=lambda r: r["time_"])
    assert len({r["conn_id"] for r in server}) == 1
    for r in server:
        _pg_server_row(r, backend, postgres.port, client[0]["local_port"])
        assert r["comm"] == "postgres", _brief(r)
    for side in (client, server):
        assert [_outcome(r) for r in side] == expected
        assert all(r["latency"] > 0 for r in side)


# ---- 5. the seed DataFrame script, verbatim, over the DB the tracer wrote ----------------------------------


def test_seed_script_p99_of_sleep_endpoint(demo, certs, tracer):
    script = SEED_SCRIPT
    assert "px.quantiles, 0.99" in script.read_text() and "px.fraction, px.gt, 499" in script.read_text()
    n = 24
    t = tracer()
    url = f"https://127.0.0.1:{demo.port}/sleep?ms=50"
    proc = subprocess.run([require_tool("curl"), "-sS", "--http1.1", "-A", UA, "--cacert", certs["ca"],
                           *([url] * n)], capture_output=True, timeout=120)  # one keep-alive connection
    assert proc.returncode == 0 and proc.stdout == b"slept 50 ms\n" * n, proc.stderr
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert len(_rows(cap, "http_events", demo.pid, "server")) == n
    # the tracer has exited: its DB is closed and may be opened by `apptrace run`
    run = subprocess.run([*APPTRACE, "run", str(script), "--db", t.db, "--format", "json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert list(out) == ["output"], out
    rows = {(r["service"], r["req_path"]): r for r in out["output"]}
    assert set(rows[next(iter(rows))]) == {"service", "req_path", "p99_latency", "error_rate"}
    server = rows[("apptrace.demo.server", "/sleep?ms=50")]
    assert 50 * MS <= server["p99_latency"] <= 1000 * MS, server
    assert server["error_rate"] == 0.0
    client = rows[("curl", "/sleep?ms=50")]  # the same requests, seen from curl
    assert 50 * MS <= client["p99_latency"], client
    assert client["error_rate"] == 0.0
