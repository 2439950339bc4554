"""trace's status line, live: on a log (a line every 10 s) and on a terminal (redrawn in place), with the
analysis process stopped so that a backlog and a lag are there to report."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import time

import pytest

from apptrace.analysis.config import Progress
from apptrace.cli.status_line import StatusLine, analysis_lag_s
from tests.conftest import APPTRACE, ROOT
from tests.test_analysis_live import analysis_pid
from tests.test_capture import curl

pytestmark = pytest.mark.ebpf

STATUS = re.compile(r"apptrace: (\S+) events · (\S+) rows · backlog (\S+ \S+) · lag (\S+) s · lost (\d+)")


def _start(args: list[str], **kw) -> subprocess.Popen:
    return subprocess.Popen([*APPTRACE, "trace", *args], cwd=ROOT, **kw)


def _wait_for(read_more, pattern: str, timeout: float = 60) -> str:
    seen = ""
    deadline = time.monotonic() + timeout
    while pattern not in seen and time.monotonic() < deadline:
        seen += read_more()
    assert pattern in seen, seen
    return seen


def test_status_line_on_a_log_reports_backlog_lag_and_rows(ebpf, https_server, tmp_path):  # noqa: ARG001
    srv = https_server()
    db = str(tmp_path / "s.duckdb")
    p = _start(["--pid", str(srv.pid), "--db", db], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    fd = p.stderr.fileno()
    try:

        def more() -> str:
            ready, _, _ = select.select([fd], [], [], 0.5)
            return os.read(fd, 65536).decode() if ready else ""

        err = _wait_for(more, "apptrace: tracing")
        child = analysis_pid(p.pid)
        os.kill(child, signal.SIGSTOP)  # analysis falls behind: a backlog, and a lag
        try:
            curl(srv.port, "/hello?i=[1-50]", "-o", "/dev/null")
            # lines come every 10 s: wait for one that saw the stall (the first may come before it)
            deadline = time.monotonic() + 120
            stalled = []
            while not stalled and time.monotonic() < deadline:
                err += more()
                stalled = [m for m in STATUS.finditer(err) if m.group(3) != "0 B" and float(m.group(4)) > 0]
        finally:
            os.kill(child, signal.SIGCONT)
        assert stalled, err  # backlog and lag, said
        assert stalled[0].group(2) == "0/s", err  # analysis stopped: no rows
        assert stalled[0].group(5) == "0", err
        # once analysis runs again it catches up: rows, then no lag
        err += _wait_for(more, "lag 0.0 s", timeout=300)  # SCHED_IDLE analysis: slow on a busy machine
        p.send_signal(signal.SIGINT)
        p.wait(timeout=60)
        err += p.stderr.read().decode()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    lines = err.splitlines()
    assert any(line.startswith("apptrace: losses:") for line in lines), err
    assert "\x1b[K" not in err  # a log gets whole lines, no terminal codes


def test_status_line_on_a_terminal_is_redrawn_in_place(ebpf, https_server, tmp_path):  # noqa: ARG001
    srv = https_server()
    db = str(tmp_path / "t.duckdb")
    master, slave = pty.openpty()
    p = _start(["--pid", str(srv.pid), "--db", db, "--duration", "4"], stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    try:
        deadline = time.monotonic() + 90
        sent = False
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the tracer is gone and the terminal with it
                    break
                if not chunk:
                    break
                out += chunk
            if not sent and b"apptrace: tracing" in out:
                curl(srv.port, "/hello?i=[1-3]", "-o", "/dev/null")
                sent = True
        p.wait(timeout=60)
    finally:
        os.close(master)
        if p.poll() is None:
            p.kill()
            p.wait()
    text = out.decode(errors="replace")
    redraws = text.count("\r\x1b[Kapptrace: ")
    assert redraws >= 2, text  # one line, redrawn each second
    assert STATUS.search(text), text
    assert "GET /hello?i=1" in text  # the rows, printed on the same terminal
    summary = text.index("apptrace: losses:")
    assert "\r\x1b[K" in text[:summary]  # the status line was cleared before the summary


def test_draining_and_paused_lines():
    line = StatusLine(stream=open(os.devnull, "w"), tty=False)
    line.every_s = 0
    out: list[str] = []
    line._write = out.append  # the line's text, not the stream: the format is what is checked here
    line.draining(Progress(records=10, backlog_bytes=4 << 20))
    line.draining(Progress(records=900, backlog_bytes=1 << 20))
    line.draining(Progress(records=1200, backlog_bytes=0))
    assert out == ["apptrace: analysing the backlog: 4.0 MiB left (0% done), 10 rows so far",
                   "apptrace: analysing the backlog: 1.0 MiB left (75% done), 900 rows so far",
                   "apptrace: analysing the backlog: 0 B left (100% done), 1200 rows so far"]
    now = time.monotonic_ns()
    assert analysis_lag_s(Progress(backlog_bytes=100, last_event_ns=now - 22 * 10**9), now) == 22.0
    assert analysis_lag_s(Progress(backlog_bytes=0, last_event_ns=now - 22 * 10**9), now) == 0.0
    assert analysis_lag_s(None, now) is None
