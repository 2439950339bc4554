"""What a commit's state snapshot costs analysis: ``checkpoint.snapshot`` of a pipeline holding N open connections.

Every recorded fixture (HTTP/1, HTTP/2, gRPC, MySQL, PostgreSQL; tests/fixtures) is fed as many
connections under distinct pids, up to half of each fixture's frames, so each connection is open
and mid-stream, its parser holding buffers, HPACK tables and prepared statements. Then the
snapshot is taken a few times: median ms and compressed size, and ms per connection. Analysis
commits once a second, and spaces commits out to keep snapshots under a twentieth of its time.

    .venv/bin/python bench/bench_checkpoint.py [--connections 100 1000 5000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.protocols import ParserConfig  # noqa: E402
from apptrace.protocols.common import Side  # noqa: E402

from apptrace.analysis import checkpoint  # noqa: E402
from apptrace.analysis.pipeline import Pipeline  # noqa: E402
from apptrace.analysis.sinks import NullSink  # noqa: E402
from apptrace.contract.events import DATA_HDR, EV_DATA  # noqa: E402
from apptrace.contract.rawfile import KIND_EVENT  # noqa: E402
from tests.protocols.conftest import FIXTURES, fixture_chunks  # noqa: E402


def _half_open(connections: int) -> list[tuple[int, bytes]]:
    files = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.jsonl"))
    chunks = {f: fixture_chunks(f) for f in files}
    frames = []
    for i in range(connections):
        rel = files[i % len(files)]
        pid, pos = 10_000 + i, {True: 0, False: 0}
        seq = chunks[rel]
        for side, ts, data in seq[: max(len(seq) // 2, 1)]:
            egress = side is Side.REQUEST
            hdr = DATA_HDR.pack(EV_DATA, 0 if egress else 1, 1, 1, pid, pid, 3, ts, 0xAB, pos[egress], len(data), 0,
                                len(data), 0)
            frames.append((KIND_EVENT, hdr + data))
            pos[egress] += len(data)
    return frames


def measure(connections: int, repeats: int = 5) -> dict:
    pipeline = Pipeline(NullSink(), clock_offset_ns=0, parser_config=ParserConfig())
    pipeline.take(_half_open(connections))
    pipeline.drain()
    times, size = [], 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        state = checkpoint.snapshot(pipeline)
        times.append(time.perf_counter() - t0)
        size = len(state)
    t0 = time.perf_counter()
    checkpoint.restore(state, NullSink())
    restore_s = time.perf_counter() - t0
    ms = statistics.median(times) * 1e3
    return {"connections": len(pipeline.open_connections()), "snapshot_ms": ms, "bytes": size,
            "us_per_connection": ms * 1e3 / max(len(pipeline.open_connections()), 1), "restore_ms": restore_s * 1e3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, nargs="+", default=[100, 1000, 5000])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    out = [measure(n) for n in args.connections]
    if args.json:
        print(json.dumps({"benchmark": "checkpoint", "runs": out}, indent=2))
        return
    for r in out:
        print(f"{r['connections']:6} open connections: snapshot {r['snapshot_ms']:7.1f} ms "
              f"({r['us_per_connection']:.0f} µs each), {r['bytes'] / 1024:8.1f} KiB, restore {r['restore_ms']:.1f} ms")


if __name__ == "__main__":
    main()
