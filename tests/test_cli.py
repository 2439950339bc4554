"""Bad command lines are refused before anything is attached: one line naming the option as typed, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid  # reaped: no such process now (and too soon to be reused)


@pytest.mark.parametrize(("args", "says"), [
    (["--pid", "DEAD"], "--pid DEAD: no such process"),
    (["--lib", "/nonexistent/libssl.so"], "--lib /nonexistent/libssl.so: no such file"),
    (["--lib", "/bin/ls"], "--lib /bin/ls: no SSL_read/SSL_write functions"),
    (["--max-size", "abc"], "--max-size: bad size 'abc'"),
    (["--retain", "soon"], "--retain: bad duration 'soon'"),
    (["--spool-max", "lots"], "--spool-max: bad size 'lots'"),
    (["--ring-mb", "3"], "argument --ring-mb: must be a power of two"),
    (["--max-chunk", "1000"], "argument --max-chunk: must be a power of two"),
    (["--max-chunks", "0"], "argument --max-chunks: must be from 1 to 256"),
])
def test_trace_refuses_bad_options_before_attaching(tmp_path: Path, args: list[str], says: str) -> None:
    pid = str(dead_pid())
    args = [a.replace("DEAD", pid) for a in args]
    db = tmp_path / "t.duckdb"
    proc = subprocess.run([sys.executable, "-m", "apptrace.cli", "trace", "--db", str(db), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert says.replace("DEAD", pid) in last, proc.stderr
    assert "tracing" not in proc.stderr and not db.exists() and not (tmp_path / "t.duckdb.spool").exists()


def test_version() -> None:
    proc = subprocess.run([sys.executable, "-m", "apptrace.cli", "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("apptrace "), proc


# -- readable output: tables that fit the terminal ----------------------------------------------------------------
def run_on_terminal(argv: list[str], cols: int = 100, cwd: Path = ROOT) -> str:
    """Run a command with a real terminal (a pty of ``cols`` columns) as its stdout and stderr; what it printed."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, cols, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, cwd=cwd, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the command closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=120)
    os.close(master)
    return b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")


def strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


@pytest.fixture(scope="module")
def many_rows_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    import time

    from apptrace.store.writer import Store

    path = str(tmp_path_factory.mktemp("out") / "o.duckdb")
    now = time.time_ns()
    with Store(path) as s:
        s.add_events("http_events", [dict(time_=now - 30 * 10**9 - i * 10**6, pid=7, service=f"svc{i:03d}",
                                          trace_role="server", req_method="GET", req_path=f"/r/{i}",
                                          resp_status=500 if i % 4 == 0 else 200, latency=12_345_678,
                                          resp_body="line one\nline two\n")
                                     for i in range(120)])
        s.flush()
    return path


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "apptrace.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_sql_table_shows_a_default_number_of_rows_and_counts_the_rest(many_rows_db: str) -> None:
    from apptrace.query.output import DEFAULT_LIMIT

    q = "SELECT service, req_path FROM http_events ORDER BY service"
    out = cli("sql", q, "--db", many_rows_db).stdout
    assert "svc000" in out and f"svc{DEFAULT_LIMIT - 1:03d}" in out and f"svc{DEFAULT_LIMIT:03d}" not in out
    assert f"{120 - DEFAULT_LIMIT} more rows (--limit" in out, out[-300:]
    out = cli("sql", q, "--db", many_rows_db, "--limit", "0").stdout
    assert "svc119" in out and "more rows" not in out
    out = cli("sql", q, "--db", many_rows_db, "--limit", "5").stdout
    assert "svc004" in out and "svc005" not in out and "115 more rows" in out
    assert len(cli("sql", q, "--db", many_rows_db, "-o", "csv").stdout.strip().splitlines()) == 121  # all


def test_key_column_is_never_cut_on_a_narrow_terminal(many_rows_db: str) -> None:
    key = "a-service-name-long-enough-to-be-cut"
    q = (f"SELECT '{key}' AS service, req_path, resp_body, req_method, resp_status, latency FROM http_events "
         "LIMIT 3")
    out = strip_ansi(run_on_terminal([sys.executable, "-m", "apptrace.cli", "sql", q, "--db", many_rows_db],
                                     cols=60))
    assert sum(key in ln for ln in out.splitlines()) == 3, out  # each row's key whole, on its one line
    assert max(len(ln) for ln in out.splitlines()) <= 60, out


def test_a_cell_ending_in_a_newline_adds_no_blank_line(many_rows_db: str) -> None:
    out = cli("sql", "SELECT service, resp_body FROM http_events ORDER BY service LIMIT 3", "--db",
              many_rows_db).stdout
    body = [ln for ln in out.splitlines() if ln.startswith("│")]
    assert len(body) == 3, out  # three rows: no empty line after a body ending in "\n"
    assert all(ln.strip("│ ") for ln in body), out


def test_durations_and_shares_have_their_units(many_rows_db: str) -> None:
    q = ("SELECT 'checkout' AS service, 12345678 AS latency, 4.5 AS p99_ms, 0.0125 AS error_rate, "
         "1500.0 AS avg_ms, 3 AS requests, 2.5 AS rps")
    out = cli("sql", q, "--db", many_rows_db).stdout
    assert "12.3ms" in out and "4.50ms" in out and "1.25%" in out and "1.50s" in out, out
    assert "2.5 " in out, "a rate is not a share"
    got = json.loads(cli("sql", q, "--db", many_rows_db, "-o", "json").stdout)["output"][0]
    assert got["latency"] == 12345678 and got["error_rate"] == 0.0125, "JSON keeps the raw values"


def test_run_says_when_the_rows_end_and_an_empty_result_names_its_window(many_rows_db: str,
                                                                        tmp_path: Path) -> None:
    import re

    script = tmp_path / "s.pxl"
    script.write_text("import px\n"
                      "px.display(px.DataFrame('http_events', start_time='-5s')[['service', 'latency']], 'recent')\n"
                      "px.display(px.DataFrame('http_events', start_time='-1h')[['service', 'latency']], 'hour')\n")
    proc = cli("run", str(script), "--db", many_rows_db)
    assert proc.returncode == 0, proc.stderr
    m = re.search(r"rows end (\d+) s ago", proc.stdout)
    assert m and int(m.group(1)) >= 30, proc.stdout[:400]  # the newest row was made 30 s before the run
    assert "no tracer running" in proc.stdout
    assert "recent: no rows (last 5s)" in proc.stdout, proc.stdout
    assert "hour (120 rows, last 1h)" in proc.stdout
    proc = cli("run", str(script), "--db", many_rows_db, "-o", "json")
    assert json.loads(proc.stdout)["recent"] == [] and "rows end" in proc.stderr, "the header is not in the JSON"


def test_same_default_window_for_report_watch_and_the_shipped_scripts() -> None:
    import inspect

    from apptrace.cli import build_parser
    from apptrace.common.units import parse_window
    from apptrace.query import scripts
    from apptrace.query.rules import DEFAULT_WINDOW

    report = build_parser().parse_args(["report"])
    assert parse_window(report.since) == parse_window(DEFAULT_WINDOW)
    assert f"default {DEFAULT_WINDOW}" in cli("watch", "--help").stdout.replace("\n", " ").replace("  ", " ")
    for name, path in scripts.shipped_scripts().items():
        namespace: dict = {}
        exec(compile(path.read_text(), name, "exec"), {"px": __import__("apptrace.query.px").query.px}, namespace)
        start = inspect.signature(namespace["main"]).parameters["start_time"].default
        assert parse_window(start) == parse_window(DEFAULT_WINDOW), (name, start)
        assert f"start_time (default -{DEFAULT_WINDOW}" in path.read_text(), name


def test_a_px_folder_where_a_script_runs_does_not_replace_the_shipped_px(many_rows_db: str, tmp_path: Path) -> None:
    import os

    here = tmp_path / "work"
    (here / "px").mkdir(parents=True)
    (here / "px" / "__init__.py").write_text("raise SystemExit('the px folder of the current directory ran')\n")
    (here / "s.pxl").write_text("import px\npx.display(px.DataFrame('http_events')[['service']].head(2), 'x')\n")
    apptrace = os.path.join(os.path.dirname(sys.executable), "apptrace")
    for argv in ([sys.executable, "-m", "apptrace.cli"], [apptrace]):
        for script in ("./s.pxl", "http_stats"):
            proc = subprocess.run([*argv, "run", script, "--db", many_rows_db, "-o", "json"], cwd=here,
                                  capture_output=True, text=True, timeout=120,
                                  env={**os.environ, "PYTHONPATH": str(here)})
            assert proc.returncode == 0, (argv, script, proc.stderr)
            assert "px folder" not in proc.stderr


def test_a_px_already_imported_from_elsewhere_does_not_reach_the_script(many_rows_db: str, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A Python session that imported a px/ folder of its directory, then runs a script: the script gets the
    shipped px, and the session keeps its own afterwards."""
    from apptrace.query.scripts import run_script

    (tmp_path / "px").mkdir()
    (tmp_path / "px" / "__init__.py").write_text("NOT_APPTRACE = True\n")
    (tmp_path / "s.pxl").write_text("import px\npx.display(px.DataFrame('http_events')[['service']].head(2), 'x')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "px", raising=False)
    import px  # the folder's

    assert getattr(px, "NOT_APPTRACE", False)
    outputs = run_script("./s.pxl", many_rows_db)
    assert [name for name, _ in outputs] == ["x"] and len(outputs[0][1]) == 2
    assert sys.modules["px"] is px
