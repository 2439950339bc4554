"""Hostile bytes through the real tracer: a 4 MiB malformed request delays no other row, and a
download cut by a ring-buffer overflow keeps its row, marked incomplete, with its exact size."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import pytest

from apptrace.query.backend import socket_query
from bench.bench_hostile import junk
from tests import sql_servers
from tests.conftest import APPTRACE, ROOT, read, require_tool
from tests.test_capture import curl

pytestmark = pytest.mark.ebpf


@pytest.fixture(scope="module")
def mariadb(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[sql_servers.Proc]:
    with sql_servers.mariadb(certs, str(tmp_path_factory.mktemp("mariadb"))) as server:
        yield server


@pytest.fixture(scope="module")
def postgres(certs: dict[str, str]) -> Iterator[sql_servers.Proc]:
    with sql_servers.postgres(certs) as server:
        yield server

MiB = 1 << 20


def sql(db: str, query: str) -> list[dict]:
    """Rows through the running tracer's query socket (it holds the DB)."""
    proc = subprocess.run([*APPTRACE, "sql", "--db", db, "--format", "json", query], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["output"]


def malformed_post(port: int, size: int) -> bytes:
    """A POST whose head has a line that is no header (Python's http.server reads the body all the
    same: the Content-Length came first), then ``size`` bytes of garbage in 16 KiB writes."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as s:
        s.sendall(f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\nthis is no header\r\n\r\n".encode())
        body = junk(size)[:size]
        for i in range(0, size, 16384):
            s.sendall(body[i : i + 16384])
        reply = b""
        while b"\n" not in reply.partition(b"\r\n\r\n")[2]:
            more = s.recv(65536)
            if not more:
                break
            reply += more
    return reply


def test_a_4_mib_malformed_request_does_not_delay_the_next_row(tracer, https_server):
    """The delay measured is what parsing the garbage costs the rows behind it: analysis runs at
    normal priority and never pauses for the load (by default it yields to a busy machine, which
    this shared one always is, and that wait is not the parsers')."""
    server = https_server()
    t = tracer("--pid", str(server.pid), "--analysis-priority", "0", "--analysis-yield-above", "100")
    reply = malformed_post(server.port, 4 * MiB)
    assert reply.startswith(b"HTTP/1.1 200") and f"{4 * MiB} ".encode() in reply, reply[:200]
    curl(server.port, "/hello?after=hostile", "-o", "/dev/null")
    done = time.monotonic()
    # Poll the running tracer's query socket (in process: a CLI per poll would add its start-up
    # to the delay) with a generous deadline; the delay measured is the figure asserted on.
    seen = None
    query = (f"SELECT count(*) AS n FROM http_events WHERE pid = {server.pid} "
             "AND req_path = '/hello?after=hostile'")
    while time.monotonic() < done + 120:
        if socket_query(t.db + ".sock", query).column("n")[0].as_py() == 1:
            seen = time.monotonic()
            break
        time.sleep(0.1)
    assert seen is not None, "the normal request's row never came"
    delay = seen - done
    print(f"row of the normal request {delay:.2f} s after it completed")
    assert delay <= 5.0
    errors = sql(t.db, f"SELECT sum(parse_errors) AS e FROM connections WHERE pid = {server.pid}")
    cap = t.stop()
    assert cap.returncode == 0
    assert cap.pipeline.totals.bytes >= 4 * MiB
    # the malformed head is counted once, as one stretch of garbage (the connections table is
    # flushed from time to time, so the live count is at most the final one)
    assert int(errors[0]["e"] or 0) <= 1
    errors = read(t.db, f"SELECT parse_errors FROM connections WHERE pid = {server.pid} ORDER BY parse_errors")
    assert errors == [(0,), (1,)]


FILE_SERVER = textwrap.dedent("""
    import http.server, ssl, sys
    class Handler(http.server.SimpleHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])),
                                             lambda *a: Handler(*a, directory=sys.argv[2]))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[3], sys.argv[4])
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    server.serve_forever()
""")


def test_download_cut_by_a_ring_overflow_keeps_its_row(tracer, certs, tmp_path):
    """A 30 MiB download through a 1 MiB ring: records are lost (counted), the row stays."""
    from apptrace.demo.server import free_port, wait_port

    size = 30 * MiB
    (tmp_path / "big.bin").write_bytes(junk(size, 7)[:size])
    port = free_port()
    server = subprocess.Popen([sys.executable, "-c", FILE_SERVER, str(port), str(tmp_path), certs["server"],
                               certs["server-key"]], stdout=subprocess.PIPE, text=True)
    try:
        wait_port(port)
        t = tracer("--pid", str(server.pid), "--ring-mb", "1")
        curl_bin = require_tool("curl")
        for _ in range(5):
            subprocess.run([curl_bin, "-sSk", "--http1.1", "-o", "/dev/null", f"https://127.0.0.1:{port}/big.bin"],
                           check=True, timeout=120)
        cap = t.stop()
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert cap.returncode == 0
    lost = cap.pipeline.kernel_losses
    rows = [r for r in cap.rows.get("http_events", []) if r["pid"] == server.pid]
    print(f"kernel losses {lost}, gap bytes {cap.pipeline.totals.gap_bytes}, rows {len(rows)}")
    assert lost["lost_events"] > 0 and cap.pipeline.totals.gap_bytes > 0, "the 1 MiB ring never overflowed"
    assert len(rows) == 5, [(r["req_path"], r["resp_body_size"]) for r in rows]
    assert [(r["resp_status"], r["resp_body_size"]) for r in rows] == [(200, size)] * 5, \
        [(r["resp_status"], r["resp_body_size"], r["body_incomplete"], r["req_path"]) for r in rows]
    incomplete = [r for r in rows if r["body_incomplete"]]
    assert incomplete, "no download lost bytes inside its body"
    # a loss at a download's very end shows as no gap (nothing came after it), only as the body
    # the connection's close cut short
    gapped = read(t.db, f"SELECT count(*) FROM connections WHERE pid = {server.pid} AND gap_bytes > 0")
    assert 0 < gapped[0][0] <= len(incomplete)


def _parse_errors(db: str, pid: int) -> list[tuple]:
    return read(db, f"SELECT protocol, parse_errors FROM connections WHERE pid = {pid}")


def test_mysql_bogus_length_prefix_over_tls(mariadb, tracer):
    """The client writes a 16 MiB COM_QUERY header, then two queries. MariaDB waits for the 16 MiB
    and answers nothing more; the tracer counts one parse error and still shows both queries (sent,
    never answered: NULL status, evicted at close), instead of skipping 16 MiB of the connection."""
    t = tracer()
    proc = subprocess.run([sys.executable, "-m", "tests.peers.sql_bogus_client", "mysql", str(mariadb.port)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["tls"] == "TLSv1.3" and seen["first"] == [[1]] and seen["answered_after_bogus"] == 0
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client_pid = _client_pid(cap, "mysql_events", "SELECT 1")
    rows = [(r["req_body"], r["resp_status"]) for r in cap.rows["mysql_events"] if r["pid"] == client_pid]
    assert ("SELECT 1", "OK") in rows
    assert rows[-2:] == [("SELECT 2", None), ("SELECT 3", None)], rows
    assert _parse_errors(t.db, client_pid) == [("mysql", 1)]


def test_pgsql_bogus_length_prefix_over_tls(postgres, tracer):
    """The client writes a 2 GiB Query header and, in the same send, the Query SELECT 2. PostgreSQL
    refuses the length and closes; the tracer counts one parse error and shows SELECT 2 as sent and
    never answered, instead of waiting for 2 GiB."""
    t = tracer()
    proc = subprocess.run([sys.executable, "-m", "tests.peers.sql_bogus_client", "pgsql", str(postgres.port)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["tls"] == "TLSv1.3" and seen["first"][-1] == "Z" and seen["answered_after_bogus"] == 0
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    client_pid = _client_pid(cap, "pgsql_events", "SELECT 1")
    rows = [(r["req_body"], r["resp_status"]) for r in cap.rows["pgsql_events"] if r["pid"] == client_pid]
    assert rows == [("SELECT 1", "OK"), ("SELECT 2", None)], rows
    assert _parse_errors(t.db, client_pid) == [("pgsql", 1)]


def _client_pid(cap, table: str, first_sql: str) -> int:
    """The pid of our client: the one client-side row of its first query that the tracer saw."""
    pids = {r["pid"] for r in cap.rows.get(table, []) if r["req_body"] == first_sql and r["trace_role"] == "client"
            and r["service"] == "tests.peers.sql_bogus_client"}
    assert len(pids) == 1, pids
    return pids.pop()
