"""What the tracer tells its analysis process, and what it hears back.

The capture process starts analysis as a child (``process.Analysis``) and writes it an
``AnalysisConfig`` on its stdin, not on its command line, where ``ps`` would show it to every user.
The child answers with ``Status`` lines on a pipe: ready (or why not) at start, an ``AnalysisSummary``
at the end.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from apptrace.analysis.priority import DEFAULT_PRIORITY, DEFAULT_YIELD_ABOVE

T = TypeVar("T")


def _from_dict(cls: type[T], obj: Any) -> T:
    if not isinstance(obj, dict):
        raise ValueError(f"{cls.__name__}: expected a JSON object")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in obj.items() if k in known})


@dataclass(frozen=True)
class AnalysisConfig:
    spool: str
    db: str | None  # None: rows are printed (or not) and dropped
    clock_offset_ns: int
    max_capture_per_call: int
    max_body: int
    service_rules: list[str] = field(default_factory=list)
    host: str | None = None  # the capture header's host name, stored on every row
    retain: str | None = None
    max_size: str | None = None
    redact: bool = True
    redact_headers: list[str] = field(default_factory=list)
    redact_params: list[str] = field(default_factory=list)
    print_rows: bool = False
    metrics: str | None = None  # ADDR:PORT to serve Prometheus metrics on (apptrace.analysis.metrics)
    otlp: dict | None = None  # apptrace.analysis.otlp.OtlpConfig's fields, when spans and metrics go over OTLP
    priority: str = DEFAULT_PRIORITY  # "idle" (SCHED_IDLE) or a nice value, "0" to "19"
    #: pause while other processes keep the CPUs busier than this fraction (1.0: never pause) ...
    yield_above: float = DEFAULT_YIELD_ABOVE
    #: ... unless the backlog has grown to this many bytes
    yield_backlog_max: int = 512 << 20
    #: the spool run capture is writing (``CaptureHeader.run_id``); the spool's other runs were left by tracers that died
    run: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> AnalysisConfig:
        return _from_dict(cls, json.loads(text))


@dataclass
class Totals:
    """What one analysis run counted: the pipeline keeps it, the summary carries it home."""

    events: int = 0
    bytes: int = 0
    gap_bytes: int = 0
    records: int = 0
    parse_errors: int = 0
    unknown_protocol_conns: int = 0
    lost_events: int = 0
    truncated_bytes: int = 0
    backlog_dropped_events: int = 0  # the spool was full: capture kept these out of analysis
    disk_full_dropped_events: int = 0  # no room on the spool's filesystem: capture could not write these
    disk_full_dropped_rows: int = 0  # no room on the DB's filesystem: analysis could not store these

    def delta(self, before: Totals) -> dict[str, int]:
        return {k: getattr(self, k) - getattr(before, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class AnalysisSummary:
    """The end of an analysis run, for the trace summary."""

    totals: Totals = field(default_factory=Totals)
    connections: int = 0
    left_in_spool: int | None = None  # bytes of capture not analysed (None: unknown, analysis died)
    otlp: dict | None = None  # spans exported, dropped (queue full) and failed (collector away), with --otlp
    error: str | None = None  # why analysis stopped early


@dataclass(frozen=True)
class Progress:
    """Where analysis stands, sent about once a second (for trace's status line)."""

    records: int = 0  # rows made so far
    events: int = 0  # capture events analysed so far
    last_event_ns: int = 0  # CLOCK_MONOTONIC time of the newest event analysed (0: none yet)
    backlog_bytes: int = 0  # spool bytes captured and not analysed yet
    yielding: bool = False  # paused: other processes keep the CPUs busy


@dataclass(frozen=True)
class Status:
    """One line from the analysis process to its parent."""

    ready: bool = False
    error: str | None = None  # could not start (the DB is held, the config is bad)
    summary: AnalysisSummary | None = None  # the run is over
    progress: Progress | None = None  # still running

    def line(self) -> str:
        return json.dumps(dataclasses.asdict(self)) + "\n"

    @classmethod
    def from_line(cls, line: str) -> Status:
        obj = json.loads(line)
        summary = obj.get("summary") if isinstance(obj, dict) else None
        status = _from_dict(cls, obj)
        if status.progress is not None:
            status = dataclasses.replace(status, progress=_from_dict(Progress, status.progress))
        if summary is not None:
            done = _from_dict(AnalysisSummary, summary)
            status = dataclasses.replace(status, summary=dataclasses.replace(
                done, totals=_from_dict(Totals, summary.get("totals", {}))))
        return status
