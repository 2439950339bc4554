"""Replay a raw capture (``trace --raw``, or a spool segment) through the pipeline live tracing uses."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Iterator

from apptrace.analysis.pipeline import Connection, Pipeline
from apptrace.analysis.sinks import Sink
from apptrace.contract.rawfile import Item, RawFormatError, read_raw
from apptrace.protocols import ParserConfig


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

    ``max_body`` overrides the one the capture was taken with. Returns the pipeline (for its
    totals) and an error message if the file ended badly; everything before the damage has been
    processed and drained either way.
    """
    header, frames = read_raw(path)
    body = max_body if max_body is not None else header.max_body
    pipeline = Pipeline(
        sink,
        clock_offset_ns=header.clock_offset_ns,
        parser_config=ParserConfig() if body is None else ParserConfig(max_body=body),
        max_capture_per_call=header.max_capture_per_call,
        service_rules=service_rules,
        tap=tap,
        host=header.host,
    )
    error = None
    n = 0

    def counted() -> Iterator[Item]:
        nonlocal n
        for item in frames:
            yield item
            n += 1  # resumed: the pipeline took the item without failing

    items = counted()
    try:
        while pipeline.take(itertools.islice(items, drain_every)):
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
