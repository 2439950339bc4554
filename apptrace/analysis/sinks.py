"""Where the pipeline's rows go: the DuckDB store (``apptrace.store.writer.Store`` has this shape),
nowhere, or a list in memory."""

from __future__ import annotations

from typing import Protocol


class Sink(Protocol):
    def add_events(self, table: str, rows: list[dict]) -> None: ...
    def upsert_connections(self, rows: list[dict]) -> None: ...
    def upsert_processes(self, rows: list[dict]) -> None: ...
    def add_capture_stats(self, rows: list[dict]) -> None: ...


class NullSink:
    """Rows go nowhere: for --streams, --no-store and benchmarks of the parsers alone."""

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
