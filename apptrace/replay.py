"""Replay a raw capture through the same pipeline the live tracer uses."""

from __future__ import annotations

import struct
from collections.abc import Callable

from apptrace.conns import Connection, Pipeline, Sink
from apptrace.events import decode
from apptrace.protocols import ParserConfig
from apptrace.rawlog import KIND_EVENT, RawFormatError, read_raw


class NullSink:
    """Rows go nowhere: for --streams and benchmarks of the parsers alone."""

    def add_events(self, table: str, rows: list[dict]) -> None:
        pass

    def upsert_connections(self, rows: list[dict]) -> None:
        pass

    def upsert_processes(self, rows: list[dict]) -> None:
        pass

    def add_capture_stats(self, rows: list[dict]) -> None:
        pass


class ListSink:
    """Keeps every row in memory, by table (tests, small replays)."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict]] = {}
        self.connections: dict[str, dict] = {}
        self.processes: dict[int, dict] = {}
        self.capture_stats: list[dict] = []

    def add_events(self, table: str, rows: list[dict]) -> None:
        self.events.setdefault(table, []).extend(rows)

    def upsert_connections(self, rows: list[dict]) -> None:
        for r in rows:
            self.connections[r["conn_id"]] = r

    def upsert_processes(self, rows: list[dict]) -> None:
        for r in rows:
            self.processes[r["pid"]] = r

    def add_capture_stats(self, rows: list[dict]) -> None:
        self.capture_stats.extend(rows)


def replay_file(
    path: str,
    sink: Sink,
    *,
    max_body: int | None = None,
    service_rules: list[str] | None = None,
    tap: Callable[[Connection, bool, bytes, int], None] | None = None,
    flush: Callable[[], None] | None = None,
    drain_every: int = 5_000,
) -> tuple[Pipeline, str | None]:
    """Feed ``path`` through a fresh Pipeline into ``sink``.

    Returns the pipeline (for its totals) and an error message if the file ended badly;
    everything before the damage has been processed and drained either way.
    """
    header, frames = read_raw(path)
    cfg = ParserConfig(max_body=max_body if max_body is not None else int(header.get("max_body", 1024)))
    pipeline = Pipeline(
        sink,
        clock_offset_ns=int(header.get("clock_offset_ns", 0)),
        parser_config=cfg,
        max_capture_per_call=int(header.get("max_capture_per_call", 1 << 20)),
        service_rules=service_rules,
        tap=tap,
    )
    error = None
    n = 0
    try:
        for kind, payload in frames:
            if kind == KIND_EVENT:
                pipeline.handle(decode(payload))  # type: ignore[arg-type]
            else:
                pipeline.annotate(payload)  # type: ignore[arg-type]
            n += 1
            if n % drain_every == 0:
                pipeline.drain()
                if flush is not None:
                    flush()
    except RawFormatError as exc:
        error = str(exc)
    except (ValueError, KeyError, IndexError, TypeError, struct.error) as exc:
        # A corrupt record must not lose what came before it.
        error = f"{path}: corrupt record after {n} frames: {exc}"
    pipeline.finish()
    return pipeline, error
