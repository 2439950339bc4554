"""Every recorded fixture gives, byte for byte, the records and counters it gave when they were recorded.

The other tests check chosen fields; this one pins everything a refactoring could change
unnoticed: every field of every record, the order of the records, the loss counters. Each
fixture is replayed through its parser (whole chunks and byte by byte), through a
ConnectionTracker from either end (inference included), all fixtures one after another
through trackers that share one pipeline's caches, and in seeded damaged variants (bytes
flipped, inserted or cut, chunks lost as gaps) whose records are pinned by digest.

After a change that is *meant* to change records, re-record and review the diff:
``.venv/bin/python -m tests.protocols.test_recorded_records --write``
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from apptrace.protocols import ConnectionTracker, ParserCaches
from apptrace.protocols.common import ProtocolParser, Record, Side
from apptrace.protocols.http1 import Http1Parser
from apptrace.protocols.http2 import Http2Parser
from apptrace.protocols.mysql import MySQLParser
from apptrace.protocols.pgsql import PgSQLParser

from tests.protocols.conftest import FIXTURES, Chunks, bytewise, fixture_chunks

EXPECTED = Path(__file__).resolve().parent / "recorded" / "records.json"
PARSERS: dict[str, type[ProtocolParser]] = {
    "http1": Http1Parser, "http2": Http2Parser, "grpc": Http2Parser, "mysql": MySQLParser, "pgsql": PgSQLParser,
}  # fmt: skip
FILES = sorted(str(p.relative_to(FIXTURES)) for p in FIXTURES.glob("*/*.jsonl"))
DAMAGED = 40  # damaged variants per fixture


def _records(recs: list[Record]) -> list[Any]:
    return [[r.table, r.time_ns, r.latency_ns, list(r.fields.items())] for r in recs]


def _parser_run(rel: str, chunks: Chunks) -> dict[str, Any]:
    p = PARSERS[rel.split("/")[0]]()
    out: list[Record] = []
    for side, ts, data in chunks:
        out += p.feed(side, data, ts)
    out += p.expire(chunks[-1][1])
    out += p.close(chunks[-1][1] + 1)
    return {"records": _records(out), "stats": p.stats.as_dict()}


def _tracker_run(chunks: Chunks, client_view: bool, role: str | None, events: list | None = None,
                 **tracker_args: Any) -> dict[str, Any]:  # fmt: skip
    t = ConnectionTracker(role, **tracker_args)
    out: list[Record] = []
    for kind, side, ts, arg in events if events is not None else [("data", *c) for c in chunks]:
        egress = (side is Side.REQUEST) == client_view
        out += t.feed(egress, arg, ts) if kind == "data" else t.gap(egress, arg, ts)
    last = chunks[-1][1] if chunks else 0
    out += t.close(last + 1)
    return {"records": _records(out), "stats": t.stats, "protocol": t.protocol, "role": t.role}


def _damaged(rel: str, i: int) -> list[tuple[str, Side, int, Any]]:
    """A seeded variant of a capture: a few bytes flipped, inserted or cut, a chunk lost as a gap."""
    rng = random.Random(f"{rel}#{i}")
    events: list[tuple[str, Side, int, Any]] = [("data", s, ts, d) for s, ts, d in fixture_chunks(rel)]
    for _ in range(rng.randint(1, 3)):
        k = rng.randrange(len(events))
        kind, side, ts, data = events[k]
        if kind != "data":
            continue
        pos = rng.randrange(len(data) + 1)
        op = rng.choice(("flip", "insert", "delete", "truncate", "gap", "split"))
        if op == "flip" and pos < len(data):
            data = data[:pos] + bytes([data[pos] ^ rng.randrange(1, 256)]) + data[pos + 1 :]
        elif op == "insert":
            data = data[:pos] + rng.randbytes(rng.randint(1, 20)) + data[pos:]
        elif op == "delete":
            data = data[:pos] + data[pos + rng.randint(1, 30) :]
        elif op == "truncate":
            data = data[:pos]
        elif op == "gap":
            events[k] = ("gap", side, ts, len(data) - pos)
            events.insert(k, ("data", side, ts, data[:pos]))
            continue
        elif op == "split" and 0 < pos < len(data):
            events[k : k + 1] = [("data", side, ts, data[:pos]), ("data", side, ts, data[pos:])]
            continue
        events[k] = (kind, side, ts, data)
    return [e for e in events if e[0] == "gap" or e[3]]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def _shared_run(**tracker_args: Any) -> dict[str, Any]:
    """Every fixture, three times over, each as its own connection: what caches shared across connections see."""
    runs = [
        _tracker_run(fixture_chunks(rel), client_view, None, **tracker_args)
        for _ in range(3)
        for rel in FILES
        for client_view in (True, False)
    ]
    return {"digest": _digest(runs), "records": sum(len(r["records"]) for r in runs)}


def compute(rel: str) -> dict[str, Any]:
    chunks = fixture_chunks(rel)
    damaged = []
    for i in range(DAMAGED):
        events = _damaged(rel, i)
        damaged.append(_digest([_tracker_run(chunks, cv, None, events) for cv in (True, False)]))
    # In full where a diff is worth reading; the variants that should agree with them, by digest.
    return {
        "parser": _parser_run(rel, chunks),
        "tracker_client": _tracker_run(chunks, True, None),
        "parser_bytewise": _digest(_parser_run(rel, bytewise(chunks))),
        "tracker_server": _digest(_tracker_run(chunks, False, None)),
        "tracker_given_role": _digest(_tracker_run(chunks, True, "client")),
        "damaged": damaged,
    }


def _roundtrip(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads(EXPECTED.read_text())


@pytest.mark.parametrize("rel", FILES)
def test_fixture_records_unchanged(rel: str, expected: dict[str, Any]) -> None:
    got = _roundtrip(compute(rel))
    want = expected["fixtures"][rel]
    for variant in want:
        assert got[variant] == want[variant], variant


def test_fixtures_replayed_as_many_connections_unchanged(expected: dict[str, Any]) -> None:
    assert _shared_run(caches=ParserCaches()) == expected["shared"]  # one pipeline's caches, as apptrace runs
    assert _shared_run() == expected["shared"]  # each connection on its own


def write() -> None:
    data = {"fixtures": {rel: compute(rel) for rel in FILES}, "shared": _shared_run()}
    EXPECTED.parent.mkdir(exist_ok=True)
    EXPECTED.write_text(json.dumps(_roundtrip(data), indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()
