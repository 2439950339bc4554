"""Restart after a crash: ``kill -9`` of capture, of analysis, or of both, mid-load, then ``apptrace trace``
again on the same DB. Every request completed before the kill has exactly one row per traced side.

Real tracer, nghttpd and curl (HTTP/2, one connection per curl, many requests on it) and PostgreSQL with
pgbench's prepared statements. A batch counts as completed before a kill when its client has exited and
the tracer's --raw file (written beside the spool, in the same loop) holds both sides of every request;
a load that runs through the kill is checked for duplicates only, since what the kernel held when
capture died is gone.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from apptrace.analysis.replay import replay_file
from apptrace.analysis.sinks import ListSink
from tests.conftest import APPTRACE, ROOT, free_port, nghttpd_command, read, require_tool, serving
from tests.sql_servers import Proc
from tests.test_analysis_live import analysis_pid

pytestmark = pytest.mark.ebpf

INDEX = b"<html><body>apptrace recovery</body></html>\n"


@pytest.fixture(scope="module")
def nghttpd(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    docroot = tmp_path_factory.mktemp("docroot")
    (docroot / "index.html").write_bytes(INDEX)
    port = free_port()
    with serving(nghttpd_command(docroot, port, certs), port, stderr=subprocess.DEVNULL) as server:
        yield server


def _curl(port: int, ca: str, query: str, *, background: bool = False) -> subprocess.Popen:
    """curl --http2 fetching /index.html?QUERY (a curl URL glob), every request on one connection; in the
    background 50 a second, a load that goes on through kills and restarts."""
    rate = ["--rate", "50/s"] if background else []
    proc = subprocess.Popen([require_tool("curl"), "-sS", "--http2", *rate, "--cacert", ca, "-o", "/dev/null",
                             f"https://127.0.0.1:{port}/index.html?{query}"], stderr=subprocess.PIPE, text=True)
    if not background:
        assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return proc


def _wait(what: str, condition, timeout: float = 300) -> None:
    """Wait for a condition of the world (not a time): fail with ``what`` if it never comes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.5)


def _raw_rows(raw: str) -> list[dict]:
    """The http rows a tracer's --raw file gives so far (it may end inside a frame while being written)."""
    sink = ListSink()
    replay_file(raw, sink)
    return sink.events.get("http_events", []) + sink.events.get("pgsql_events", [])


def _in_raw(t, pattern: str, both_sides: int) -> bool:
    rx = re.compile(pattern)
    return sum(1 for r in _raw_rows(t.raw) if rx.search(r.get("req_path") or r.get("req_body") or "")) >= both_sides


def _live_count(db: str, sql: str) -> int:
    out = subprocess.run([*APPTRACE, "sql", "--db", db, "--format", "csv", sql], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    return int(out.stdout.split()[-1]) if out.returncode == 0 and out.stdout.split() else -1


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    _wait(f"pid {pid} gone", lambda: not os.path.exists(f"/proc/{pid}") or _zombie(pid))


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _http_sides(db: str, port: int) -> dict[str, list[tuple]]:
    """Each traced side's rows of our server: (req_path, resp_status, stream identity), in no particular order."""
    rows = read(db, "SELECT trace_role, req_path, resp_status, local_port, remote_port, stream_id FROM http_events "
                    f"WHERE (trace_role = 'server' AND local_port = {port}) "
                    f"OR (trace_role = 'client' AND remote_port = {port})")
    sides: dict[str, list[tuple]] = {"client": [], "server": []}
    for role, path, status, lport, rport, sid in rows:
        sides[role].append((path, status, (lport, rport, sid)))
    return sides


def _assert_exactly_once(sides: dict[str, list[tuple]], batches: dict[str, int]) -> None:
    """Every request of each batch once per side (by its path and in total); no request and no response of any
    stream stored twice. (A tracer that attaches to a live HTTP/2 connection may store the first stream it
    sees as two halves, its request and its response: each half once.)"""
    for role, rows in sides.items():
        for half, index in (("request", 0), ("response", 1)):
            streams = [r[2] for r in rows if r[index] is not None]
            assert len(streams) == len(set(streams)), (
                f"{role}: {len(streams) - len(set(streams))} {half}s stored twice")
        paths = [r[0] for r in rows if r[0]]
        for batch, n in batches.items():
            got = sorted(p for p in paths if f"b={batch}&" in p)
            assert all(r[1] == 200 for r in rows if r[0] in got), f"{role}, batch {batch}: a response is missing"
            want = sorted(f"/index.html?b={batch}&i={i}" for i in range(1, n + 1))
            assert got == want, (f"{role}, batch {batch}: {len(got)} rows, {len(set(got))} distinct, of {n}; "
                                 f"missing {sorted(set(want) - set(got))[:5]}")


# Analysis runs at normal priority and never pauses for the load of other tests on this shared machine:
# these tests wait for rows, and are about what survives a kill, not about priorities.
BUSY_OK = ("--analysis-priority", "0", "--analysis-yield-above", "100")


def _scope(server: Proc) -> tuple[str, ...]:
    # Both sides: the server by pid, its clients by name (other engineers' curls are told apart by port).
    return ("--pid", str(server.pid), "--comm", "curl", *BUSY_OK)


def test_killed_analysis_is_restarted_and_goes_on_from_its_last_commit(nghttpd, certs, tracer):
    t = tracer(*_scope(nghttpd))
    batch = _curl(nghttpd.port, certs["ca"], "b=a&i=[1-400]", background=True)
    _wait("some rows committed", lambda: _live_count(
        t.db, f"SELECT count(*) FROM http_events WHERE local_port = {nghttpd.port}") >= 50)
    _kill(analysis_pid(t.proc.pid))  # mid-load: curl is still sending
    assert batch.wait(timeout=300) == 0
    _wait("analysis restarted", lambda: any("restarted it" in line for line in t.lines))
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert "analysis process was killed; restarted it" in cap.stderr
    assert "analysis resumes this run from its last commit" in cap.stderr, cap.stderr
    _assert_exactly_once(_http_sides(t.db, nghttpd.port), {"a": 400})
    assert not os.path.exists(t.db + ".spool"), "a spool analysed whole is removed"


def _kill_mid_load(t, nghttpd, certs, *, capture: bool, analysis: bool) -> subprocess.Popen:
    """Batch 1 analysed and committed; analysis stopped; batch 2 spooled; then the kill, while a load runs."""
    _curl(nghttpd.port, certs["ca"], "b=1&i=[1-150]")
    _wait("batch 1 committed", lambda: _live_count(
        t.db, f"SELECT count(*) FROM http_events WHERE req_path LIKE '%b=1&%' "
              f"AND (local_port = {nghttpd.port} OR remote_port = {nghttpd.port})") >= 300)
    child = analysis_pid(t.proc.pid)
    os.kill(child, signal.SIGSTOP)  # so that batch 2 waits in the spool
    load = _curl(nghttpd.port, certs["ca"], "b=bg&i=[1-1000000]", background=True)
    _curl(nghttpd.port, certs["ca"], "b=2&i=[1-150]")
    _wait("batch 2 spooled", lambda: _in_raw(t, r"b=2&", 300))
    if capture:
        _kill(t.proc.pid)
    if analysis:
        _kill(child)
    else:
        os.kill(child, signal.SIGCONT)  # orphaned: it goes on alone until the next tracer takes over
    return load


@pytest.mark.parametrize(("capture", "analysis"), [(True, True), (True, False)], ids=["both", "capture"])
def test_after_kill_9_the_next_tracer_finishes_the_spool_and_stores_every_row_once(
        nghttpd, certs, tracer, capture, analysis):
    t1 = tracer(*_scope(nghttpd))
    load = _kill_mid_load(t1, nghttpd, certs, capture=capture, analysis=analysis)
    try:
        t2 = tracer(*_scope(nghttpd))  # the same DB, right away
        _curl(nghttpd.port, certs["ca"], "b=3&i=[1-100]")
    finally:
        load.kill()
        load.wait()
    cap = t2.stop()
    assert cap.returncode == 0, cap.stderr
    if analysis:
        assert re.search(r"holds \d+ bytes \(\d+ segments\) spooled by a tracer that did not stop cleanly",
                         cap.stderr), cap.stderr
        assert "analysis resumes an earlier run from its last commit" in cap.stderr, cap.stderr
    _assert_exactly_once(_http_sides(t2.db, nghttpd.port), {"1": 150, "2": 150, "3": 100})
    assert not os.path.exists(t2.db + ".spool"), "a spool analysed whole is removed"
    assert read(t2.db, "SELECT count(*) FROM apptrace_checkpoint") == [(0,)]


PGBENCH_SCRIPT = """\\set r random(1, 1000000000000000)
SELECT :r::bigint AS r, {tok} AS tok;
\\sleep 10 ms
"""


def test_postgres_prepared_statements_survive_a_kill_9_of_both_processes(postgres, tracer, tmp_path):
    """One pgbench connection, Parse once then Bind/Execute: rows after the restart still carry the SQL."""
    tok = 200_000 + os.getpid() % 700_000
    script = tmp_path / "bench.sql"
    script.write_text(PGBENCH_SCRIPT.format(tok=tok))
    scope = ("--comm", "pgbench", "--comm", "postgres", *BUSY_OK)  # its backends are forked, named postgres
    t1 = tracer(*scope)
    n = 300
    bench = subprocess.Popen([require_tool("pgbench"), "-n", "-M", "prepared", "-c", "1", "-t", str(n), "-f",
                              str(script), f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres "
                              "sslmode=require"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    mine = f"FROM pgsql_events WHERE req_body LIKE '%AS r, {tok} AS tok%'"
    _wait("rows committed", lambda: _live_count(t1.db, f"SELECT count(*) {mine}") >= 60)
    child = analysis_pid(t1.proc.pid)
    os.kill(child, signal.SIGSTOP)
    out, _ = bench.communicate(timeout=300)
    assert bench.returncode == 0 and f"actually processed: {n}/{n}" in out, out
    _wait("every execute spooled", lambda: _in_raw(t1, f"AS r, {tok} AS tok", 2 * n))
    _kill(t1.proc.pid)
    _kill(child)
    t2 = tracer(*scope)
    cap = t2.stop()
    assert cap.returncode == 0, cap.stderr
    rows = read(t2.db, f"SELECT trace_role, req_cmd, req_body, resp_status {mine}")
    for role in ("client", "server"):
        side = [r for r in rows if r[0] == role]
        bodies = [r[2] for r in side]
        assert len(side) == n, f"{role}: {len(side)} rows of {n} executes"
        assert len(set(bodies)) == n, f"{role}: {n - len(set(bodies))} stored twice"
        assert all(r[1] == "EXECUTE" and r[3] == "OK" for r in side), side[:3]
        assert all(re.fullmatch(rf"SELECT \d+::bigint AS r, {tok} AS tok;", b) for b in bodies), bodies[:3]


def test_mariadb_session_survives_a_kill_9_of_analysis_mid_load(mariadb, tracer):
    """One MariaDB CLI session over TLS, 300 queries with a pause each; analysis is killed halfway."""
    tok = 300_000 + os.getpid() % 600_000
    n = 300
    t = tracer("--comm", "mariadb", "--comm", "mariadbd", *BUSY_OK)
    client = subprocess.Popen([require_tool("mariadb"), "--no-defaults", "--ssl", "-h127.0.0.1", f"-P{mariadb.port}",
                               "-uapp", "-psecret", "-N"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert client.stdin is not None
    client.stdin.write("".join(f"SELECT {tok}, {i}, SLEEP(0.02);\n" for i in range(1, n + 1)))
    client.stdin.close()
    mine = f"FROM mysql_events WHERE req_body LIKE 'SELECT {tok}, %'"
    _wait("rows committed", lambda: _live_count(t.db, f"SELECT count(*) {mine}") >= 60)
    _kill(analysis_pid(t.proc.pid))  # mid-load: the session goes on
    assert client.wait(timeout=300) == 0, client.stderr.read() if client.stderr else ""
    _wait("analysis restarted", lambda: any("restarted it" in line for line in t.lines))
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    rows = read(t.db, f"SELECT trace_role, req_body, resp_status, rows {mine}")
    for role in ("client", "server"):
        bodies = sorted(r[1] for r in rows if r[0] == role)
        assert bodies == sorted(f"SELECT {tok}, {i}, SLEEP(0.02)" for i in range(1, n + 1)), (
            f"{role}: {len(bodies)} rows, {len(set(bodies))} distinct, of {n}")
        assert all(r[2] == "OK" and r[3] == 1 for r in rows if r[0] == role)
