"""The capture process's handle on its analysis child (``python -m apptrace.analysis.loop``)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable

from apptrace.analysis import cpugroup
from apptrace.analysis.config import AnalysisConfig, AnalysisSummary, Progress, Status
from apptrace.analysis.priority import set_priority

#: restarts after the analysis process is killed (a signal, the OOM killer) before capture stops instead
MAX_RESTARTS = 5


class Analysis:
    """Starts the analysis process, waits for it to be ready, restarts it if it is killed, and collects its
    summary at the end."""

    def __init__(self, cfg: AnalysisConfig, keep_fds: tuple[int, ...] = ()) -> None:
        self.cfg = cfg
        self.keep_fds = keep_fds  # the spool's lock: an orphaned analysis still holds it
        self.restarts = 0
        self.summary = AnalysisSummary()
        self.progress: Progress | None = None  # the latest, for the status line
        self._start()

    def _start(self) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "apptrace.analysis.loop", str(w)],
                                     pass_fds=(w, *self.keep_fds), stdin=subprocess.PIPE, text=True)
        os.close(w)
        assert self.proc.stdin is not None
        # The configuration goes on stdin: on the command line every user could read it in ps.
        self.proc.stdin.write(self.cfg.to_json())
        self.proc.stdin.close()
        self._status_fd = r
        self._unread = b""  # status bytes read but not yet a whole line
        self._eof = False
        self.progress_at = time.monotonic()  # when progress came (or when analysis started)
        self.ready = False

    def restart(self) -> str | None:
        """The process died before capture stopped: start another, which goes on from the last commit.

        Only for a kill (a signal): an analysis that exited by itself said why, and would again. Returns
        None when restarted, else why not.
        """
        code = self.proc.returncode
        why = f"the analysis process exited with code {code}"
        if code is None or code >= 0:
            return why
        if self.restarts >= MAX_RESTARTS:
            return f"{why}, after {self.restarts} restarts"
        os.close(self._status_fd)
        cpugroup.remove(self.proc.pid)
        self.restarts += 1
        self._start()
        return None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return self.proc.returncode

    def _read_line(self, timeout: float | None) -> bytes | None:
        """One status line, waiting up to ``timeout`` seconds for it (None: until it comes or the pipe ends)."""
        while b"\n" not in self._unread:
            if self._eof:
                return None
            ready, _, _ = select.select([self._status_fd], [], [], timeout)
            if not ready:
                return None
            chunk = os.read(self._status_fd, 65536)
            if not chunk:
                self._eof = True
                return None
            self._unread += chunk
        line, _, self._unread = self._unread.partition(b"\n")
        return line

    def _next(self) -> Status | None:
        line = self._read_line(None)
        return self._take(Status.from_line(line.decode())) if line is not None else None

    def _take(self, msg: Status) -> Status:
        if msg.progress is not None:
            self.progress = msg.progress
            self.progress_at = time.monotonic()
        if msg.summary is not None:
            self.summary = msg.summary
        return msg

    def poll(self) -> Progress | None:
        """Read the status lines that have come, without waiting; the latest progress."""
        while (line := self._read_line(0)) is not None:
            self._take(Status.from_line(line.decode()))
        return self.progress

    def wait_ready(self) -> str | None:
        """None once the analysis process has opened the DB; otherwise why it could not."""
        msg = self._next()
        while msg is not None and msg.progress is not None:
            msg = self._next()
        if msg is None:
            self.proc.wait()
            return f"the analysis process exited with code {self.proc.returncode} before it was ready"
        self.ready = msg.ready
        return msg.error

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, log: Callable[[str], None],
               on_progress: Callable[[Progress], None] | None = None) -> AnalysisSummary:
        """The spool is complete: let analysis catch up at full priority and collect its summary.
        ``on_progress`` hears how the backlog drains, about once a second."""
        if self.alive() and not self.ready and self.restarts:
            self.wait_ready()  # a restarted one: its SIGUSR1 handler is installed once it says ready
        if self.alive():
            set_priority(self.proc.pid, "0")
            if self.ready:  # its handler is installed by then; before, SIGUSR1 would kill it
                self.proc.send_signal(signal.SIGUSR1)  # and stop yielding to the (stopped) workload
        stop_now = False

        def abandon(*_: object) -> None:
            nonlocal stop_now
            stop_now = True
            if self.alive():
                self.proc.send_signal(signal.SIGTERM)

        previous = {s: signal.signal(s, abandon) for s in (signal.SIGINT, signal.SIGTERM)}
        # The terminal closing while the backlog is analysed is no reason to abandon it.
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, signal.SIG_IGN)
        try:
            announced = False
            waited = 0.0
            while True:
                try:
                    self.proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    waited += 0.5
                    progress = self.poll()
                    if waited >= 2 and not announced and not stop_now:
                        log(f"apptrace: analysing the backlog in {self.cfg.spool} (Ctrl-C again to stop; the "
                            "next 'apptrace trace' on this DB goes on from where it stopped)")
                        announced = True
                    if announced and progress is not None and on_progress is not None and not stop_now:
                        on_progress(progress)
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        while self._next() is not None:
            pass
        os.close(self._status_fd)
        cpugroup.remove(self.proc.pid)
        return self.summary

    def kill(self) -> None:
        if self.alive():
            cpugroup.leave(self.proc.pid)  # out of the idle group first: exiting needs the CPU too
            self.proc.kill()
            self.proc.wait()
        cpugroup.remove(self.proc.pid)
