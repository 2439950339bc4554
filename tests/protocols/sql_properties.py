"""What the MySQL and PostgreSQL property tests share: settings, a strict runner, chunk splits and
mutations of real captures."""

from __future__ import annotations

import os
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols.common import ParserConfig, ProtocolParser, Side
from tests.protocols.conftest import Chunks, bytewise, fixture_chunks, split_chunks

SETTINGS = settings(
    max_examples=int(os.environ.get("APPTRACE_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
SMALL = ParserConfig(max_body=64, max_buffer=4096, max_pending=8, request_timeout_ns=10**9)


def strict_runner(parser_class: type[ProtocolParser]) -> Callable:
    def strict_run(chunks: Chunks, config: ParserConfig | None = None, gaps: frozenset[int] = frozenset()):
        """Feed through ``_feed`` so that a bug raises here instead of being counted as a parse error."""
        p = parser_class(config)
        out = []
        for i, (side, ts, data) in enumerate(chunks):
            if i in gaps:
                out += p.gap(side, len(data), ts)
                continue
            out += p._feed(side, data, ts)
            out += p.expire(ts)
            for s in p._streams.values():
                assert len(s.buf) <= s.cap + 5
        out += p.close(chunks[-1][1] if chunks else 0)
        assert all(r.table == p.table for r in out)
        return out, p

    return strict_run


@st.composite
def splits(draw, chunks: Chunks) -> Chunks:
    cuts = [draw(st.lists(st.integers(1, max(len(d) - 1, 1)), max_size=6)) for _, _, d in chunks]
    return split_chunks(chunks, lambda i, d: cuts[i])


def mutations(fixtures: list[str]) -> Callable:
    """A strategy of real captures from ``fixtures`` with a few bytes flipped, inserted, cut or moved."""

    @st.composite
    def mutated(draw) -> Chunks:
        chunks = list(fixture_chunks(draw(st.sampled_from(fixtures))))
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(chunks) - 1))
            side, ts, data = chunks[i]
            pos = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "drop", "swap"]))
            if op == "flip" and pos < len(data):
                data = data[:pos] + bytes([data[pos] ^ draw(st.integers(1, 255))]) + data[pos + 1 :]
            elif op == "insert":
                data = data[:pos] + draw(st.binary(min_size=1, max_size=20)) + data[pos:]
            elif op == "delete":
                data = data[:pos] + data[pos + draw(st.integers(1, 20)) :]
            elif op == "truncate":
                data = data[:pos]
            elif op == "drop":
                data = b""
            elif op == "swap":
                side = side.other
            chunks[i] = (side, ts, data)
        return [c for c in chunks if c[2]]

    return mutated


def property_tests(parser_class: type[ProtocolParser], fixtures: list[str], framed: Callable) -> dict[str, Callable]:
    """The property tests both SQL parsers must pass; a test module adds them to its globals for pytest."""
    strict_run = strict_runner(parser_class)
    mutated = mutations(fixtures)

    @SETTINGS
    @given(framed())
    def test_framed_random_messages_never_raise(chunks) -> None:
        strict_run(chunks, SMALL)

    @SETTINGS
    @given(st.lists(st.tuples(st.sampled_from(list(Side)), st.binary(max_size=300)), max_size=12))
    def test_random_bytes_never_raise(pieces) -> None:
        strict_run([(side, i, data) for i, (side, data) in enumerate(pieces) if data], SMALL)

    @SETTINGS
    @given(mutated())
    def test_mutated_captures_never_raise(chunks) -> None:
        strict_run(chunks)
        strict_run(chunks, SMALL)

    @SETTINGS
    @given(st.data())
    def test_gaps_anywhere_never_raise(data) -> None:
        chunks = fixture_chunks(data.draw(st.sampled_from(fixtures)))
        gaps = frozenset(data.draw(st.lists(st.integers(0, len(chunks) - 1), max_size=3)))
        recs, _ = strict_run(chunks, gaps=gaps)
        whole, _ = strict_run(chunks)
        assert len(recs) <= len(whole)

    @SETTINGS
    @given(st.data())
    def test_chunking_never_changes_records(data) -> None:
        chunks = fixture_chunks(data.draw(st.sampled_from(fixtures)))
        whole, p = strict_run(chunks)
        assert p.stats.parse_errors == 0
        split, q = strict_run(data.draw(splits(chunks)))
        assert split == whole
        assert q.stats.as_dict() == p.stats.as_dict()

    def test_byte_by_byte_gives_the_same_records() -> None:
        for rel in fixtures:
            chunks = fixture_chunks(rel)
            whole, _ = strict_run(chunks)
            assert whole
            assert strict_run(bytewise(chunks))[0] == whole

    return {name: fn for name, fn in locals().items() if name.startswith("test_")}
