"""`apptrace export --parquet DIR` and `--parquet` for run/sql/report: real DuckDB files written through the real
store writer, a real tracer on a real HTTPS server, the real CLI as a subprocess, and the Parquet files read back."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import time

import duckdb
import pyarrow.parquet as pq
import pytest

from apptrace.query.backend import FileBackend, ParquetBackend, SocketBackend
from apptrace.query.export import CRASH_AFTER_FILES_ENV, CRASH_IN_FILE_ENV, PART_NAME, STATE_DIR
from apptrace.store import schema
from apptrace.store.writer import Store
from tests.conftest import APPTRACE, ROOT, require_tool

NOW = time.time_ns()
DAY = 86_400 * 10**9
MIN = 60 * 10**9


def http_row(port: int, t: int, host: str | None, service: str = "checkout", status: int = 200) -> dict:
    return {"time_": t, "pid": 100, "comm": "python3", "service": service, "trace_role": "server",
            "local_addr": "127.0.0.1", "local_port": 8443, "remote_addr": "127.0.0.1", "remote_port": port,
            "encrypted": True, "tls_lib": "openssl", "host": host, "latency": 1_000_000 + port,
            "conn_id": f"100:5:{port}", "http_version": "1.1", "req_method": "GET", "req_path": f"/p/{port % 3}",
            "req_route": f"/p/{port % 3}", "req_headers": "{}", "resp_status": status, "resp_body": "ok"}


def conn_row(conn_id: str, host: str | None, sent: int, close: int | None = None) -> dict:
    return {"conn_id": conn_id, "pid": 100, "fd": 5, "comm": "python3", "service": "checkout",
            "trace_role": "server", "protocol": "http", "open_time": NOW - 10 * MIN, "close_time": close,
            "bytes_sent": sent, "bytes_recv": sent // 2, "host": host}


def apptrace(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*APPTRACE, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def export(db: str, out: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = apptrace("export", "--parquet", out, "--db", db, *extra, env=env)
    if env is None:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith("apptrace export: "), proc.stdout
    return proc


def part_files(out: str, table: str) -> list[str]:
    return [os.path.join(d, n) for d, _, names in os.walk(os.path.join(out, f"table={table}"))
            for n in names if PART_NAME.match(n)]


def stored_seqs(out: str, table: str) -> list[int]:
    """Every store_seq in the table's files, duplicates kept: exactly once means no value twice."""
    return [s for f in part_files(out, table) for s in pq.read_table(f, columns=[schema.STORE_SEQ])
            [schema.STORE_SEQ].to_pylist()]


def rows(backend, table: str) -> list[dict]:
    return backend.query_arrow(f"SELECT * FROM {table} ORDER BY {schema.STORE_SEQ}").to_pylist()


def assert_export_matches(db_rows: dict[str, list[dict]], out: str) -> None:
    """The export's views hold exactly the DB's rows, column for column, and no file row is there twice."""
    back = ParquetBackend(os.path.join(out, "**"))
    try:
        for table, want in db_rows.items():
            assert rows(back, table) == want, table
            seqs = stored_seqs(out, table)
            assert len(seqs) == len(set(seqs)), f"{table}: a row exported twice"
    finally:
        back.close()


def db_contents(db: str) -> dict[str, list[dict]]:
    back = FileBackend(db)
    try:
        return {t: rows(back, t) for t in schema.TABLES}
    finally:
        back.close()


def test_two_hosts_in_one_dir_queried_together_by_run_sql_and_report(tmp_path):
    out = str(tmp_path / "export")
    dbs = {}
    for host, n, services in (("web1", 30, ("checkout", "search")), ("web2", 20, ("checkout", "cart"))):
        db = dbs[host] = str(tmp_path / f"{host}.duckdb")
        with Store(db) as s:
            s.add_events("http_events", [http_row(i, NOW - i * 1000, host, services[i % 2], 500 if i % 5 == 0 else 200)
                                         for i in range(n)])
            s.upsert_connections([conn_row("100:5:1", host, 10)])  # the same conn_id on both hosts
            s.add_capture_stats([{"time_": NOW, "events": n, "host": host}])
        export(db, out)
    day = time.strftime("%Y-%m-%d", time.gmtime(NOW / 1e9))
    assert sorted(os.listdir(os.path.join(out, "table=http_events", f"date={day}"))) == ["host=web1", "host=web2"]

    def by_service(*source: str) -> dict[str, int]:
        proc = apptrace("run", "http_stats", "--arg", "start_time=-1h", "--format", "json", *source)
        assert proc.returncode == 0, proc.stderr
        return {r["service"]: r["requests"] for r in json.loads(proc.stdout)["by_service"]}

    each = [by_service("--db", db) for db in dbs.values()]
    together = by_service("--parquet", f"{out}/**")
    assert together == dict(sum((collections.Counter(e) for e in each), collections.Counter()))
    assert together == {"checkout": 25, "search": 15, "cart": 10}

    def report(*source: str) -> collections.Counter:
        proc = apptrace("report", "--since", "1h", "-o", "json", *source)
        assert proc.returncode == 0, proc.stderr
        return collections.Counter({(r["service"], what): r[what] for r in json.loads(proc.stdout)["services"]
                                    for what in ("requests", "errors")})

    each_report = [report("--db", db) for db in dbs.values()]
    assert report("--parquet", f"{out}/**") == each_report[0] + each_report[1]
    assert report("--parquet", f"{out}/**") == {("checkout", "requests"): 25, ("checkout", "errors"): 5,
                                                ("search", "requests"): 15, ("search", "errors"): 3,
                                                ("cart", "requests"): 10, ("cart", "errors"): 2}

    proc = apptrace("sql", "--format", "json", "--parquet", f"{out}/**",
                    "SELECT host, count(*) AS n FROM http_events GROUP BY host ORDER BY host")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["output"] == [{"host": "web1", "n": 30}, {"host": "web2", "n": 20}]
    # A connection key repeats across hosts: each DB's row stays.
    proc = apptrace("sql", "--format", "json", "--parquet", f"{out}/**", "SELECT host FROM connections ORDER BY 1")
    assert json.loads(proc.stdout)["output"] == [{"host": "web1"}, {"host": "web2"}]

    # The views are typed like apptrace's tables.
    back = ParquetBackend(f"{out}/**")
    try:
        for table in schema.TABLES:
            got_types = [(r["column_name"], r["column_type"]) for r in back.query_arrow(f"DESCRIBE {table}").to_pylist()]
            assert got_types == schema.TABLES[table], table
    finally:
        back.close()


def test_parquet_queries_stay_locked_down(tmp_path):
    db, out = str(tmp_path / "a.duckdb"), str(tmp_path / "export")
    with Store(db) as s:
        s.add_events("http_events", [http_row(1, NOW, "web1")])
    export(db, out)
    for query, why in (("SELECT * FROM read_csv('/etc/shadow')", "disabled by configuration"),
                       ("SELECT * FROM read_text('/etc/passwd')", "disabled by configuration"),
                       (f"COPY http_events TO '{part_files(out, 'http_events')[0]}' (FORMAT parquet)", "only SELECT"),
                       ("SET enable_external_access = true", "only SELECT"),
                       ("CREATE OR REPLACE VIEW http_events AS SELECT 1", "only SELECT")):
        proc = apptrace("sql", "--parquet", f"{out}/**", query)
        assert proc.returncode == 2 and why in proc.stderr, (query, proc.stderr)
        assert len(proc.stderr.strip().splitlines()) == 1
    proc = apptrace("sql", "--format", "json", "--parquet", f"{out}/**", "SELECT count(*) AS n FROM http_events")
    assert json.loads(proc.stdout)["output"] == [{"n": 1}]


def test_incremental_through_the_socket_late_rows_upserts_and_retention(tmp_path):
    """The DB is held by a Store serving queries (as a tracer's is): the export goes through its socket."""
    db, out = str(tmp_path / "live.duckdb"), str(tmp_path / "export")
    s = Store(db)
    s.serve()
    try:
        s.add_events("http_events", [http_row(i, NOW - 2 * 60 * MIN if i < 5 else NOW - i * 1000, "web1")
                                     for i in range(40)])
        s.upsert_connections([conn_row("100:5:0", "web1", 10)])
        s.upsert_processes([{"pid": 100, "comm": "python3", "start_time": NOW - DAY, "host": "web1"}])
        s.add_capture_stats([{"time_": NOW, "events": 40, "host": "web1"}])
        s.flush()
        first = export(db, out)
        assert "http_events 40," in first.stdout
        assert os.path.exists(db + ".sock"), "the DB is held: the export went through the socket"

        # Retention deletes the 5 oldest rows; they were exported, and stay exported.
        s.retain_ns = 60 * MIN  # as --retain 1h would, but at this point: the rows are exported by now
        s.apply_retention(NOW)
        assert s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist() == [{"n": 35}]
        # Late rows: older than what was exported, some with exactly the time of an exported row.
        late = [http_row(100 + i, NOW - 30 * MIN if i % 2 else NOW - 7 * 1000, "web1") for i in range(10)]
        s.add_events("http_events", late)
        # The connection progresses (upsert in place), a new one opens, a process appears.
        s.upsert_connections([conn_row("100:5:0", "web1", 999, close=NOW), conn_row("100:6:0", "web1", 5)])
        s.upsert_processes([{"pid": 101, "comm": "worker", "start_time": NOW - DAY, "host": "web1"}])
        s.flush()
        second = export(db, out)
        assert "http_events 10," in second.stdout and "connections 2," in second.stdout, second.stdout
        third = export(db, out)
        assert "0 new rows in 0 file(s)" in third.stdout, third.stdout
        live = {t: rows(s, t) for t in schema.TABLES}
    finally:
        s.close()

    back = ParquetBackend(f"{out}/**")
    try:
        ports = sorted(r["remote_port"] for r in rows(back, "http_events"))
        assert ports == sorted(list(range(40)) + list(range(100, 110))), "every row once, deleted ones kept"
        conns = [(r["conn_id"], r["bytes_sent"], r["close_time"] is not None) for r in rows(back, "connections")]
        assert sorted(conns) == [("100:5:0", 999, True), ("100:6:0", 5, False)], "the latest version, once"
        assert len(stored_seqs(out, "connections")) == 3, "the files keep each version exported"
        assert sorted(r["pid"] for r in rows(back, "processes")) == [100, 101]
    finally:
        back.close()
    # Every row the DB still has is in the export exactly as stored; the files hold no row twice.
    exported = assert_export_matches_subset(live, out)
    assert exported["http_events"] == 50


def assert_export_matches_subset(db_rows: dict[str, list[dict]], out: str) -> dict[str, int]:
    """Each DB row is in the export unchanged (the export may also hold rows retention deleted since)."""
    back = ParquetBackend(os.path.join(out, "**"))
    counts = {}
    try:
        for table, want in db_rows.items():
            got = rows(back, table)
            by_seq = {r[schema.STORE_SEQ]: r for r in got}
            for r in want:
                assert by_seq.get(r[schema.STORE_SEQ]) == r, (table, r)
            seqs = stored_seqs(out, table)
            if table not in schema.KEYS:
                assert len(seqs) == len(set(seqs)) == len(got), f"{table}: a row exported twice"
            counts[table] = len(got)
    finally:
        back.close()
    return counts


@pytest.mark.parametrize("kill_after", ["first", "last", "inside_second"])
def test_export_killed_midway_then_again_repeats_nothing(tmp_path, kill_after):
    """SIGKILL after the first Parquet file, after the last one but before the state, or halfway through writing
    the second: the next export removes what the dead one wrote past the state and writes it again, once."""
    db, out = str(tmp_path / "a.duckdb"), str(tmp_path / "export")
    with Store(db) as s:
        s.add_events("http_events", [http_row(i, NOW - (i % 3) * DAY, "web1") for i in range(60)])
        s.upsert_connections([conn_row("100:5:0", "web1", 10)])
    export(db, out)
    with Store(db) as s:
        # New rows over three dates and two hosts (one unknown, as rows stored before `host` existed): 6 files,
        # and one for the connection's new version.
        s.add_events("http_events", [http_row(1000 + i, NOW - (i % 3) * DAY, "web1" if i % 2 else None)
                                     for i in range(60)])
        s.upsert_connections([conn_row("100:5:0", "web1", 500, close=NOW)])
    state = os.path.join(out, STATE_DIR)
    before = {n: open(os.path.join(state, n), "rb").read() for n in os.listdir(state) if n.endswith(".json")}
    files_before = len(part_files(out, "http_events"))
    kill = {"first": 1, "last": 7, "inside_second": 2}[kill_after]
    env = {CRASH_IN_FILE_ENV if kill_after == "inside_second" else CRASH_AFTER_FILES_ENV: str(kill)}
    died = export(db, out, env=env)
    assert died.returncode == -signal.SIGKILL, died.stderr
    after = {n: open(os.path.join(state, n), "rb").read() for n in os.listdir(state) if n.endswith(".json")}
    assert after == before, "the state moves only after every file is complete"
    written = len(part_files(out, "http_events")) + len(part_files(out, "connections")) - files_before - 1
    if kill_after == "inside_second":
        assert written == 1, "one file in place, the second cut short"
        unfinished = [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")]
        assert len(unfinished) == 1 and unfinished[0].startswith(".part-"), unfinished
    else:
        assert written == kill, "the export died where it was told to"

    if kill_after == "last":
        # An export of another table clears every leftover of the dead run, not only its own table's.
        only = export(db, out, "--table", "connections")
        assert f"removed {kill} file(s) of an export that died" in only.stdout, only.stdout
        assert "connections 1)" in only.stdout
    again = export(db, out)
    if kill_after != "last":
        assert f"removed {kill} file(s) of an export that died" in again.stdout, again.stdout
        assert "connections 1," in again.stdout
    else:
        assert "removed" not in again.stdout and "connections 0," in again.stdout, again.stdout
    assert "http_events 60," in again.stdout
    assert not [n for _, _, names in os.walk(out) for n in names if n.endswith(".tmp")], "nothing unfinished left"
    assert_export_matches(db_contents(db), out)
    assert len(stored_seqs(out, "http_events")) == 120
    back = ParquetBackend(f"{out}/**")
    try:
        hosts = back.query_arrow("SELECT host, count(*) AS n FROM http_events GROUP BY ALL ORDER BY 1").to_pylist()
        assert hosts == [{"host": "web1", "n": 90}, {"host": None, "n": 30}]
    finally:
        back.close()


def test_a_db_from_before_store_seq_is_migrated_and_exported(tmp_path):
    db, out = str(tmp_path / "old.duckdb"), str(tmp_path / "export")
    with Store(db) as s:
        s.add_events("http_events", [http_row(i, NOW - i, None) for i in range(12)])
        s.upsert_connections([conn_row("100:5:0", None, 1)])
    # What schema version 3 left: no host, no store_seq, no db_id.
    con = duckdb.connect(db)
    for table in schema.TABLES:
        con.execute(f"ALTER TABLE {table} DROP COLUMN {schema.STORE_SEQ}")
        con.execute(f"ALTER TABLE {table} DROP COLUMN host")
    con.execute(f"DELETE FROM {schema.META_TABLE} WHERE key IN ('db_id', 'next_store_seq')")
    con.execute(f"UPDATE {schema.META_TABLE} SET value = '3' WHERE key = 'schema_version'")
    con.close()
    proc = export(db, out)
    assert "13 new rows" in proc.stdout, proc.stdout
    contents = db_contents(db)
    seqs = [r[schema.STORE_SEQ] for t in contents.values() for r in t]
    assert len(seqs) == 13 and None not in seqs and len(set(seqs)) == 13
    assert_export_matches(contents, out)
    with Store(db) as s:  # numbers handed out later come after the migrated ones
        s.add_events("http_events", [http_row(99, NOW, "web1")])
    assert "http_events 1," in export(db, out).stdout


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    db = str(tmp_path / "a.duckdb")
    with Store(db) as s:
        s.add_events("http_events", [http_row(1, NOW, "web1")])
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    for args, why in ((["--db", str(tmp_path / "missing.duckdb"), "--parquet", str(tmp_path / "o")], "no database"),
                      (["--db", db, "--parquet", str(blocker)], "not a directory"),
                      (["--db", db, "--parquet", str(blocker / "sub")], "cannot create"),
                      (["--db", db, "--parquet", str(tmp_path / "o"), "--table", "nope"], "unknown table 'nope'")):
        proc = apptrace("export", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert why in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    proc = apptrace("sql", "--parquet", str(tmp_path / "nothing" / "**"), "SELECT 1")
    assert proc.returncode == 2 and "no apptrace Parquet files match" in proc.stderr


@pytest.mark.ebpf
def test_live_tracer_exported_while_it_runs_then_after(tracer, https_server, tmp_path):
    out = str(tmp_path / "export")
    server = https_server()
    # Other tests load this machine: analysis would wait for idle CPU (by design) and the rows for it. This test
    # is about exporting while rows arrive, so analysis runs at normal priority and never pauses.
    t = tracer("--pid", str(server.pid), "--analysis-priority", "0", "--analysis-yield-above", "100")
    curl = require_tool("curl")

    def requests(n: int, total: int) -> None:
        for i in range(n):
            subprocess.run([curl, "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{server.port}/status/{200 + i % 2}"],
                           check=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            got = SocketBackend(t.db + ".sock").query_arrow("SELECT count(*) AS n FROM http_events").to_pylist()
            if got[0]["n"] >= total:
                return
            time.sleep(0.3)
        raise AssertionError(f"the tracer stored {got} rows of {total}")

    requests(15, 15)
    first = export(t.db, out)
    assert "http_events 15," in first.stdout, first.stdout
    requests(10, 25)
    export(t.db, out)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    export(t.db, out)  # the file, no one holding it: what the tracer stored at its end
    contents = db_contents(t.db)
    assert len(contents["http_events"]) == 25
    assert {r["host"] for t_ in contents.values() for r in t_} == {os.uname().nodename}
    assert_export_matches(contents, out)

    # Replay puts the capture header's host on the rows too.
    replayed = str(tmp_path / "replayed.duckdb")
    proc = apptrace("replay", t.raw, "--db", replayed)
    assert proc.returncode == 0, proc.stderr
    hosts = FileBackend(replayed).query_arrow("SELECT DISTINCT host FROM http_events").to_pylist()
    assert hosts == [{"host": os.uname().nodename}]
