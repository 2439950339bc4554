"""Query while tracing: a Store holds the DB open (so no other process can open the file) and serves queries on
<db>.sock; `apptrace sql/run` in a subprocess go through the socket transparently."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time

import pytest

from apptrace.query.backend import FileBackend, QueryError, SocketBackend, open_backend, socket_query
from apptrace.store.writer import Store
from tests.test_px import make_http_rows

APPTRACE = os.path.join(os.path.dirname(sys.executable), "apptrace")


def cli(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([APPTRACE, *argv], capture_output=True, text=True, timeout=120)


@pytest.fixture
def serving(tmp_path):
    db = str(tmp_path / "live.duckdb")
    store = Store(db)
    store.add_events("http_events", make_http_rows(100))
    store.flush()
    store.serve()
    yield db, store
    store.close()


def test_sql_through_socket_while_store_is_open(serving):
    db, store = serving
    assert stat.S_IMODE(os.stat(db + ".sock").st_mode) == 0o600
    r = cli("sql", "SELECT count(*) AS n FROM http_events", "--db", db, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"output": [{"n": 100}]}
    # the tracer keeps inserting; the next query sees the new rows
    store.add_events("http_events", make_http_rows(5, seed=1))
    store.flush()
    r = cli("sql", "SELECT count(*) AS n FROM http_events", "--db", db, "-o", "csv")
    assert r.stdout.split() == ["n", "105"]


def test_run_script_through_socket(serving):
    db, _ = serving
    r = cli("run", "http_stats", "--db", db, "-o", "json", "--arg", "start_time=-1h", "--arg", "role=")
    assert r.returncode == 0, r.stderr
    assert sum(x["requests"] for x in json.loads(r.stdout)["by_service"]) == 100


def test_errors_come_back_as_one_line(serving):
    db, _ = serving
    r = cli("sql", "SELECT nope FROM http_events", "--db", db)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1
    assert "nope" in r.stderr
    r = cli("sql", "DELETE FROM http_events", "--db", db)
    assert r.returncode == 2 and "only SELECT" in r.stderr
    r = cli("run", "--db", db, "--arg", "x=1", os.devnull)
    assert r.returncode == 2


def test_without_socket_the_file_is_locked(serving):
    """Proves the commands above used the socket: with it gone, another process cannot open the file."""
    db, store = serving
    store._server.stop()
    store._server = None
    r = cli("sql", "SELECT 1", "--db", db)
    assert r.returncode == 2 and f"in use by another process (pid {os.getpid()})" in r.stderr, r.stderr


def test_stale_socket_falls_back_to_file(tmp_path):
    db = str(tmp_path / "t.duckdb")
    with Store(db) as s:
        s.add_events("http_events", make_http_rows(3))
        s.flush()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(db + ".sock")  # bound, never listening: like the socket of a tracer killed with -9
    stale.close()
    assert os.path.exists(db + ".sock")
    b = open_backend(db)
    assert isinstance(b, FileBackend)
    b.close()
    r = cli("sql", "SELECT count(*) AS n FROM http_events", "--db", db, "-o", "csv")
    assert r.returncode == 0 and r.stdout.split() == ["n", "3"]
    # a new tracer replaces the stale socket
    with Store(db) as s:
        s.serve()
        assert isinstance(open_backend(db), SocketBackend)


def test_concurrent_queries_while_inserting(serving):
    db, store = serving
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer():
        i = 0
        while not stop.is_set():
            store.add_events("http_events", make_http_rows(20, seed=i))
            store.flush()
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        counts = []
        for _ in range(30):
            try:
                counts.append(socket_query(db + ".sock", "SELECT count(*) AS n FROM http_events")["n"][0].as_py())
            except BaseException as e:  # pragma: no cover
                errors.append(e)
    finally:
        stop.set()
        t.join()
    assert not errors
    assert counts == sorted(counts) and counts[0] >= 100


def test_socket_query_error_type(serving):
    db, _ = serving
    with pytest.raises(QueryError, match="syntax error"):
        socket_query(db + ".sock", "SELEC 1")
    assert socket_query(db + ".sock", "SELECT 42 AS x").to_pylist() == [{"x": 42}]
    with pytest.raises(QueryError, match="Conversion Error"):  # fails while running, not while binding
        socket_query(db + ".sock", "SELECT CAST(req_path || 'x' AS INTEGER) FROM http_events")


def test_large_results_stream_in_batches(serving):
    db, _ = serving
    t = socket_query(db + ".sock", "SELECT i, i * 2 AS j FROM range(300000) t(i)")
    assert t.num_rows == 300000 and t["j"][299999].as_py() == 599998
    assert socket_query(db + ".sock", "SELECT * FROM http_events WHERE false").num_rows == 0


def test_store_in_another_process(tmp_path):
    """The real shape: a tracer process owns the file; this process queries it."""
    db = str(tmp_path / "p.duckdb")
    code = (
        "import sys, time\n"
        "from apptrace.store.writer import Store\n"
        "from tests.test_px import make_http_rows\n"
        f"s = Store({db!r})\n"
        "s.add_events('http_events', make_http_rows(7))\n"
        "s.flush(); s.serve()\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
        "s.close()\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        assert p.stdout.readline().strip() == "ready"
        r = cli("sql", "SELECT count(*) AS n FROM http_events", "--db", db, "-o", "csv")
        assert r.returncode == 0, r.stderr
        assert r.stdout.split() == ["n", "7"]
    finally:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait(timeout=60)
    assert p.returncode == 0
    assert not os.path.exists(db + ".sock")
    r = cli("sql", "SELECT count(*) AS n FROM http_events", "--db", db, "-o", "csv")
    assert r.stdout.split() == ["n", "7"]


def test_malformed_requests_get_one_line_errors(serving):
    import struct

    db, _ = serving
    for body in (b"not json", json.dumps({"nosql": 1}).encode()):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(db + ".sock")
            s.sendall(struct.pack(">I", len(body)) + body)
            status = s.recv(1)
            (n,) = struct.unpack(">Q", s.recv(8))
            msg = b""
            while len(msg) < n:
                msg += s.recv(n - len(msg))
        assert status == b"E" and b"\n" not in msg and msg
    # the server is still serving
    assert socket_query(db + ".sock", "SELECT 1 AS x").to_pylist() == [{"x": 1}]


MACHINE_TOUCHING = [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "COPY (SELECT 1) TO '/tmp/apptrace-should-not-exist.csv'",
    "ATTACH '/tmp/apptrace-should-not-exist.duckdb' AS other",
    "INSTALL httpfs",
    "SET enable_external_access = true",
]


@pytest.mark.parametrize("sql", MACHINE_TOUCHING)
def test_queries_cannot_touch_the_machine_through_the_socket(serving, sql):
    db, _ = serving
    r = cli("sql", sql, "--db", db)
    assert r.returncode == 2 and r.stdout == "", r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists("/tmp/apptrace-should-not-exist.csv")


@pytest.mark.parametrize("sql", MACHINE_TOUCHING)
def test_queries_cannot_touch_the_machine_in_the_file(tmp_path, sql):
    db = str(tmp_path / "t.duckdb")
    Store(db).close()
    r = cli("sql", sql, "--db", db)
    assert r.returncode == 2 and r.stdout == "", r
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not os.path.exists("/tmp/apptrace-should-not-exist.csv")
    assert not os.path.exists("/tmp/apptrace-should-not-exist.duckdb")


# A query that runs for minutes unless interrupted: 10^12 rows, each hashed.
SLOW_QUERY = "SELECT count(*) AS n FROM range(1000000000000) t(i) WHERE hash(i) = 42"


def _accepted_connections(sock_path: str) -> int:
    """Sockets bound to ``sock_path`` (/proc/net/unix): the listener plus one per accepted client."""
    with open("/proc/net/unix") as f:
        return sum(1 for line in f if line.rstrip("\n").endswith(" " + sock_path))


def _wait_for(what: str, check, deadline_s: float = 60.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise AssertionError(f"gave up waiting for {what}")


def test_a_query_whose_client_goes_away_is_interrupted(serving):
    db, store = serving
    sock = db + ".sock"
    client = subprocess.Popen([APPTRACE, "sql", SLOW_QUERY, "--db", db], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    _wait_for("the client to connect", lambda: _accepted_connections(sock) >= 2)
    time.sleep(0.5)  # it sends its query right after connecting
    client.send_signal(signal.SIGINT)  # Ctrl-C
    client.wait(timeout=60)
    _wait_for("the server to interrupt the query", lambda: store._server.interrupted == 1)
    # the server answers at once again, and its writer keeps storing
    store.add_events("http_events", make_http_rows(5, seed=2))
    store.flush()
    assert socket_query(sock, "SELECT count(*) AS n FROM http_events")["n"][0].as_py() == 105
    _wait_for("the interrupted query's connection to close", lambda: _accepted_connections(sock) == 1)
    assert store._server.interrupted == 1
    # a client that waits for its answer is never interrupted
    assert socket_query(sock, "SELECT count(*) AS n FROM range(3000000) t(i) WHERE hash(i) % 7 = 0")
    assert store._server.interrupted == 1


@pytest.mark.ebpf
def test_a_live_tracer_interrupts_an_abandoned_query_and_keeps_storing(tracer, https_server):
    server = https_server()
    t = tracer("--pid", str(server.pid))
    sock = t.db + ".sock"
    client = subprocess.Popen([APPTRACE, "sql", SLOW_QUERY, "--db", t.db], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    _wait_for("the client to connect", lambda: _accepted_connections(sock) >= 2)
    time.sleep(0.5)  # it sends its query right after connecting
    client.kill()  # gone without a word
    client.wait(timeout=60)
    _wait_for("the tracer to say it interrupted the query",
              lambda: any("its query was interrupted (1 so far)" in line for line in t.lines))
    curl = shutil.which("curl")
    assert curl, "curl is not installed: run the README's setup command"
    subprocess.run([curl, "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{server.port}/hello?after=interrupt"],
                   check=True, timeout=60)

    def stored() -> bool:
        got = socket_query(sock, "SELECT count(*) AS n FROM http_events WHERE req_path = '/hello?after=interrupt'")
        return got["n"][0].as_py() >= 1

    _wait_for("the request after the interrupt to be stored", stored)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert sum("its query was interrupted" in line for line in t.lines) == 1


def test_stopping_the_store_interrupts_a_query_still_running(tmp_path):
    """A tracer that stops while a client still waits on a long query closes its DB (DuckDB refuses to close a
    connection a query is busy on) and the client gets a one-line error, not a hang."""
    db = str(tmp_path / "stop.duckdb")
    store = Store(db)
    store.add_events("http_events", make_http_rows(3))
    store.flush()
    store.serve()
    sock = db + ".sock"
    errors: list[str] = []

    def client() -> None:
        try:
            socket_query(sock, SLOW_QUERY)
        except (QueryError, OSError) as e:
            errors.append(str(e))

    t = threading.Thread(target=client)
    t.start()
    _wait_for("the client to connect", lambda: _accepted_connections(sock) >= 2)
    time.sleep(0.5)  # it sends its query right after connecting
    store.close()
    t.join(timeout=60)
    assert not t.is_alive() and len(errors) == 1 and "\n" not in errors[0], errors
    assert store._server is None and not os.path.exists(sock)
    with Store(db) as again:  # the file was closed cleanly
        assert again.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 3}]
