"""A pipeline restored from a checkpoint gives the rows the uninterrupted one gives: none lost, none twice.

Every recorded fixture (bytes from real peers) becomes a connection of one pipeline, their
frames interleaved so that many connections are open at once, each chunk cut in three so that
cuts fall inside messages. The pipeline is stopped at many points, snapshotted, and a new one
restored from the snapshot goes on; the rows of all the pieces together must equal, field by
field and in order, the rows of one pipeline fed everything at once.
"""

from __future__ import annotations

import pytest
from apptrace.protocols import ParserConfig
from apptrace.protocols.common import Side

from apptrace.analysis import checkpoint
from apptrace.analysis.pipeline import Pipeline
from apptrace.analysis.sinks import ListSink
from apptrace.contract.events import DATA_HDR, EV_CLOSE, EV_DATA, META
from apptrace.contract.rawfile import KIND_EVENT
from tests.protocols.conftest import FIXTURES, fixture_chunks, split_chunks

FILES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.jsonl"))
# zlib's decoders cannot be pickled: a body being inflated across a checkpoint is shown as it came on the
# wire instead (apptrace.analysis.checkpoint), so these fixtures' decoded bodies may differ there.
COMPRESSED = {f for f in FILES if "gzip" in f}
BODIES = ("req_body", "resp_body")


def _frames(files: list[str]) -> list[tuple[int, bytes]]:
    """Each fixture as the kernel would report it from the client: pid 1000+i, fd 3; interleaved."""
    per_conn = []
    for i, rel in enumerate(files):
        pid, pos = 1000 + i, {True: 0, False: 0}
        events = []
        chunks = split_chunks(fixture_chunks(rel), lambda _, d: (len(d) // 3, 2 * len(d) // 3))
        for side, ts, data in chunks:
            egress = side is Side.REQUEST
            hdr = DATA_HDR.pack(EV_DATA, 0 if egress else 1, 1, 1, pid, pid, 3, ts, 0xAB00 + i, pos[egress],
                                len(data), 0, len(data), 0)
            events.append((KIND_EVENT, hdr + data))
            pos[egress] += len(data)
        last = chunks[-1][1] + 1
        events.append((KIND_EVENT, META.pack(EV_CLOSE, pid, pid, 3, last, 0, 0, 0, 0, 0, b"", b"", -1, 0, b"")))
        per_conn.append(events)
    out = []
    while any(per_conn):
        for events in per_conn:
            if events:
                out.extend(events[:4])
                del events[:4]
    return out


def _pipeline(sink: ListSink) -> Pipeline:
    return Pipeline(sink, clock_offset_ns=0, parser_config=ParserConfig(max_body=256))


def _rows(sinks: list[ListSink], *, drop_bodies: bool = False) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for sink in sinks:
        for table, rows in sink.events.items():
            out.setdefault(table, []).extend(
                {k: v for k, v in r.items() if not (drop_bodies and k in BODIES)} for r in rows)
    return out


def _run(frames: list[tuple[int, bytes]], cuts: list[int]) -> tuple[list[ListSink], Pipeline]:
    """Feed ``frames``, snapshotting and restoring into a fresh pipeline (and sink) at each cut."""
    sinks = [ListSink()]
    pipeline = _pipeline(sinks[0])
    start = 0
    for cut in [*cuts, len(frames)]:
        pipeline.take(frames[start:cut])
        start = cut
        if cut < len(frames):
            pipeline.drain()
            state = checkpoint.snapshot(pipeline)
            sinks.append(ListSink())
            pipeline = checkpoint.restore(state, sinks[-1])
    pipeline.finish()
    return sinks, pipeline


@pytest.mark.parametrize("every", [7, 53, 400])
def test_restored_pipelines_give_the_rows_of_one_that_never_stopped(every):
    files = [f for f in FILES if f not in COMPRESSED]
    frames = _frames(files)
    whole, one = _run(frames, [])
    pieces, restored = _run(frames, list(range(every, len(frames), every)))
    expected = _rows(whole)
    assert sum(map(len, expected.values())) > 100, "the fixtures should give many rows"
    assert _rows(pieces) == expected
    assert restored.totals == one.totals
    assert restored.connection_count == one.connection_count == len(files)
    # every snapshot is of a pipeline with requests in flight: the cuts fell inside messages
    assert len(pieces) > 1


def test_a_body_inflated_across_a_checkpoint_keeps_its_row():
    frames = _frames(sorted(COMPRESSED))
    whole, _ = _run(frames, [])
    pieces, _ = _run(frames, list(range(3, len(frames), 3)))
    assert _rows(pieces, drop_bodies=True) == _rows(whole, drop_bodies=True)


def test_a_snapshot_leaves_out_the_sink_and_the_parsers_cached_entries():
    frames = _frames([f for f in FILES if f.startswith(("http1/", "http2/", "pgsql/"))])
    sink = ListSink()
    pipeline = _pipeline(sink)
    pipeline.take(frames[: len(frames) // 2])
    pipeline.drain()
    caches = pipeline.parser_caches
    assert caches.http1_request_heads and caches.http2_opening_blocks, "the caches hold entries by now"
    restored = checkpoint.restore(checkpoint.snapshot(pipeline), ListSink(), on_rows=print)
    assert restored.sink is not sink and restored.on_rows is print
    assert restored.parser_caches.http1_request_heads == {} and restored.parser_caches.http2_opening_blocks == {}
    assert pipeline.sink is sink, "snapshotting leaves the live pipeline wired as it was"
