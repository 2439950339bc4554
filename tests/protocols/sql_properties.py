"""What the MySQL and PostgreSQL property tests share: settings, a strict runner and the tests
themselves, over conftest's splits and mutations (here also with chunks dropped or swapped)."""

from __future__ import annotations

import os
from collections.abc import Callable

from apptrace.protocols.common import ParserConfig, ProtocolParser, Side
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.protocols.conftest import MUTATION_OPS, Chunks, bytewise, fixture_chunks, mutations, splits

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


def property_tests(parser_class: type[ProtocolParser], fixtures: list[str], framed: Callable) -> dict[str, Callable]:
    """The property tests both SQL parsers must pass; a test module adds them to its globals for pytest."""
    strict_run = strict_runner(parser_class)
    mutated = mutations(fixtures, ops=(*MUTATION_OPS, "drop", "swap"), max_delete=20, drop_empty=True)

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
