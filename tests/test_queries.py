"""Shipped scripts and the run/sql commands: every script runs, formats, --arg, and one-line errors (exit 2)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from apptrace.cli import main as cli_main
from apptrace.query import scripts as pxl_scripts
from apptrace.store.writer import Store
from tests.test_px import build_db, make_http_rows

APPTRACE = os.path.join(os.path.dirname(sys.executable), "apptrace")
NOW = time.time_ns()


def sample_db(path: str) -> str:
    # Stamped when built, not when this module was imported: a fixture built late in a long run is still "recent".
    now = time.time_ns()
    rows = make_http_rows(300)
    for i in range(20):
        rows.append(dict(time_=now - i * 10**9, service="cart", trace_role="client", local_addr="10.0.0.5",
                         local_port=5000 + i % 3, remote_addr="10.0.0.9", remote_port=8443, latency=10**6 * i,
                         req_method="GET", req_path="/pay", resp_status=200))
        rows.append(dict(time_=now - i * 10**9, service="checkout", trace_role="server", local_addr="10.0.0.9",
                         local_port=8443, remote_addr="10.0.0.5", remote_port=5000 + i % 3, latency=10**6 * i,
                         req_method="GET", req_path="/pay", resp_status=500 if i % 10 == 0 else 200))
    my = [dict(time_=now - i * 10**9, service="checkout", trace_role="client", remote_addr="10.0.0.7",
               remote_port=3306, req_cmd="COM_QUERY", req_body=f"SELECT * FROM t WHERE id = {i}",
               resp_status="ERR" if i % 7 == 0 else "OK", latency=10**5 * i, rows=i) for i in range(30)]
    pg = [dict(time_=now - i * 10**9, service="cart", trace_role="client", remote_addr="10.0.0.8",
               remote_port=5432, req_cmd="QUERY", req_body=f"SELECT * FROM u WHERE id = ${i % 2 + 1}",
               resp_status="OK", latency=10**5 * i, rows=1) for i in range(30)]
    build_db(path, rows, mysql_events=my, pgsql_events=pg)
    with Store(path) as s:
        s.upsert_connections([dict(conn_id=f"{i}:3:0", service="cart", protocol="http", trace_role="client",
                                   bytes_sent=100, bytes_recv=1000, gap_bytes=i, open_time=now - 10**10)
                              for i in range(10)])
        s.add_capture_stats([dict(time_=now - i * 10**10, events=100, lost_events=i % 3) for i in range(30)])
        s.flush()
    return path


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return sample_db(str(tmp_path_factory.mktemp("q") / "q.duckdb"))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


EXPECTED = {
    "http_stats": {"by_service", "by_endpoint"}, "slow_requests": {"slowest"}, "http_status": {"status"},
    "mysql_stats": {"by_service", "slowest_queries"}, "pgsql_stats": {"by_service", "slowest_queries"},
    "service_map": {"service_map"}, "connections": {"connections", "capture_losses"},
    "grpc_stats": {"methods", "status_codes"}, "errors": {"errors"},
}


def test_every_shipped_script_runs_and_has_a_docstring(db, capsys):
    scripts = pxl_scripts.shipped_scripts()
    assert set(EXPECTED) <= set(scripts)
    for name, path in scripts.items():
        src = path.read_text()
        doc = pxl_scripts.script_description(src)
        assert doc and "Reads" in src, name
        rc, out, err = run(capsys, "run", name, "--db", db, "--format", "json", "--arg", "start_time=-1h")
        assert rc == 0, err
        got = json.loads(out)
        assert set(got) == EXPECTED[name], name
        assert any(got.values()) or name == "grpc_stats", name  # the sample has no gRPC


def test_script_results_are_right(db, capsys):
    rc, out, _ = run(capsys, "run", "service_map", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    edges = {(e["requester"], e["responder"], e["protocol"]): e for e in json.loads(out)["service_map"]}
    assert edges[("cart", "checkout", "http")]["requests"] == 20
    assert ("checkout", "10.0.0.7:3306", "mysql") in edges
    rc, out, _ = run(capsys, "run", "mysql_stats", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    q = json.loads(out)["slowest_queries"]
    assert q[0]["query"] == "SELECT * FROM t WHERE id = ?" and q[0]["calls"] == 30
    rc, out, _ = run(capsys, "run", "errors", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    errs = json.loads(out)["errors"]
    assert {e["protocol"] for e in errs} == {"http", "mysql"}
    assert all(e["status"] in ("ERR",) or e["status"].startswith("5") for e in errs)
    times = [e["time_"] for e in errs]
    assert times == sorted(times, reverse=True)
    rc, out, _ = run(capsys, "run", "slow_requests", "--db", db, "-o", "json", "--arg", "limit=3",
                     "--arg", "start_time=-1h")
    lat = [r["latency_ms"] for r in json.loads(out)["slowest"]]
    assert len(lat) == 3 and lat == sorted(lat, reverse=True)


def test_print_sql(db, capsys):
    rc, out, err = run(capsys, "run", "http_stats", "--db", db, "--print-sql")
    assert rc == 0, err
    assert out.startswith("-- by_service\nWITH") and "-- by_endpoint" in out and out.count("quantile_cont") >= 2


def test_list(capsys):
    rc, out, _ = run(capsys, "run", "--list")
    assert rc == 0
    assert "http_stats" in out and "service_map" in out and len(out.strip().splitlines()) >= 9


def test_formats_table_csv(db, capsys):
    rc, out, _ = run(capsys, "run", "http_status", "--db", db, "--format", "csv", "--arg", "start_time=-1h")
    assert rc == 0 and out.splitlines()[0] == "service,status_class,resp_status,requests,share,p50_ms"
    rc, out, _ = run(capsys, "run", "http_stats", "--db", db, "--arg", "start_time=-1h")
    assert rc == 0 and "by_service" in out and "checkout" in out


def write(tmp_path, text: str) -> str:
    p = tmp_path / "s.pxl"
    p.write_text(text)
    return str(p)


def test_flat_script_with_px_arg_and_import(db, tmp_path, capsys):
    path = write(tmp_path, "import px\nn = px.arg('n', 2)\n"
                 "df = px.DataFrame('http_events').sort('latency').head(n)\npx.display(df[['latency']], 'x')\n")
    rc, out, err = run(capsys, "run", path, "--db", db, "-o", "json", "--arg", "n=4")
    assert rc == 0, err
    assert len(json.loads(out)["x"]) == 4
    rc, out, err = run(capsys, "run", path, "--db", db, "--arg", "m=4")
    assert rc == 2 and out == "" and "unknown --arg m" in err


def test_main_entry_typed_args(db, tmp_path, capsys):
    path = write(tmp_path, "def main(limit: int = 1, on: bool = False):\n"
                 "    df = px.DataFrame('http_events').head(limit)\n"
                 "    df.on = on\n"
                 "    return df[['on']]\n")
    rc, out, err = run(capsys, "run", path, "--db", db, "-o", "json", "--arg", "limit=3", "--arg", "on=true")
    assert rc == 0, err
    assert json.loads(out) == {"output": [{"on": True}] * 3}
    rc, out, err = run(capsys, "run", path, "--db", db, "--arg", "limit=x")
    assert rc == 2 and out == "" and "limit=x" in err and "int" in err
    rc, out, err = run(capsys, "run", path, "--db", db, "--arg", "nope=1")
    assert rc == 2 and "main() takes limit, on" in err


@pytest.mark.parametrize("body, line, needle", [
    ("df = px.DataFrame('http_events')\ndf = df[df.latncy > 1]\npx.display(df)\n", 2, "unknown column 'latncy'"),
    ("x = 1\npx.display(px.DataFrame('htp_events'))\n", 2, "available tables:"),
    ("df = px.DataFrame('http_events')\n\n\ndf = df.groupby('service').agg(\n  n=('latency', max))\n", 4,
     "not an aggregate"),
    ("def f(:\n  pass\n", 1, "SyntaxError"),
    ("import px\n\nraise ValueError('boom')\n", 3, "ValueError: boom"),
    ("df = px.DataFrame('http_events')\ndf.x = px.int64(df.req_path)\npx.display(df)\n", 3, "Conversion Error"),
])
def test_bad_scripts_exit_2_with_line(db, tmp_path, capsys, body, line, needle):
    path = write(tmp_path, body)
    rc, out, err = run(capsys, "run", path, "--db", db)
    assert rc == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert f"{path}:{line}:" in err and needle in err, err


def test_unknown_script(capsys):
    rc, out, err = run(capsys, "run", "no_such_script")
    assert rc == 2 and out == "" and "shipped script" in err


def test_a_name_is_never_a_file_of_the_current_directory(db, capsys, tmp_path, monkeypatch):
    """A stray ./http_stats (or ./http_stats.pxl) must not run, as root, in the shipped script's place."""
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "ran"
    for name in ("http_stats", "http_stats.pxl", "mine.pxl"):
        (tmp_path / name).write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    rc, out, err = run(capsys, "run", "http_stats", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    assert rc == 0 and set(json.loads(out)) == EXPECTED["http_stats"], err
    rc, out, err = run(capsys, "run", "http_stats.pxl", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    assert rc == 0 and set(json.loads(out)) == EXPECTED["http_stats"], err
    rc, out, err = run(capsys, "run", "mine.pxl", "--db", db)
    assert rc == 2 and "./mine.pxl" in err, err
    assert not marker.exists()
    rc, out, err = run(capsys, "run", "./mine.pxl", "--db", db)  # given as a path: the user's own script
    assert rc == 0 and marker.exists(), err


def test_sql(db, capsys):
    rc, out, err = run(capsys, "sql", "SELECT count(*) AS n FROM mysql_events", "--db", db, "-o", "json")
    assert rc == 0 and json.loads(out) == {"output": [{"n": 30}]}
    rc, out, err = run(capsys, "sql", "SELECT nope FROM http_events", "--db", db)
    assert rc == 2 and out == "" and "nope" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run(capsys, "sql", "SELEC 1", "--db", db)
    assert rc == 2 and out == "" and "syntax error" in err.lower()
    rc, out, err = run(capsys, "sql", "SELECT 1", "--db", db + ".missing")
    assert rc == 2 and "no database" in err


def test_db_from_env(db, capsys, monkeypatch):
    monkeypatch.setenv("APPTRACE_DB", db)
    rc, out, _ = run(capsys, "sql", "SELECT count(*) AS n FROM pgsql_events", "-o", "csv")
    assert rc == 0 and out.split() == ["n", "30"]


def test_help_ends_with_examples():
    for cmd in ("run", "sql", "report", "watch"):
        out = subprocess.run([APPTRACE, cmd, "--help"], capture_output=True, text=True, check=True).stdout
        assert "examples:" in out and "apptrace" in out.strip().splitlines()[-1], cmd


def test_seed_script_through_apptrace_run(db, tmp_path):
    seed = ("px.display(px.DataFrame('http_events').groupby(['service', 'req_path']).agg(\n"
            "    p99_latency=('latency', px.quantiles, 0.99), error_rate=('resp_status', px.fraction, px.gt, 499)))\n")
    path = write(tmp_path, seed)
    r = subprocess.run([APPTRACE, "run", path, "--db", db, "--format", "json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)["output"]
    assert {"service", "req_path", "p99_latency", "error_rate"} == set(rows[0])


def test_script_docstrings_name_real_tables_and_columns():
    """Each script's 'Reads' lines name tables and columns that exist, so the docs stay true."""
    import ast
    import re

    from apptrace.store import schema

    for name, path in pxl_scripts.shipped_scripts().items():
        doc = ast.get_docstring(ast.parse(path.read_text()))
        reads = doc[doc.index("Reads"):].split("Arguments:")[0]
        reads = " ".join(reads.split())
        for m in re.finditer(r"((?:\w+_events|connections|processes|capture_stats)(?:(?:, | and )\w+_events)*): "
                             r"([\w, ]+?)(?:;|\.|$)", reads):
            tables = re.findall(r"\w+_events|connections|processes|capture_stats", m.group(1))
            for col in (c.strip() for c in m.group(2).split(",")):
                for t in tables:
                    assert col in schema.columns(t), f"{name}: {t}.{col}"
        assert re.search(r"\w+_events|connections|capture_stats", reads), name


def test_service_map_pairs_sides_of_the_same_time(tmp_path, capsys):
    # "old" served 10.0.0.9:8443 first, then stopped; "new" took the same address later, and its client even got
    # the same ephemeral port back. Each client's calls belong to the server of their own time, once each.
    def side(t_s: int, service: str, role: str, client_port: int = 5000) -> dict:
        ends = {"local_addr": "10.0.0.5", "local_port": client_port, "remote_addr": "10.0.0.9", "remote_port": 8443}
        if role == "server":
            ends = {"local_addr": "10.0.0.9", "local_port": 8443, "remote_addr": "10.0.0.5",
                    "remote_port": client_port}
        return dict(time_=NOW - 600 * 10**9 + t_s * 10**9, service=service, trace_role=role, latency=10**6,
                    req_method="GET", req_path="/x", resp_status=200, **ends)

    rows = [side(t, "old", "server") for t in range(10)] + [side(t, "a", "client") for t in range(10)]
    rows += [side(t, "new", "server") for t in range(300, 305)] + [side(t, "b", "client") for t in range(300, 305)]
    # a server call whose client was not traced, on a port of its own
    rows += [side(400, "new", "server", client_port=7000)]
    db = build_db(str(tmp_path / "m.duckdb"), rows)
    rc, out, _ = run(capsys, "run", "service_map", "--db", db, "-o", "json", "--arg", "start_time=-1h")
    assert rc == 0
    edges = {(e["requester"], e["responder"], e["seen_from"]): e["requests"] for e in json.loads(out)["service_map"]}
    assert edges == {("a", "old", "client"): 10, ("b", "new", "client"): 5, ("10.0.0.5", "new", "server"): 1}
