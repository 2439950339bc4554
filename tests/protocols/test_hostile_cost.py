"""Hostile bytes cost work in proportion to their size: counted, not timed.

The HTTP/1 reader's searches and copies all go through its buffer's methods and the module's
compiled patterns; here both count the bytes each call reads (a search, from where it starts
to the end of its match or of its range; a slice, its length), so a test can say how many
bytes were read per byte fed. Before
this work, garbage after a malformed head was searched again for every byte the resync
dropped: about 8000 bytes read per byte fed. Each case of bench/bench_hostile.py is fed at
``n``, ``2n`` and ``4n`` bytes: the work must be at most a small constant per byte, and the
second 2n bytes must cost about what twice the n before them did.

For the other parsers, whose loops are Python's own, the count is of function calls
(``sys.setprofile``), at ``n``, ``2n`` and ``4n``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable

import pytest
from apptrace.protocols import ConnectionTracker
from apptrace.protocols.common import Side
from apptrace.protocols.http1 import Http1Parser
from apptrace.protocols.http1 import parse as http1_parse

from bench.bench_hostile import CASES, Pieces

HTTP1_CASES = [name for name in CASES if name.startswith("http1")]
OTHER_CASES = [name for name in CASES if not name.startswith("http1")]
MAX_READ_PER_BYTE = 40  # bytes the HTTP/1 reader may read, per byte fed


class Work:
    bytes_read = 0


class CountingBuffer(bytearray):
    """A reader's buffer that counts what its searches and slices may read."""

    def find(self, sub, start=0, end=None):  # noqa: ANN001, ANN201 - bytearray's own signature
        n = len(self)
        found = super().find(sub, start, n if end is None else end)
        s = max(start + n if start < 0 else start, 0)
        e = n if end is None else min(end + n if end < 0 else end, n)
        # a search reads up to its match, or to its end
        Work.bytes_read += max((found + len(sub) if found >= 0 else e) - s, 0)
        return found

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        Work.bytes_read += len(range(*key.indices(len(self)))) if isinstance(key, slice) else 1
        return super().__getitem__(key)


class CountingPattern:
    """A compiled pattern that counts the bytes each search or match may read."""

    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern = pattern

    def search(self, string, pos=0, endpos=sys.maxsize):  # noqa: ANN001, ANN201
        m = self.pattern.search(string, pos, endpos)
        Work.bytes_read += max((m.end() if m else min(endpos, len(string))) - pos, 0)
        return m

    def match(self, string, pos=0, endpos=sys.maxsize):  # noqa: ANN001, ANN201
        m = self.pattern.match(string, pos, endpos)
        Work.bytes_read += (m.end() - pos if m else 0) + 1
        return m


def http1_bytes_read(make: Callable[[int], Pieces], n: int, monkeypatch: pytest.MonkeyPatch) -> tuple[int, int]:
    """(bytes read, bytes fed) for one hostile connection through the HTTP/1 parser."""
    for name, value in vars(http1_parse).items():
        if isinstance(value, re.Pattern):
            monkeypatch.setattr(http1_parse, name, CountingPattern(value))
    parser = Http1Parser()
    parser.req.buf.buf = CountingBuffer()
    parser.resp.buf.buf = CountingBuffer()
    Work.bytes_read = 0
    fed = 0
    for ts, (egress, data) in enumerate(make(n)):
        # the bench's pieces are a server's view: what it read (egress False) is the request side
        parser.feed(Side.RESPONSE if egress else Side.REQUEST, data, ts)
        fed += len(data)
    parser.close(fed)
    assert type(parser.req.buf.buf) is CountingBuffer and type(parser.resp.buf.buf) is CountingBuffer
    return Work.bytes_read, fed


@pytest.mark.parametrize("case", HTTP1_CASES)
def test_http1_reads_each_hostile_byte_a_bounded_number_of_times(case: str, monkeypatch) -> None:
    # past the first 64 KiB head, so that every size is in the steady state
    n = 80 * 1024
    (read1, fed1), (read2, fed2), (read4, fed4) = (http1_bytes_read(CASES[case], k * n, monkeypatch) for k in (1, 2, 4))
    assert read4 <= MAX_READ_PER_BYTE * fed4, (read4 / fed4, case)
    # and linear: the next 2n bytes cost about twice what the n before them did
    assert read4 - read2 <= 2.3 * (read2 - read1) + 4096, ((read4 - read2) / (read2 - read1), case)


def python_calls(make: Callable[[int], Pieces], n: int) -> int:
    """Function calls (Python's and builtins') made while one hostile connection goes through the
    tracker: inference, then the parser."""
    pieces = list(make(n))
    tracker = ConnectionTracker("server")
    calls = 0

    def profile(frame, event, arg):  # noqa: ANN001, ANN202, ARG001
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1

    sys.setprofile(profile)
    try:
        for ts, (egress, data) in enumerate(pieces):
            tracker.feed(egress, data, ts)
        tracker.close(len(pieces))
    finally:
        sys.setprofile(None)
    return calls


# Big enough to be past each parser's start: a claimed HTTP/2 frame is waited for up to 256 KiB.
OTHER_SIZES = {"http2 junk after the preface": 320 * 1024}


@pytest.mark.parametrize("case", OTHER_CASES)
def test_other_parsers_work_linearly_on_hostile_bytes(case: str) -> None:
    n = OTHER_SIZES.get(case, 24 * 1024)
    one, two, four = (python_calls(CASES[case], k * n) for k in (1, 2, 4))
    assert four - two <= 2.3 * (two - one) + 2000, ((four - two) / max(two - one, 1), case)
