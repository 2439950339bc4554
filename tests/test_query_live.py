"""Queries against the DB a running tracer holds go through its socket; the seed script over real traffic."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time

import pytest

from tests.conftest import APPTRACE, ROOT, require_tool

pytestmark = pytest.mark.ebpf

SEED = """px.display(px.DataFrame('http_events').groupby(['service', 'req_path']).agg(
    p99_latency=('latency', px.quantiles, 0.99), error_rate=('resp_status', px.fraction, px.gt, 499)))
"""


def sql(db: str, query: str) -> list[dict]:
    proc = subprocess.run([*APPTRACE, "sql", "--db", db, "--format", "json", query], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["output"]


def test_queries_while_tracing_and_seed_script_on_real_rows(tracer, https_server, tmp_path):
    server = https_server()
    t = tracer()
    db = t.db
    curl = require_tool("curl")
    for _ in range(25):
        subprocess.run([curl, "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{server.port}/sleep?ms=50"], check=True)
    for code in (500, 503, 200, 200):
        subprocess.run([curl, "-sSk", "-o", "/dev/null", "-H", "Cookie: session=s3cret",
                        f"https://127.0.0.1:{server.port}/status/{code}"], check=True)
    # The tracer flushes at least every second; it holds the file, so this goes through <db>.sock.
    deadline = time.monotonic() + 30
    rows: list[dict] = []
    while time.monotonic() < deadline:
        rows = sql(db, f"SELECT count(*) AS n FROM http_events WHERE pid = {server.pid}")
        if rows[0]["n"] >= 29:
            break
        time.sleep(0.5)
    assert rows[0]["n"] == 29
    assert t.proc.poll() is None, "the tracer must still be running"
    sock = db + ".sock"
    assert stat.S_IMODE(os.stat(sock).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(db).st_mode) == 0o600

    # Secrets are redacted before they reach the file.
    cookies = sql(db, "SELECT DISTINCT json_extract_string(req_headers, '$.cookie') AS c FROM http_events "
                      f"WHERE pid = {server.pid} AND req_path LIKE '/status/%'")
    assert cookies == [{"c": "<redacted>"}]

    script = tmp_path / "seed.pxl"
    script.write_text(SEED)
    proc = subprocess.run([*APPTRACE, "run", str(script), "--db", db, "--format", "json"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    (name, table), = out.items()
    sleep_rows = [r for r in table if r["req_path"] == "/sleep?ms=50" and r["service"] == "apptrace.demo.server"]
    assert len(sleep_rows) == 1, table
    assert 50e6 <= sleep_rows[0]["p99_latency"] <= 1e9
    status = {r["req_path"]: r["error_rate"] for r in table if r["service"] == "apptrace.demo.server"}
    assert status["/status/500"] == 1.0 and status["/status/200"] == 0.0

    proc = subprocess.run([*APPTRACE, "report", "--db", db, "-o", "json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "apptrace.demo.server" in proc.stdout

    cap = t.stop()
    assert cap.returncode == 0
    assert not os.path.exists(sock), "the query socket goes away with the tracer"
    # After the tracer is gone, the same queries open the file read-only.
    assert sql(db, f"SELECT count(*) AS n FROM http_events WHERE pid = {server.pid}")[0]["n"] == 29
