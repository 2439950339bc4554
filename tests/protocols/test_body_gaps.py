"""A gap inside a body whose length is known keeps the row: exact sizes, ``body_incomplete`` set.

Recorded HTTP/1 exchanges (tests/fixtures/http1) and HTTP/2 frames with bytes taken out of a
body and reported as a gap, as the pipeline reports a ring-buffer loss.
"""

from __future__ import annotations

from apptrace.protocols.common import Record, Side
from apptrace.protocols.http1 import Http1Parser
from apptrace.protocols.http2 import Http2Parser

from tests.protocols.conftest import Chunks, feed_parser, fixture_chunks

REQ, RESP = Side.REQUEST, Side.RESPONSE


def with_gap(chunks: Chunks, index: int, start: int, end: int) -> list[tuple[Side, int, bytes | int]]:
    """Chunk ``index`` with its bytes [start, end) lost: (side, ts, bytes) pieces and (side, ts, n) gaps."""
    side, ts, data = chunks[index]
    pieces: list[tuple[Side, int, bytes | int]] = list(chunks[:index])
    if start:
        pieces.append((side, ts, data[:start]))
    pieces.append((side, ts, end - start))
    if end < len(data):
        pieces.append((side, ts, data[end:]))
    return pieces + list(chunks[index + 1 :])


def feed(parser, pieces) -> list[Record]:
    out: list[Record] = []
    for side, ts, data in pieces:
        out += parser.gap(side, data, ts) if isinstance(data, int) else parser.feed(side, data, ts)
    out += parser.close(pieces[-1][1])
    return out


def test_gap_inside_a_content_length_body_keeps_the_row() -> None:
    chunks = fixture_chunks("http1/curl_keepalive.jsonl")
    clean = feed_parser(Http1Parser(), chunks)
    body_at = next(i for i, (s, _, d) in enumerate(chunks) if s is RESP and d.startswith(b'{"ok"'))
    p = Http1Parser()
    records = feed(p, with_gap(chunks, body_at, 10, 20))
    assert len(records) == len(clean) == 4
    json_row = records[1].fields
    assert json_row["req_path"] == "/json" and json_row["resp_status"] == 200
    assert json_row["resp_body_size"] == 32  # Content-Length: the lost bytes count
    assert json_row["resp_body"] == '{"ok": tru'  # what came before the gap, nothing after it
    assert json_row["body_incomplete"] is True
    assert records[1].time_ns == chunks[body_at][1]
    # the other rows are untouched
    for i in (0, 2, 3):
        assert records[i] == clean[i]
        assert records[i].fields["body_incomplete"] is False
    assert p.stats.gap_messages == 0 and p.stats.parse_errors == 0


def test_gap_ending_a_body_exactly_and_one_reaching_past_it() -> None:
    chunks = fixture_chunks("http1/curl_keepalive.jsonl")
    clean = feed_parser(Http1Parser(), chunks)
    body_at = next(i for i, (s, _, d) in enumerate(chunks) if s is RESP and d.startswith(b'{"ok"'))
    records = feed(Http1Parser(), with_gap(chunks, body_at, 12, 32))
    assert [r.fields["req_path"] for r in records] == ["/hello", "/json", "/slow", "/missing"]
    assert records[1].fields["body_incomplete"] is True and records[1].fields["resp_body_size"] == 32
    assert records[2:] == clean[2:]
    # The gap runs on into the next response's head: the /json row is kept, /slow's answer is
    # lost with it (its request goes too, counted in gap_messages), and /missing pairs as before.
    merged = [*chunks[:body_at], (RESP, chunks[body_at][1], chunks[body_at][2] + chunks[body_at + 2][2]),
              *chunks[body_at + 3 :]]  # fmt: skip
    merged.insert(body_at, chunks[body_at + 1])  # /slow's request before the merged response bytes
    p = Http1Parser()
    records = feed(p, with_gap(merged, body_at + 1, 20, 32 + 40))
    by_path = {r.fields["req_path"]: r.fields for r in records}
    assert by_path["/json"]["resp_body_size"] == 32 and by_path["/json"]["body_incomplete"] is True
    assert "/slow" not in by_path
    assert by_path["/missing"]["resp_status"] == 404 and by_path["/missing"]["body_incomplete"] is False
    assert p.stats.gap_messages == 1


def test_gap_inside_a_chunk_of_a_chunked_body() -> None:
    chunks = fixture_chunks("http1/pipelined.jsonl")
    clean = feed_parser(Http1Parser(), chunks)
    at = next(i for i, (s, _, d) in enumerate(chunks) if s is RESP and d.startswith(b"7\r\nsecond"))
    p = Http1Parser()
    records = feed(p, with_gap(chunks, at, 5, 8))  # "co" of "second" lost
    assert len(records) == len(clean)
    changed = [i for i, (a, b) in enumerate(zip(records, clean, strict=True)) if a != b]
    assert len(changed) == 1
    row, before = records[changed[0]].fields, clean[changed[0]].fields
    assert row["body_incomplete"] is True
    assert row["resp_body_size"] == before["resp_body_size"]
    assert before["resp_body"].startswith(row["resp_body"]) and len(row["resp_body"]) < len(before["resp_body"])
    assert p.stats.parse_errors == 0


def test_gap_across_a_chunk_end_still_loses_the_message() -> None:
    """Past a chunk's end the chunked framing is gone: the message is dropped and counted, as before."""
    chunks = fixture_chunks("http1/pipelined.jsonl")
    at = next(i for i, (s, _, d) in enumerate(chunks) if s is RESP and d.startswith(b"7\r\nsecond"))
    p = Http1Parser()
    records = feed(p, with_gap(chunks, at, 5, 12))
    assert p.stats.gap_messages == 1
    assert all(r.fields["body_incomplete"] is False for r in records)


def test_request_body_gap_keeps_the_request() -> None:
    body = b"x" * 5000
    p = Http1Parser()
    head = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n"
    out = p.feed(REQ, head + body[:100], 1) + p.gap(REQ, 4000, 2) + p.feed(REQ, body[4100:], 3)
    out += p.feed(RESP, b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 4)
    assert len(out) == 1
    row = out[0].fields
    assert row["req_body_size"] == 5000 and row["body_incomplete"] is True and row["resp_status"] == 201


def test_http2_gap_inside_a_data_frame_keeps_the_stream() -> None:
    """curl's recorded h2 session and nghttp's, with the middle of a response DATA frame lost."""
    for name in ("http2/curl_h2c.jsonl", "http2/nghttp_multi.jsonl"):
        chunks = fixture_chunks(name)
        clean = feed_parser(Http2Parser(), chunks)
        at, start, sid = next(
            (i, o, sid) for i, (side, _, data) in enumerate(chunks) if side is RESP
            for o, ftype, length, sid in frames(data) if ftype == 0 and length > 20
        )  # fmt: skip
        p = Http2Parser()
        records = feed(p, with_gap(chunks, at, start + 9 + 5, start + 9 + 15))
        assert len(records) == len(clean), name
        row = next(r.fields for r in records if r.fields["stream_id"] == sid)
        before = next(r.fields for r in clean if r.fields["stream_id"] == sid)
        assert row["body_incomplete"] is True
        assert row["resp_body_size"] == before["resp_body_size"] > 0
        assert row["resp_status"] == before["resp_status"]
        assert sum(r.fields["body_incomplete"] for r in records) == 1, name
        assert p.stats.parse_errors == 0 and p.stats.gap_messages == 0


def frames(data: bytes) -> list[tuple[int, int, int, int]]:
    """(offset, type, payload length, stream id) of the whole frames at the start of ``data``."""
    out, o = [], 0
    while o + 9 <= len(data):
        length = int.from_bytes(data[o : o + 3], "big")
        out.append((o, data[o + 3], length, int.from_bytes(data[o + 5 : o + 9], "big") & 0x7FFFFFFF))
        o += 9 + length
    return out


def test_close_cutting_a_body_of_known_length_keeps_the_row() -> None:
    """The last records of a download lost: nothing comes after them to show a gap, only the close."""
    chunks = fixture_chunks("http1/curl_keepalive.jsonl")
    body_at = next(i for i, (s, _, d) in enumerate(chunks) if s is RESP and d.startswith(b'{"ok"'))
    side, ts, data = chunks[body_at]
    p = Http1Parser()
    records = feed_parser(p, [*chunks[:body_at], (side, ts, data[:7])], close=False) + p.close(ts + 5)
    row = records[-1].fields
    assert (row["req_path"], row["resp_body_size"], row["resp_body"], row["body_incomplete"]) == (
        "/json", 32, '{"ok": ', True)
    assert records[-1].time_ns == ts + 5 and p.stats.evicted == 0
