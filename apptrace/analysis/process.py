"""The capture process's handle on its analysis child (``python -m apptrace.analysis.loop``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

from apptrace.analysis import cpugroup
from apptrace.analysis.config import AnalysisConfig, AnalysisSummary, Status
from apptrace.analysis.priority import set_priority


class Analysis:
    """Starts the analysis process, waits for it to be ready, and collects its summary at the end."""

    def __init__(self, cfg: AnalysisConfig) -> None:
        self.cfg = cfg
        r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-m", "apptrace.analysis.loop", str(w)], pass_fds=(w,),
                                     stdin=subprocess.PIPE, text=True)
        os.close(w)
        assert self.proc.stdin is not None
        # The configuration goes on stdin: on the command line every user could read it in ps.
        self.proc.stdin.write(cfg.to_json())
        self.proc.stdin.close()
        self._status = os.fdopen(r, "r")
        self.summary = AnalysisSummary()
        self.ready = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def exit_code(self) -> int | None:
        return self.proc.returncode

    def _next(self) -> Status | None:
        line = self._status.readline()
        return Status.from_line(line) if line else None

    def wait_ready(self) -> str | None:
        """None once the analysis process has opened the DB; otherwise why it could not."""
        msg = self._next()
        if msg is None:
            self.proc.wait()
            return f"the analysis process exited with code {self.proc.returncode} before it was ready"
        self.ready = msg.ready
        return msg.error

    def alive(self) -> bool:
        return self.proc.poll() is None

    def finish(self, log: Callable[[str], None]) -> AnalysisSummary:
        """The spool is complete: let analysis catch up at full priority and collect its summary."""
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
            while True:
                try:
                    self.proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    if not announced and not stop_now:
                        log(f"apptrace: analysing the backlog in {self.cfg.spool} (Ctrl-C again to stop and "
                            "keep it for 'apptrace replay')")
                        announced = True
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        while (msg := self._next()) is not None:
            if msg.summary is not None:
                self.summary = msg.summary
        self._status.close()
        cpugroup.remove(self.proc.pid)
        return self.summary

    def kill(self) -> None:
        if self.alive():
            cpugroup.leave(self.proc.pid)  # out of the idle group first: exiting needs the CPU too
            self.proc.kill()
            self.proc.wait()
        cpugroup.remove(self.proc.pid)
