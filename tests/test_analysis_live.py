"""The capture/analysis split, live: a stalled, capped, killed or orphaned analysis process.

Analysis runs in a child of ``apptrace trace`` and follows the on-disk spool. These tests
stop it with SIGSTOP (standing in for a CPU it cannot get), kill it, or kill its parent,
and check that no completed request is lost and every loss is counted.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from apptrace.analysis import cpugroup
from apptrace.contract.spool import segments_bytes as spool_bytes
from tests.conftest import APPTRACE, ROOT, read
from tests.test_capture import curl

pytestmark = pytest.mark.ebpf


@contextlib.contextmanager
def spinning(count: int | None = None, *, prefix: tuple[str, ...] = (),
             new_session: bool = False) -> Iterator[list[subprocess.Popen]]:
    """Busy loops, one per CPU unless ``count`` says otherwise, killed on the way out."""
    procs = [subprocess.Popen([*prefix, "python3", "-c", "while True: pass"], start_new_session=new_session)
             for _ in range(count or os.cpu_count() or 2)]
    try:
        yield procs
    finally:
        for p in procs:
            p.kill()
            p.wait()


def analysis_pid(tracer_pid: int) -> int:
    with open(f"/proc/{tracer_pid}/task/{tracer_pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"apptrace.analysis.loop" in f.read():
                return pid
    raise AssertionError(f"no analysis process among the children of {tracer_pid}: {children}")


def test_stalled_analysis_catches_up_and_loses_nothing(tracer, https_server):
    srv = https_server()
    t = tracer("--pid", str(srv.pid))
    spool = t.db + ".spool"
    child = analysis_pid(t.proc.pid)
    assert os.sched_getscheduler(child) == os.SCHED_IDLE, "analysis runs under SCHED_IDLE"
    group = f"{cpugroup.cpu_cgroup_dir()}/{cpugroup.PREFIX}{child}"
    assert f"{cpugroup.PREFIX}{child}\n" in open(f"/proc/{child}/cgroup").read(), "... in its idle cpu cgroup"
    assert open(f"{group}/cpu.idle").read().strip() == "1"
    os.kill(child, signal.SIGSTOP)
    try:
        empty = spool_bytes(spool)
        curl(srv.port, "/hello?i=[1-300]", "-o", "/dev/null")
        deadline = time.monotonic() + 30
        while spool_bytes(spool) < empty + 300 * 100 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert spool_bytes(spool) >= empty + 300 * 100, "capture kept writing the spool while analysis was stopped"
    finally:
        os.kill(child, signal.SIGCONT)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    got = read(t.db, f"SELECT req_path, resp_status FROM http_events WHERE pid = {srv.pid} ORDER BY time_")
    assert got == [(f"/hello?i={i}", 200) for i in range(1, 301)]
    assert "lost_events=0" in cap.stderr and "backlog_dropped_events=0" in cap.stderr
    assert not os.path.exists(spool), "a fully analysed spool is removed"
    assert not os.path.exists(group), "... and the idle cpu cgroup"
    stats = read(t.db, "SELECT max(backlog_bytes), sum(backlog_dropped_events) FROM capture_stats")
    assert stats[0][0] is not None and stats[0][1] == 0  # the gauge is sampled once a second: often 0 by then


def test_past_spool_max_data_is_dropped_counted_and_still_in_the_raw_file(tracer, https_server):
    srv = https_server()
    t = tracer("--pid", str(srv.pid), "--spool-max", "1")
    time.sleep(1.5)  # the cap is checked once a second; the spool's first header already exceeds 1 byte
    for _ in range(5):
        curl(srv.port, "/hello")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert "at the --spool-max cap" in cap.stderr
    dropped = int(cap.stderr.split("backlog_dropped_events=")[1].split(",")[0])
    assert dropped >= 10, cap.stderr  # a request and a response per curl, at least
    assert read(t.db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") == [(0,)]
    assert read(t.db, "SELECT sum(backlog_dropped_events) FROM capture_stats") == [(dropped,)]
    # --raw is not analysis: it keeps every record regardless of the spool.
    assert sum(1 for r in cap.rows["http_events"] if r["pid"] == srv.pid) == 5


def test_an_analysis_killed_again_and_again_stops_capture_and_the_next_tracer_finishes_its_spool(
        tracer, https_server):
    from apptrace.analysis.process import MAX_RESTARTS

    srv = https_server()
    t = tracer("--pid", str(srv.pid))
    spool = t.db + ".spool"
    child = analysis_pid(t.proc.pid)
    os.kill(child, signal.SIGSTOP)
    for _ in range(3):
        curl(srv.port, "/hello")
    time.sleep(0.3)
    for kill in range(MAX_RESTARTS + 1):
        os.kill(child, signal.SIGKILL)
        if kill == MAX_RESTARTS:
            break
        deadline = time.monotonic() + 60
        while sum("restarted it" in line for line in t.lines) <= kill and time.monotonic() < deadline:
            time.sleep(0.1)
        child = analysis_pid(t.proc.pid)
    rc = t.proc.wait(timeout=60)
    t._reader.join(timeout=10)
    err = "".join(t.lines)
    assert rc == 1, err
    assert f"analysis process exited with code -9, after {MAX_RESTARTS} restarts" in err and spool in err, err
    assert glob.glob(os.path.join(spool, "*.raw")), "the spool is kept"
    again = tracer("--pid", str(srv.pid))
    cap = again.stop()
    assert cap.returncode == 0, cap.stderr
    assert read(t.db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") == [(3,)]


def test_orphaned_analysis_finishes_and_closes_the_db(tracer, https_server):
    srv = https_server()
    t = tracer("--pid", str(srv.pid))
    child = analysis_pid(t.proc.pid)
    for _ in range(3):
        curl(srv.port, "/hello")
    time.sleep(0.5)
    t.proc.kill()  # SIGKILL: no END marker; the kernel detaches the probes with the process's fds
    t.proc.wait()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}"), "analysis noticed its parent died and exited"
    assert read(t.db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") == [(3,)]


def test_analysis_yields_to_a_saturated_machine_then_finishes_at_stop(tracer, https_server):
    srv = https_server()
    with spinning():
        t = tracer("--pid", str(srv.pid), "--analysis-yield-above", "50")
        time.sleep(2.5)  # a tick or two: analysis sees the CPUs busy with others and pauses
        for _ in range(20):
            curl(srv.port, "/hello")
        time.sleep(2)
        live = subprocess.run([*APPTRACE, "sql", "--db", t.db, "--format", "csv",
                               f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert live.returncode == 0, live.stderr
        assert live.stdout.split()[-1] == "0", "analysis parsed while the machine was saturated"
        assert spool_bytes(t.db + ".spool") > 20 * 100, "capture kept spooling"
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert read(t.db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") == [(20,)]


def test_a_query_runs_above_an_idle_analysis_then_it_goes_back():
    """The query server enters while_serving around each query: the idle analysis process leaves its idle
    group for nice 10 while someone waits on an answer (under two busy loops an `apptrace sql` took ~100 s
    at idle priority), and returns to SCHED_IDLE in its idle group when the last query ends."""
    from apptrace.analysis.priority import QUERY_PRIORITY, set_priority, while_serving

    child = subprocess.Popen(["python3", "-c", "import time; time.sleep(60)"])
    try:
        set_priority(child.pid, "idle")

        def state() -> tuple[int, int, bool]:
            in_group = f"{cpugroup.PREFIX}{child.pid}" in open(f"/proc/{child.pid}/cgroup").read()
            return os.sched_getscheduler(child.pid), os.getpriority(os.PRIO_PROCESS, child.pid), in_group

        assert state()[0] == os.SCHED_IDLE and state()[2]
        serving = while_serving(child.pid, "idle")
        with serving():
            with serving():  # two queries at once: the first to end leaves the other its priority
                pass
            assert state() == (os.SCHED_OTHER, int(QUERY_PRIORITY), False)
        assert state()[0] == os.SCHED_IDLE and state()[2], "back to idle once no query runs"
    finally:
        child.kill()
        child.wait()
        cpugroup.remove(child.pid)


def test_busy_gauge_leaves_out_our_own_cpu():
    from apptrace.analysis.priority import BusyGauge

    gauge = BusyGauge()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        pass  # this process keeps one CPU busy: not "others"
    own_only = gauge.others_busy()
    with spinning():
        time.sleep(1.0)
        gauge.others_busy()
        time.sleep(1.0)
        others = gauge.others_busy()
    assert others > 0.8, others
    assert own_only < others - 0.3, (own_only, others)


def test_busy_gauge_counts_niced_work_as_idle():
    """Batch work at nice 19 is not a workload analysis should pause for."""
    from apptrace.analysis.priority import BusyGauge

    def busy_over(seconds: float) -> float:
        gauge = BusyGauge()
        time.sleep(seconds)
        return gauge.others_busy()

    # Compared with the machine's own load just before and after, not with 0: other test runs on a
    # shared machine are real work the gauge must count (this failed at 0.6 with them, niced or not).
    before = busy_over(1.0)
    with spinning(prefix=("nice", "-n", "19")):
        time.sleep(0.5)
        niced = busy_over(1.0)
    after = busy_over(1.0)
    with spinning():
        time.sleep(0.5)
        unniced = busy_over(1.0)
    assert unniced > 0.8, unniced  # the same loops at nice 0 fill the CPUs
    assert niced < (before + after) / 2 + 0.25, (before, niced, after)


def test_auto_yield_leaves_analysis_a_whole_cpu():
    from apptrace.analysis.priority import auto_yield_above

    assert auto_yield_above(1) == auto_yield_above(2) == 0.5
    assert auto_yield_above(4) == 0.75
    assert auto_yield_above(64) == 63 / 64


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_idle_cpu_group_gives_way_to_busy_programs_in_other_sessions():
    """SCHED_IDLE alone only ranks threads within a session's autogroup; the idle cgroup ranks across them."""
    try:
        with spinning(1) as (idle,):
            assert cpugroup.join(idle.pid), "this kernel offers idle cpu cgroups (cpu.idle, Linux 5.15+)"
            with spinning(new_session=True) as others:
                time.sleep(0.5)
                before = [_cpu_ticks(p.pid) for p in (idle, *others)]
                time.sleep(2.0)
                used = [_cpu_ticks(p.pid) - b for p, b in zip((idle, *others), before, strict=True)]
            assert used[0] * 10 < min(used[1:]), used
    finally:
        # Once the others stop: a killed task still needs the CPU to finish exiting.
        cpugroup.remove(idle.pid)
    assert not os.path.exists(f"{cpugroup.cpu_cgroup_dir()}/{cpugroup.PREFIX}{idle.pid}")
