"""Single-core throughput of the HTTP/1 and HTTP/2 parsers, through ConnectionTracker.

USAGE: .venv/bin/python bench/bench_parsers_http.py [--seconds S] [--json] [--profile CASE]

Replays the recorded fixtures (tests/fixtures/http1, http2, grpc):
  http1-one-conn   the curl keep-alive capture repeated many times on one connection
  http1-many-conn  every HTTP/1 capture as its own connection (inference included)
  http2-one-conn   one long h2c connection: the h2load capture's header lists re-encoded with
                   real hpack encoders for N streams (stream ids must grow; HPACK state carries)
  http2-many-conn  every HTTP/2 and gRPC capture as its own connection (inference included)
Goals: ≥100k HTTP/1 pairs/s, ≥25k HTTP/2 streams/s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hpack  # noqa: E402
from apptrace.protocols import ConnectionTracker, ParserCaches, Side  # noqa: E402
from apptrace.protocols.http2 import Http2Parser  # noqa: E402
from apptrace.protocols.http2.types import PREFACE  # noqa: E402
from hyperframe.frame import DataFrame, HeadersFrame, SettingsFrame  # noqa: E402

from tests.recorder import load_chunks  # noqa: E402

FIX = ROOT / "tests" / "fixtures"
HTTP1 = sorted((FIX / "http1").glob("*.jsonl"))
HTTP2 = sorted((FIX / "http2").glob("*.jsonl")) + sorted((FIX / "grpc").glob("*.jsonl"))
GOALS = {"http1": 100_000, "http2": 25_000}

Chunks = list[tuple[Side, int, bytes]]
# What apptrace's pipeline does: one set of parser caches shared by all its connections.
CACHES = ParserCaches()


def _replay(conns: list[Chunks], role: str | None) -> int:
    n = 0
    for chunks in conns:
        t = ConnectionTracker(role, caches=CACHES)
        for side, ts, data in chunks:
            n += len(t.feed(side is Side.REQUEST, data, ts))
        n += len(t.close(chunks[-1][1]))
    return n


def http1_one_conn(reps: int) -> list[Chunks]:
    base = load_chunks(FIX / "http1" / "curl_keepalive.jsonl")
    t0 = base[0][1]
    span = base[-1][1] - t0 + 1
    return [[(s, ts - t0 + i * span, d) for i in range(reps) for s, ts, d in base]]


def http1_many_conn(reps: int) -> list[Chunks]:
    files = [load_chunks(p) for p in HTTP1]
    return [files[i % len(files)] for i in range(reps)]


def http2_one_conn(streams: int) -> list[Chunks]:
    """Re-encode the recorded h2load exchange for many streams on one connection."""
    p = Http2Parser()
    recs = []
    for side, ts, data in load_chunks(FIX / "http2" / "h2load.jsonl"):
        recs += p.feed(side, data, ts)
    r = recs[0].fields
    req_h = list(json.loads(r["req_headers"]).items())
    resp_h = list(json.loads(r["resp_headers"]).items())
    body = r["resp_body"].encode()
    enc_req, enc_resp = hpack.Encoder(), hpack.Encoder()
    chunks: Chunks = [(Side.REQUEST, 0, PREFACE + SettingsFrame(0).serialize())]
    chunks.append((Side.RESPONSE, 0, SettingsFrame(0).serialize()))
    batch = 4  # like h2load -m 4: four requests per write, then four responses
    ts = 1
    for first in range(0, streams, batch):
        ids = [2 * (first + k) + 1 for k in range(batch) if first + k < streams]
        req = b""
        for sid in ids:
            h = HeadersFrame(sid, enc_req.encode(req_h))
            h.flags.add("END_HEADERS")
            h.flags.add("END_STREAM")
            req += h.serialize()
        chunks.append((Side.REQUEST, ts, req))
        resp = b""
        for sid in ids:
            h = HeadersFrame(sid, enc_resp.encode(resp_h))
            h.flags.add("END_HEADERS")
            resp += h.serialize()
        for sid in ids:
            d = DataFrame(sid, body)
            d.flags.add("END_STREAM")
            resp += d.serialize()
        chunks.append((Side.RESPONSE, ts + 50_000, resp))
        ts += 100_000
    return [chunks]


def http2_many_conn(reps: int) -> list[Chunks]:
    files = [load_chunks(p) for p in HTTP2]
    return [files[i % len(files)] for i in range(reps)]


CASES = {
    "http1-one-conn": ("http1", lambda: http1_one_conn(5000)),
    "http1-many-conn": ("http1", lambda: http1_many_conn(3000)),
    "http2-one-conn": ("http2", lambda: http2_one_conn(10000)),
    "http2-many-conn": ("http2", lambda: http2_many_conn(1500)),
}


def run_case(name: str, seconds: float) -> dict:
    kind, build = CASES[name]
    conns = build()
    nbytes = sum(len(d) for c in conns for _, _, d in c)
    _replay(conns[:10], None)  # warm-up (imports, regex compilation)
    best = None
    records = 0
    start = time.process_time()
    runs = 0
    while True:
        t0 = time.process_time()
        records = _replay(conns, None)
        dt = time.process_time() - t0
        best = dt if best is None else min(best, dt)
        runs += 1
        if time.process_time() - start >= seconds:
            break
    rate = records / best
    return {
        "case": name,
        "kind": kind,
        "connections": len(conns),
        "records": records,
        "bytes": nbytes,
        "seconds_best": round(best, 4),
        "runs": runs,
        "records_per_s": round(rate),
        "mb_per_s": round(nbytes / best / 1e6, 2),
        "goal_per_s": GOALS[kind],
        "meets_goal": rate >= GOALS[kind],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=2.0, help="time per case (best run is reported)")
    ap.add_argument("--json", action="store_true", help="print one JSON document instead of a table")
    ap.add_argument("--case", action="append", choices=list(CASES), help="only these cases")
    ap.add_argument("--profile", choices=list(CASES), help="profile one case with pyinstrument")
    args = ap.parse_args()
    if args.profile:
        from pyinstrument import Profiler

        conns = CASES[args.profile][1]()
        prof = Profiler(interval=0.0005)
        prof.start()
        _replay(conns, None)
        prof.stop()
        print(prof.output_text(unicode=True, color=False, show_all=False))
        return
    results = [run_case(c, args.seconds) for c in (args.case or list(CASES))]
    if args.json:
        print(json.dumps({"python": sys.version.split()[0], "results": results}, indent=2))
        return
    print(
        f"{'case':<17} {'conns':>6} {'records':>8} {'best s':>7} {'records/s':>10} {'MB/s':>6} {'goal':>7}  ok"
    )
    for r in results:
        print(
            f"{r['case']:<17} {r['connections']:>6} {r['records']:>8} {r['seconds_best']:>7.3f} "
            f"{r['records_per_s']:>10,} {r['mb_per_s']:>6.1f} {r['goal_per_s']:>7,}  {'yes' if r['meets_goal'] else 'NO'}"
        )


if __name__ == "__main__":
    main()
