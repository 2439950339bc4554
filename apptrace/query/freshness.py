"""How current the rows are: when the newest one was made, and how far a live tracer's analysis is behind.

`report`, `watch` and `run` put this in their header, so that rows which end 22 seconds ago (a stopped tracer, or
analysis paused under load with a backlog in the spool) are never taken for what is happening now.

Analysis writes a `capture_stats` row whenever its counters or its spool backlog change, stamped with the time of
the last event it has analysed. So the newest such row says how much was left to parse at that moment: none
means analysis had caught up; some means it was that row's age behind.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from apptrace.query.backend import QueryError, SocketBackend
from apptrace.query.fmt import fmt_age
from apptrace.store.schema import EVENT_TABLES


@dataclass(frozen=True)
class Freshness:
    now_ns: int
    newest_ns: int | None  # the newest row's time_ in the tables looked at; None when they are empty
    live: bool  # a tracer answered on <db>.sock
    lag_s: float | None = None  # live only: how far analysis is behind (0 when caught up); None if unknown
    backlog_bytes: int | None = None

    @property
    def age_s(self) -> float | None:
        return None if self.newest_ns is None else max(0.0, (self.now_ns - self.newest_ns) / 1e9)

    def describe(self) -> str:
        """One line: 'rows end 22 s ago (18:09:50 UTC) · tracer live, analysis 3 s behind (2.0 MiB to parse)'."""
        if self.newest_ns is None:
            rows = "no rows yet"
        else:
            at = dt.datetime.fromtimestamp(self.newest_ns / 1e9, dt.UTC)
            rows = f"rows end {fmt_age(self.age_s or 0.0)} ago ({at:%H:%M:%S} UTC)"
        if not self.live:
            return f"{rows} · no tracer running"
        if self.lag_s is None:
            return f"{rows} · tracer live, analysis lag unknown (no capture_stats yet)"
        if self.lag_s == 0:
            return f"{rows} · tracer live, analysis caught up"
        backlog = f" ({self.backlog_bytes / 2**20:.1f} MiB to parse)" if self.backlog_bytes else ""
        return f"{rows} · tracer live, analysis {fmt_age(self.lag_s)} behind{backlog}"

    def as_json(self) -> dict[str, Any]:
        return {"rows_end_ns": self.newest_ns, "rows_end_age_s": self.age_s, "tracer_live": self.live,
                "analysis_lag_s": self.lag_s, "backlog_bytes": self.backlog_bytes}


def _one(backend: Any, sql: str) -> dict | None:
    try:
        rows = backend.query_arrow(sql).to_pylist()
    except QueryError:  # a table or column an older database does not have
        return None
    return rows[0] if rows else None


def freshness(backend: Any, tables: Sequence[str] = EVENT_TABLES, now_ns: int | None = None) -> Freshness:
    """How current the rows of ``tables`` are, through ``backend`` (a tracer's socket or the file)."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    newest = None
    if tables:
        union = " UNION ALL ".join(f"SELECT max(epoch_ns(time_)) AS t FROM {t}" for t in tables)
        row = _one(backend, f"SELECT max(t) AS t FROM ({union})")
        newest = row["t"] if row else None
    live = isinstance(backend, SocketBackend)
    lag = backlog = None
    if live:
        row = _one(backend, "SELECT epoch_ns(time_) AS t, backlog_bytes FROM capture_stats "
                            "WHERE backlog_bytes IS NOT NULL ORDER BY time_ DESC LIMIT 1")
        if row is not None:
            backlog = int(row["backlog_bytes"])
            lag = 0.0 if backlog == 0 else max(0.0, (now_ns - int(row["t"])) / 1e9)
    return Freshness(now_ns=now_ns, newest_ns=newest, live=live, lag_s=lag, backlog_bytes=backlog)
