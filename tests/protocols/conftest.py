"""Helpers shared by the HTTP/HTTP2/gRPC/tracker/inference tests: load fixtures, feed them in pieces."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pytest
from apptrace.protocols.common import ProtocolParser, Record, Side
from hypothesis import strategies as st

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


@st.composite
def splits(draw, chunks: Chunks) -> Chunks:
    """The same chunks cut at up to six random places each."""
    cuts = [draw(st.lists(st.integers(1, max(len(d) - 1, 1)), max_size=6)) for _, _, d in chunks]
    return split_chunks(chunks, lambda i, d: cuts[i])


MUTATION_OPS = ("flip", "insert", "delete", "truncate")


def mutations(fixtures: list[str], *, ops: tuple[str, ...] = MUTATION_OPS, max_delete: int = 30,
              drop_empty: bool = False) -> Callable:
    """A strategy of real captures from ``fixtures`` with a few bytes flipped, inserted, cut or
    truncated; with ops "drop" and "swap" also chunks emptied or sent by the other side."""

    @st.composite
    def mutated(draw) -> Chunks:
        chunks = list(fixture_chunks(draw(st.sampled_from(fixtures))))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(chunks) - 1))
            side, ts, data = chunks[i]
            pos = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(list(ops)))
            if op == "flip" and pos < len(data):
                data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
            elif op == "insert":
                data = data[:pos] + draw(st.binary(min_size=1, max_size=20)) + data[pos:]
            elif op == "delete":
                data = data[:pos] + data[pos + draw(st.integers(1, max_delete)) :]
            elif op == "truncate":
                data = data[:pos]
            elif op == "drop":
                data = b""
            elif op == "swap":
                side = side.other
            chunks[i] = (side, ts, data)
        return [c for c in chunks if c[2]] if drop_empty else chunks

    return mutated


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
