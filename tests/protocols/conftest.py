"""Helpers shared by the HTTP/HTTP2/gRPC/tracker/inference tests: load fixtures, feed them in pieces."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest

from protocols.common import ProtocolParser, Record, Side
from tests.recorder import load_chunks

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

Chunks = list[tuple[Side, int, bytes]]


def fixture_chunks(rel: str) -> Chunks:
    return load_chunks(FIXTURES / rel)


def split_chunks(chunks: Chunks, cuts: Callable[[int, bytes], Iterable[int]]) -> Chunks:
    """Split each chunk at the offsets ``cuts(i, data)`` gives; every byte keeps its chunk's timestamp."""
    out: Chunks = []
    for i, (side, ts, data) in enumerate(chunks):
        prev = 0
        for c in sorted(set(x for x in cuts(i, data) if 0 < x < len(data))):
            out.append((side, ts, data[prev:c]))
            prev = c
        out.append((side, ts, data[prev:]))
    return out


def bytewise(chunks: Chunks) -> Chunks:
    return split_chunks(chunks, lambda i, d: range(1, len(d)))


def feed_parser(parser: ProtocolParser, chunks: Chunks, close: bool = True) -> list[Record]:
    out: list[Record] = []
    for side, ts, data in chunks:
        out += parser.feed(side, data, ts)
    if close and chunks:
        out += parser.close(chunks[-1][1])
    return out


def feed_tracker(tracker, chunks: Chunks, client_view: bool = True, close: bool = True) -> list[Record]:
    """Feed a fixture as the client (egress = requests) or the server (egress = responses) would see it."""
    out: list[Record] = []
    for side, ts, data in chunks:
        egress = (side is Side.REQUEST) == client_view
        out += tracker.feed(egress, data, ts)
    if close and chunks:
        out += tracker.close(chunks[-1][1])
    return out


@pytest.fixture
def load() -> Callable[[str], Chunks]:
    return fixture_chunks
