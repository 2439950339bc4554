"""trace's status line on stderr: what the tracer is doing while it runs.

On a terminal it is one line redrawn in place every second (rows printed on stdout take its place and it is
drawn again below them); otherwise, for a log, one line every ten seconds. It says events/s captured, rows/s
stored, the spool backlog and how far analysis is behind in seconds, and the losses so far; when analysis has
paused for the load, it says so. After the first Ctrl-C it shows the backlog draining.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from apptrace.analysis.config import Progress
from apptrace.capture.tracer import Tracer

CLEAR = "\r\x1b[K"
TTY_EVERY_S = 1.0
LOG_EVERY_S = 10.0


def fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def fmt_rate(per_s: float) -> str:
    return f"{per_s / 1000:.1f}k/s" if per_s >= 10_000 else f"{per_s:.0f}/s"


#: analysis reports once a second; a report older than this means it is not moving (stopped, starved)
STALE_S = 3.0


def analysis_lag_s(progress: Progress | None, now_ns: int) -> float | None:
    """How old the newest analysed event is, when analysis has a backlog; 0 when it has caught up."""
    if progress is None:
        return None
    if progress.backlog_bytes == 0 or progress.last_event_ns == 0:
        return 0.0
    return max(0.0, (now_ns - progress.last_event_ns) / 1e9)


def backlog_and_lag(tracer: Tracer, progress: Progress | None, now: float) -> tuple[int, float | None]:
    """The spool backlog (bytes) and analysis lag (s). From analysis's own report while it comes in; when it has
    stopped coming, from capture's view of the spool, and the lag is at least the time analysis has not moved."""
    since = now - getattr(tracer.analysis, "progress_at", now)
    if progress is not None and since < STALE_S:
        return progress.backlog_bytes, analysis_lag_s(progress, time.monotonic_ns())
    return tracer.spool_backlog, since


class StatusLine:
    def __init__(self, stream: TextIO | None = None, tty: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s = TTY_EVERY_S if self.tty else LOG_EVERY_S
        self._last_t: float | None = None
        self._last_events = 0
        self._last_records = 0
        self._next_t = 0.0
        self._drain_from: int | None = None
        self.shown = False

    def _write(self, text: str) -> None:
        try:
            if self.tty:
                self.stream.write(CLEAR + text)
            else:
                self.stream.write(text + "\n")
            self.stream.flush()
            self.shown = self.tty
        except OSError:  # the terminal closed (SIGHUP): nobody to tell
            pass

    def say(self, line: str) -> None:
        """A line of its own (a log message), above the status line."""
        try:
            self.stream.write((CLEAR if self.shown else "") + line + "\n")
            self.stream.flush()
            self.shown = False
        except OSError:
            pass

    def clear(self) -> None:
        """Before other lines (the summary): a terminal's status line goes, a log's stays."""
        if self.shown:
            self._write("")
            self.shown = False

    def tick(self, tracer: Tracer) -> None:
        """Called by the tracer about once a second."""
        now = time.monotonic()
        if now < self._next_t:
            return
        self._next_t = now + self.every_s
        progress = getattr(tracer.analysis, "poll", lambda: None)()
        self._write(self.line(tracer, progress, now))

    def line(self, tracer: Tracer, progress: Progress | None, now: float) -> str:
        events = tracer.summary.events
        records = progress.records if progress is not None else 0
        span = (now - self._last_t) if self._last_t is not None else None
        ev_rate = (events - self._last_events) / span if span else 0.0
        row_rate = (records - self._last_records) / span if span else 0.0
        self._last_t, self._last_events, self._last_records = now, events, records
        losses = tracer.last_losses
        lost = losses.lost_events + losses.backlog_dropped_events
        parts = [f"{fmt_rate(ev_rate)} events", f"{fmt_rate(row_rate)} rows"]
        if tracer.analysis is not None:
            backlog, lag = backlog_and_lag(tracer, progress, now)
            parts.append(f"backlog {fmt_bytes(backlog)}")
            parts.append("lag ?" if lag is None else f"lag {lag:.1f} s")
        parts.append(f"lost {lost}" + (f" (ring {losses.lost_events}, spool cap {losses.backlog_dropped_events})"
                                       if lost else ""))
        text = "apptrace: " + " · ".join(parts)
        if progress is not None and progress.yielding:
            text += " · analysis paused: the machine is busy"
        return text

    def draining(self, progress: Progress) -> None:
        """After the first Ctrl-C: how much of the backlog is left."""
        if self._drain_from is None:
            self._drain_from = max(progress.backlog_bytes, 1)
        now = time.monotonic()
        if now < self._next_t and progress.backlog_bytes:
            return
        self._next_t = now + self.every_s
        done = 1 - progress.backlog_bytes / self._drain_from
        self._write(f"apptrace: analysing the backlog: {fmt_bytes(progress.backlog_bytes)} left "
                    f"({max(done, 0.0):.0%} done), {progress.records} rows so far")
