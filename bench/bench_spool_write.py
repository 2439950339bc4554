"""CPU per record of the capture process's spool writes: this tree's SpoolWriter against another commit's.

The capture loop hands the spool what the ring gives it: runs of data records (one frame each,
``SpoolWriter.run``), records one at a time (``event``), and a flush per poll. This feeds both
writers the same sequence (runs of 32 records of 300 bytes, one single record per run, a flush
per 4,096 records, 64 MiB segments) into a fresh directory each, alternating which goes first,
and reports the median µs of CPU (user+sys of this process) per record and the per-round ratios.
The base writer is loaded from ``git show REV:apptrace/contract/spool.py``.

    .venv/bin/python bench/bench_spool_write.py [--base main] [--rounds 9] [--records 400000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.contract import spool as this_spool  # noqa: E402
from apptrace.contract.events import DATA_HDR, EV_CLOSE, EV_DATA, META  # noqa: E402
from apptrace.contract.rawfile import CaptureHeader  # noqa: E402

RUN = 32
PAYLOAD = 300
SEGMENT = 64 << 20


def _base_module(rev: str) -> types.ModuleType:
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:apptrace/contract/spool.py"], check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("base_spool")
    exec(compile(source, f"{rev}:apptrace/contract/spool.py", "exec"), module.__dict__)  # noqa: S102
    return module


def _inputs() -> tuple[bytes, bytes]:
    rec = DATA_HDR.pack(EV_DATA, 0, 1, 1, 7, 7, 3, 1000, 0xAB, 0, PAYLOAD, 0, PAYLOAD, 0) + b"x" * PAYLOAD
    ring = len(rec).to_bytes(4, "little") + bytes(4) + rec + bytes(-len(rec) % 8)
    single = META.pack(EV_CLOSE, 7, 7, 3, 5, 0, 0, 0, 0, 0, b"", b"", -1, 0, b"")
    return ring * RUN, single


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def one(module: types.ModuleType, records: int, tmp: str) -> float:
    """µs of CPU per record for ``records`` records through ``module.SpoolWriter``."""
    directory = os.path.join(tmp, "spool")
    header = CaptureHeader(clock_offset_ns=0, max_capture_per_call=1 << 20, started=1, host="bench")
    run, single = _inputs()
    w = module.SpoolWriter(directory, header, max_bytes=1 << 40, segment_bytes=SEGMENT)
    c0 = _cpu()
    written = 0
    since_flush = 0
    while written < records:
        w.run(run, RUN, len(run))
        w.event(single)
        written += RUN + 1
        since_flush += RUN + 1
        if since_flush >= 4096:
            w.flush()
            since_flush = 0
    w.close()
    c1 = _cpu()
    shutil.rmtree(directory)
    return (c1 - c0) * 1e6 / written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main", help="the commit whose SpoolWriter to compare with (default main)")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--records", type=int, default=400_000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    writers = {"this": this_spool, "base": _base_module(args.base)}
    out: dict[str, list[float]] = {"this": [], "base": []}
    with tempfile.TemporaryDirectory(prefix="apptrace-spool-bench-") as tmp:
        one(this_spool, args.records // 10, tmp)  # warm-up: page cache, allocator
        for r in range(args.rounds):
            for name in ("this", "base") if r % 2 == 0 else ("base", "this"):
                out[name].append(one(writers[name], args.records, tmp))
                if not args.json:
                    print(f"round {r + 1} {name}: {out[name][-1]:.3f} µs CPU/record", file=sys.stderr)
    ratios = [b / t for b, t in zip(out["base"], out["this"], strict=True)]
    result = {
        "benchmark": "spool_write",
        "base": args.base,
        "records": args.records,
        "rounds": args.rounds,
        "us_per_record": out,
        "median": {k: statistics.median(v) for k, v in out.items()},
        "ratio_base_over_this": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["median"]
    print(f"spool writes, {args.records} records per round, median of {args.rounds}: this {m['this']:.3f} µs/record, "
          f"{args.base} {m['base']:.3f}; {args.base}/this {result['ratio_base_over_this']:.2f}× "
          f"({min(ratios):.2f}–{max(ratios):.2f})")


if __name__ == "__main__":
    main()
