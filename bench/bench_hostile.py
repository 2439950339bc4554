"""bench_hostile: the analysis cost of hostile bytes, in µs per captured byte, case by case.

USAGE: .venv/bin/python bench/bench_hostile.py [--mb N] [--only SUBSTRING] [--json]

Each case is a connection whose bytes were written to cost the parsers as much as possible
(garbage after a malformed HTTP/1 head, a 10 MB header line fed one byte at a time, 10 MB of
tiny headers, start lines that never end, bogus SQL length prefixes, ...). It is fed through
the real entry point, ``ConnectionTracker`` (inference, then the chosen parser), in the
chunk sizes given, and the process CPU time it took is divided by the bytes fed. The goal is
at most 5 µs per byte in every case: cost linear in the bytes, with a small constant, so
that no request can stall the analysis of the others.

``--mb`` sets each case's size (default 10, the issue's figure); the one-byte-at-a-time
cases take the longest. Time is process CPU time; on a shared machine compare ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.protocols import ConnectionTracker  # noqa: E402
from apptrace.protocols.common import ParserConfig  # noqa: E402

GOAL_US_PER_BYTE = 5.0
MiB = 1 << 20

# (egress, bytes) pieces of one connection, seen from the server: egress False = what it read.
Pieces = Iterator[tuple[bool, bytes]]


def junk(n: int, seed: int = 1) -> bytes:
    """Text-like garbage: words, spaces, CRLFs and stray bytes, so that every search finds
    candidates (line ends, blank lines, colons) and none of them leads anywhere."""
    rng = random.Random(seed)
    alphabet = b"abcdefghij:; \t/=\r\n\r\n\x00\xff"
    return bytes(rng.choice(alphabet) for _ in range(min(n, 1 << 16))) * (n // (1 << 16) + 1)


def chunked(egress: bool, data: bytes, size: int) -> Pieces:
    for i in range(0, len(data), size):
        yield egress, data[i : i + size]


def http1_junk_after_head(n: int) -> Pieces:
    """A POST whose head has a line that is no header, then its 'body': n bytes of garbage, in 16 KiB sends."""
    yield False, b"POST /upload HTTP/1.1\r\nHost: a\r\nthis is no header\r\nContent-Length: 99999999\r\n\r\n"
    yield from chunked(False, junk(n)[:n], 16384)


def http1_junk_after_head_small_sends(n: int) -> Pieces:
    """The same garbage in 100-byte sends."""
    yield False, b"POST /upload HTTP/1.1\r\nContent-Length: x\r\n\r\n"
    yield from chunked(False, junk(n, 2)[:n], 100)


def http1_long_header_bytewise(n: int) -> Pieces:
    """A header line of n bytes, fed one byte at a time."""
    yield False, b"GET / HTTP/1.1\r\nX-Long: "
    for _ in range(n):
        yield False, b"a"


def http1_tiny_headers(n: int) -> Pieces:
    """n bytes of 'a: b' headers after one request line: a head that never ends."""
    yield False, b"GET / HTTP/1.1\r\n"
    yield from chunked(False, b"a: b\r\n" * (n // 6), 16384)


def http1_start_lines(n: int) -> Pieces:
    """n bytes of request lines and nothing else: each one a head that never ends."""
    yield from chunked(False, b"GET / HTTP/1.1\r\n" * (n // 16), 16384)


def http1_bad_heads(n: int) -> Pieces:
    """Heads that end, each with a bad line, hundreds of start lines before each end."""
    block = b"GET / HTTP/1.1\r\nno colon here\r\n" * 500 + b"\r\n"
    yield from chunked(False, block * (n // len(block)), 16384)


def http1_response_junk(n: int) -> Pieces:
    """A response with a bad Content-Length, then garbage and almost-status-lines."""
    yield False, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield True, b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"
    block = (junk(4096, 3) + b"HTTP/1.1 200\rX\n") * 16
    yield from chunked(True, (block * (n // len(block) + 1))[:n], 16384)


def http1_chunk_lines_bytewise(n: int) -> Pieces:
    """A chunked response whose chunk size lines carry 1000-byte extensions, fed one byte at a time."""
    yield False, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    yield True, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = b"1;" + b"x" * 1000 + b"\r\na\r\n"
    data = piece * (n // len(piece))
    for i in range(len(data)):
        yield True, data[i : i + 1]


def http2_junk(n: int) -> Pieces:
    """The HTTP/2 preface, then garbage."""
    yield False, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    yield from chunked(False, junk(n, 4)[:n], 16384)


def mysql_packet(seq: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "little") + bytes([seq]) + payload


def mysql_bogus_then_queries(n: int) -> Pieces:
    """A query, a bogus 16 MiB COM_QUERY header, then n bytes of small queries, each answered."""
    query = mysql_packet(0, b"\x03SELECT 1")
    ok = mysql_packet(1, b"\x00\x00\x00\x02\x00\x00\x00")
    yield False, query
    yield True, ok
    yield False, b"\xff\xff\xff\x00\x03"
    for _ in range(n // len(query)):
        yield False, query
        yield True, ok


def mysql_huge_query_bytewise(n: int) -> Pieces:
    """One COM_QUERY of n bytes (over the buffer cap), fed one byte at a time."""
    yield False, min(n + 9, 0xFFFFFE).to_bytes(3, "little") + b"\x00\x03SELECT '"
    for _ in range(n):
        yield False, b"x"


def mysql_tiny_packets(n: int) -> Pieces:
    """A query, then n bytes of COM_PING, never answered."""
    yield False, mysql_packet(0, b"\x03SELECT 1")
    yield True, mysql_packet(1, b"\x00\x00\x00\x02\x00\x00\x00")
    yield from chunked(False, mysql_packet(0, b"\x0e") * (n // 5), 16384)


def pgsql_message(t: bytes, payload: bytes) -> bytes:
    return t + (len(payload) + 4).to_bytes(4, "big") + payload


def pgsql_bogus_then_queries(n: int) -> Pieces:
    """A query, a Query header claiming 2 GiB, then n bytes of small queries, each answered."""
    query = pgsql_message(b"Q", b"SELECT 1\x00")
    answer = pgsql_message(b"C", b"SELECT 1\x00") + pgsql_message(b"Z", b"I")
    yield False, query
    yield True, answer
    yield False, b"Q\x7f\xff\xff\xff"
    for _ in range(n // len(query)):
        yield False, query
        yield True, answer


def pgsql_huge_query_bytewise(n: int) -> Pieces:
    """One Query message of n bytes (over the buffer cap), fed one byte at a time."""
    yield False, b"Q" + (n + 4).to_bytes(4, "big")
    for _ in range(n):
        yield False, b"x"


def pgsql_tiny_messages(n: int) -> Pieces:
    """n bytes of Flush messages."""
    yield False, pgsql_message(b"Q", b"SELECT 1\x00")
    yield from chunked(False, b"H\x00\x00\x00\x04" * (n // 5), 16384)


CASES: dict[str, Callable[[int], Pieces]] = {
    "http1 junk after a malformed head (16 KiB sends)": http1_junk_after_head,
    "http1 junk after a malformed head (100 B sends)": http1_junk_after_head_small_sends,
    "http1 header line fed 1 byte at a time": http1_long_header_bytewise,
    "http1 tiny headers, no end": http1_tiny_headers,
    "http1 request lines, no end": http1_start_lines,
    "http1 heads with a bad line": http1_bad_heads,
    "http1 response junk and false status lines": http1_response_junk,
    "http1 chunk size lines fed 1 byte at a time": http1_chunk_lines_bytewise,
    "http2 junk after the preface": http2_junk,
    "mysql bogus length, then queries": mysql_bogus_then_queries,
    "mysql huge query fed 1 byte at a time": mysql_huge_query_bytewise,
    "mysql tiny packets": mysql_tiny_packets,
    "pgsql bogus length, then queries": pgsql_bogus_then_queries,
    "pgsql huge query fed 1 byte at a time": pgsql_huge_query_bytewise,
    "pgsql tiny messages": pgsql_tiny_messages,
}


def run_case(make: Callable[[int], Pieces], n: int) -> dict:
    """Feed one hostile connection; CPU time, bytes, records and losses as the tracker counted them."""
    # The pieces are made as they are fed (10 MB of one-byte pieces would not fit in memory as a
    # list): their making is timed too, which only makes the figure an overestimate.
    tracker = ConnectionTracker("server", ParserConfig())
    fed = records = sends = 0
    start = time.process_time()
    for ts, (egress, data) in enumerate(make(n)):
        records += len(tracker.feed(egress, data, ts))
        fed += len(data)
        sends += 1
    records += len(tracker.close(sends))
    cpu = time.process_time() - start
    stats = tracker.stats
    return {
        "bytes": fed,
        "sends": sends,
        "cpu_s": round(cpu, 3),
        "us_per_byte": round(cpu * 1e6 / fed, 3),
        "records": records,
        "protocol": tracker.protocol,
        "parse_errors": stats["parse_errors"],
        "dropped_bytes": stats["dropped_bytes"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=10.0, help="bytes per case, in MiB (default 10)")
    ap.add_argument("--only", help="run the cases whose name contains this")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    if args.mb <= 0:
        ap.error("--mb must be positive")
    n = int(args.mb * MiB)
    results = []
    for name, make in CASES.items():
        if args.only and args.only not in name:
            continue
        r = {"case": name, **run_case(make, n)}
        results.append(r)
        if not args.json:
            mark = "ok" if r["us_per_byte"] <= GOAL_US_PER_BYTE else "OVER GOAL"
            print(
                f"{name:48s} {r['bytes'] / MiB:7.1f} MiB {r['cpu_s']:8.2f} s {r['us_per_byte']:7.3f} µs/B  "
                f"records {r['records']:6d}  parse_errors {r['parse_errors']:4d}  {mark}",
                flush=True,
            )
    if args.json:
        print(json.dumps({"goal_us_per_byte": GOAL_US_PER_BYTE, "results": results}, indent=2))
    worst = max((r["us_per_byte"] for r in results), default=0.0)
    return 0 if worst <= GOAL_US_PER_BYTE else 1


if __name__ == "__main__":
    sys.exit(main())
