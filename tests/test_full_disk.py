"""A full disk under the spool or under the DB: both processes keep running, new data is dropped and counted
(capture_stats, a line on stderr, the summary), the exit status is 0, and when space returns capture and storing
resume.

Each test mounts a real 16 MiB tmpfs (unmounted on the way out), fills it with a real file while the tracer
runs, makes requests, then deletes the file.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import read
from tests.test_capture import curl
from tests.test_recovery import BUSY_OK, _live_count, _wait

pytestmark = pytest.mark.ebpf


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path) -> Path:
    """Write a file until the filesystem has no room left."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (1 << 20, 64 << 10, 4 << 10):
            block = b"\0" * size
            try:
                while True:
                    f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


def _said(t, text: str) -> bool:
    return any(text in line for line in t.lines)


def _server_rows(db: str, port: int, batch: str) -> list[str]:
    return [p for (p,) in read(db, f"SELECT req_path FROM http_events WHERE local_port = {port} "
                                   f"AND req_path LIKE '/hello?b={batch}&%'")]


def _summary_count(stderr: str, name: str) -> int:
    return int(stderr.split(f"{name}=")[1].split(",")[0])


def test_a_full_spool_disk_drops_and_counts_then_capture_resumes(tracer, https_server, small_fs):
    srv = https_server()
    t = tracer("--pid", str(srv.pid), "--spool", str(small_fs / "spool"), *BUSY_OK)
    curl(srv.port, "/hello?b=1&i=[1-50]", "-o", "/dev/null")
    _wait("batch 1 stored", lambda: _live_count(t.db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") >= 50)
    filler = fill(small_fs)
    curl(srv.port, "/hello?b=2&i=[1-100]", "-o", "/dev/null")
    _wait("no room said", lambda: _said(t, "no room left for the spool"))
    assert t.proc.poll() is None, "capture keeps running"
    filler.unlink()
    _wait("room again said", lambda: _said(t, "room again for the spool"))
    curl(srv.port, "/hello?b=3&i=[1-50]", "-o", "/dev/null")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert sorted(_server_rows(t.db, srv.port, "1")) == sorted(f"/hello?b=1&i={i}" for i in range(1, 51))
    assert sorted(_server_rows(t.db, srv.port, "3")) == sorted(f"/hello?b=3&i={i}" for i in range(1, 51))
    kept = len(_server_rows(t.db, srv.port, "2"))
    assert kept < 100, "batch 2 came while the spool's disk was full"
    dropped = _summary_count(cap.stderr, "disk_full_dropped_events")
    assert dropped >= 2 * (100 - kept), cap.stderr  # a request and a response record per request lost, at least
    print(f"spool disk full: batch 2 {kept} of 100 rows kept, disk_full_dropped_events={dropped}")  # for the README
    assert read(t.db, "SELECT sum(disk_full_dropped_events) FROM capture_stats") == [(dropped,)]
    assert read(t.db, "SELECT sum(disk_full_dropped_rows) FROM capture_stats") == [(0,)]


def test_a_full_db_disk_drops_and_counts_rows_then_storing_resumes(tracer, https_server, small_fs, tmp_path):
    srv = https_server()
    db = str(small_fs / "trace.duckdb")
    t = tracer("--pid", str(srv.pid), "--db", db, "--spool", str(tmp_path / "spool"), *BUSY_OK)
    t.db = db
    curl(srv.port, "/hello?b=1&i=[1-50]", "-o", "/dev/null")
    _wait("batch 1 stored", lambda: _live_count(db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") >= 50)
    filler = fill(small_fs)
    curl(srv.port, "/hello?b=2&i=[1-100]", "-o", "/dev/null")
    _wait("no room said", lambda: _said(t, f"no room left for {db}"))
    assert t.proc.poll() is None, "capture and analysis keep running"
    filler.unlink()
    _wait("room again said", lambda: _said(t, f"room again for {db}"))
    curl(srv.port, "/hello?b=3&i=[1-50]", "-o", "/dev/null")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert sorted(_server_rows(db, srv.port, "1")) == sorted(f"/hello?b=1&i={i}" for i in range(1, 51))
    assert sorted(_server_rows(db, srv.port, "3")) == sorted(f"/hello?b=3&i={i}" for i in range(1, 51))
    kept = len(_server_rows(db, srv.port, "2"))
    dropped = _summary_count(cap.stderr, "disk_full_dropped_rows")
    assert kept < 100 and dropped == 100 - kept, (kept, dropped, cap.stderr)
    print(f"DB disk full: batch 2 {kept} of 100 rows kept, disk_full_dropped_rows={dropped}")  # for the README
    assert read(db, "SELECT sum(disk_full_dropped_rows) FROM capture_stats") == [(dropped,)]
    assert not os.path.exists(str(tmp_path / "spool")), "the spool was analysed whole and removed"
