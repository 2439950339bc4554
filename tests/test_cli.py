"""Bad command lines are refused before anything is attached: one line naming the option as typed, exit 2."""

from __future__ import annotations

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
