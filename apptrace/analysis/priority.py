"""How the analysis process shares the CPU with the programs it traces.

Parsing and storing cost tens of µs per record, capture a few: on a busy machine analysis must come
last. It runs under SCHED_IDLE in an idle cpu cgroup (``cpugroup``), and it also pauses while the
others keep the CPUs busy (``BusyGauge``), within a bound on the backlog it lets grow.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

from apptrace.analysis import cpugroup

DEFAULT_PRIORITY = "idle"
QUERY_PRIORITY = "10"  # a query's answer is awaited: above an idle analysis, below the traced programs


def auto_yield_above(cpus: int | None = None) -> float:
    """Pause unless the others leave a whole CPU idle (never below half the machine busy).

    Analysis needs a core to itself: in the scattered idle moments of a saturated server it
    still costs the server its wake-ups and caches. A whole idle core exists on a big machine
    running a small workload (analysis runs live) and not on a small one the workload fills.
    """
    n = cpus or len(os.sched_getaffinity(0))
    return max(0.5, (n - 1) / n)



def parse_priority(text: str) -> str:
    """``idle`` or a nice value 0-19; raises ValueError otherwise."""
    if text == "idle" or (text.isdigit() and 0 <= int(text) <= 19):
        return text
    raise ValueError(f"analysis priority must be 'idle' or a nice value 0-19, not {text!r}")


def set_priority(pid: int, priority: str) -> None:
    """Apply ``priority`` to every thread of ``pid``: Linux schedules threads, not processes.

    SCHED_IDLE rather than nice 19: a woken nice-0 task preempts a SCHED_IDLE one at once,
    while under EEVDF a nice-19 task on the CPU may finish its slice first. Measured with
    bench_overhead.py on nghttpd, nice 19 cost the traced server a quarter of its throughput
    beyond capture alone; SCHED_IDLE does not. SCHED_IDLE only ranks threads within their
    group, so "idle" also moves the process into an idle cpu cgroup (see cpugroup).
    """
    if priority == "idle":
        cpugroup.join(pid)
    else:
        cpugroup.leave(pid)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        return
    for tid in tids:
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
                os.setpriority(os.PRIO_PROCESS, tid, int(priority))
        except (ProcessLookupError, PermissionError):
            pass  # the thread ended, or we may not raise it: it keeps what it had



class BusyGauge:
    """How busy the CPUs were since the last look, not counting this process or niced work.

    SCHED_IDLE already gives the CPU to anything else that wants it, but running in the
    gaps of a saturated server still costs it (preemptions, caches; on this VM, bench_overhead
    measured it). So while others keep the machine saturated, analysis waits, bounded by
    the backlog it lets build up.
    """

    def __init__(self) -> None:
        self._last = self._sample()

    @staticmethod
    def _sample() -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
        # Niced time counts as idle: batch work that asked to come last is not a workload to
        # protect. Our own user time is in that column already when we run niced.
        own_busy = int(own[12]) + (int(own[11]) if os.getpriority(os.PRIO_PROCESS, 0) <= 0 else 0)
        return sum(cpu), cpu[1] + cpu[3] + cpu[4], own_busy  # all threads

    def others_busy(self) -> float:
        total, idle, own = self._sample()
        last_total, last_idle, last_own = self._last
        self._last = (total, idle, own)
        elapsed = total - last_total
        if elapsed <= 0:
            return 0.0
        return max(0.0, (elapsed - (idle - last_idle) - (own - last_own)) / elapsed)


DEFAULT_YIELD_ABOVE = auto_yield_above()


def while_serving(pid: int, priority: str) -> Callable[[], AbstractContextManager[object]]:
    """What the query server enters around each query: ``pid`` at nice QUERY_PRIORITY for as long as a
    query runs, then back to ``priority``.

    Someone waits on a query (``apptrace sql``, a script, ``watch``). At an idle analysis's priority a
    query on a saturated machine got the CPU ~100 s later (2 busy loops on 2 CPUs); analysis itself
    still pauses for the load (its BusyGauge), whatever the priority. A priority already at or above
    the query's is left alone.
    """
    if priority != "idle" and int(priority) <= int(QUERY_PRIORITY):
        return contextlib.nullcontext
    lock = threading.Lock()
    running = [0]

    @contextlib.contextmanager
    def serving() -> Iterator[None]:
        with lock:
            running[0] += 1
            if running[0] == 1:
                set_priority(pid, QUERY_PRIORITY)
        try:
            yield
        finally:
            with lock:
                running[0] -= 1
                if running[0] == 0:
                    set_priority(pid, priority)

    return serving
