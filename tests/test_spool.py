"""The spool between capture and analysis: order, segment hand-over, the cap, damage, leftovers."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptrace.analysis.replay import replay_file
from apptrace.analysis.sinks import ListSink
from apptrace.common.units import parse_size
from apptrace.contract.annotations import Losses, ProcessSeen
from apptrace.contract.events import DATA_HDR, EV_CLOSE, EV_DATA, META
from apptrace.contract.rawfile import CaptureHeader, RawFormatError, RawWriter
from apptrace.contract.spool import END_MARKER, LOCK, SpoolInUse, SpoolReader, SpoolWriter, remove_spool

ROOT = Path(__file__).resolve().parent.parent
HEADER = CaptureHeader(clock_offset_ns=0, max_capture_per_call=1 << 20, max_body=1024)


def data_record(pid: int, fd: int, payload: bytes, pos: int = 0) -> bytes:
    hdr = DATA_HDR.pack(EV_DATA, 0, 1, 1, pid, pid, fd, 1000 + pos, 0xAB, pos, len(payload), 0, len(payload), 0)
    return hdr + payload


def close_record(pid: int, fd: int) -> bytes:
    return META.pack(EV_CLOSE, pid, pid, fd, 5, 0, 0, 0, 0, 0, b"", b"", -1, 0, b"")


def ring_run(*records: bytes) -> bytes:
    """Records as the kernel's ring holds them: an 8-byte header each (length, page offset), padded to 8."""
    return b"".join(len(r).to_bytes(4, "little") + bytes(4) + r + bytes(-len(r) % 8) for r in records)


def drain(reader: SpoolReader) -> list:
    """Everything the reader has now; the segments it finished are deleted, as a commit would."""
    out = []
    while batch := reader.read():
        out.extend(batch)
    reader.release(reader.take_done())
    return out


def test_reader_follows_the_writer_across_segments_in_order(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30, segment_bytes=4096)
    r = SpoolReader(spool)
    sent, got = [], []
    for i in range(2000):
        rec = data_record(7, 3, f"payload {i} ".encode() * (i % 7), pos=i)
        w.event(rec)
        sent.append((0, rec))
        if i % 100 == 0:
            w.annotation(ProcessSeen(7, comm=f"n{i}"))
            sent.append((1, ProcessSeen(7, comm=f"n{i}")))
        if i % 37 == 0:
            w.flush()
            got.extend(drain(r))  # reads what was flushed, never a half frame
    w.close()
    got.extend(drain(r))
    assert got == sent
    assert r.finished
    assert w.seq > 10, "the test should have crossed many segments"
    assert sorted(os.listdir(spool)) == [END_MARKER, LOCK], "consumed segments are deleted"
    remove_spool(spool)
    assert not os.path.exists(spool)


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=60),
       flush_every=st.integers(1, 9), segment=st.integers(200, 20000))
def test_any_interleaving_of_writes_flushes_and_reads_loses_nothing(tmp_path_factory, sizes, flush_every, segment):
    spool = str(tmp_path_factory.mktemp("spool") / "s")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30, segment_bytes=segment)
    r = SpoolReader(spool)
    sent, got = [], []
    for i, n in enumerate(sizes):
        rec = data_record(1, 4, bytes([i % 251]) * n, pos=i)
        w.event(rec)
        sent.append(rec)
        if i % flush_every == 0:
            w.flush()
            got.extend(p for _, p in drain(r))
    w.close()
    got.extend(p for _, p in drain(r))
    assert got == sent and r.finished


@settings(max_examples=30, deadline=None)
@given(batches=st.lists(st.lists(st.integers(0, 700), min_size=0, max_size=12), min_size=1, max_size=30),
       segment=st.integers(300, 20000))
def test_runs_come_out_as_the_records_they_hold_in_order(tmp_path_factory, batches, segment):
    spool = str(tmp_path_factory.mktemp("spool") / "s")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30, segment_bytes=segment)
    r = SpoolReader(spool)
    sent, got = [], []
    pos = 0
    for i, sizes in enumerate(batches):
        records = [data_record(2, 5, bytes([(pos + j) % 251]) * n, pos=pos + j) for j, n in enumerate(sizes)]
        pos += len(sizes)
        if records:
            w.run(ring_run(*records), len(records), sum(map(len, records)))
            sent.extend(records)
        if i % 3 == 0:  # records one at a time, between the runs
            w.event(close_record(2, i))
            sent.append(close_record(2, i))
        w.flush()
        got.extend(p for _, p in drain(r))
    w.close()
    got.extend(p for _, p in drain(r))
    assert got == sent and r.finished
    assert w.frames == len(sent)


def test_past_the_cap_runs_are_dropped_and_counted(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1000)
    kept = [data_record(5, 3, b"x" * 200, pos=i * 200) for i in range(6)]
    w.run(ring_run(*kept), 6, sum(map(len, kept)))
    w.flush()
    assert w.check_backlog() > 1000 and w.full
    dropped = [data_record(5, 3, b"y" * 50, pos=1200 + i * 50) for i in range(3)]
    w.run(ring_run(*dropped), 3, sum(map(len, dropped)))
    w.event(close_record(5, 3))
    w.close()
    assert (w.dropped_events, w.dropped_bytes) == (3, 3 * (DATA_HDR.size + 50))
    assert [p for _, p in drain(SpoolReader(spool))] == [*kept, close_record(5, 3)]


def test_version_1_files_still_replay_and_a_run_cut_short_keeps_its_whole_records(tmp_path):
    http = [b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"]
    old = tmp_path / "v1.raw"
    body = b"".join(struct.pack("<BI", 0, len(rec)) + rec for rec in
                    (data_record(9, 3, http[0]), data_record(9, 3, http[1], pos=len(http[0]))))
    old.write_bytes(b"APPTRACE-RAW 1\n" + HEADER.line() + body)
    pipeline, error = replay_file(str(old), ListSink())
    assert error is None and pipeline.totals.events == 2

    records = [data_record(9, 3, b"x" * 100, pos=i * 100) for i in range(5)]
    run = ring_run(*records)
    cut = tmp_path / "cut.raw"
    w = RawWriter(str(cut), HEADER)
    w.run(run, 5, len(run))
    w.close()
    data = cut.read_bytes()
    cut.write_bytes(data[:-(len(run) - 3 * (8 + len(records[0]) + 4) - 20)])  # 20 bytes into the 4th record
    pipeline, error = replay_file(str(cut), ListSink())
    assert "truncated" in error and pipeline.totals.events == 3


def test_past_the_cap_data_records_are_dropped_and_counted_but_meta_kept(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1500)
    for i in range(10):
        w.event(data_record(5, 3, b"x" * 100, pos=i * 100))
    w.flush()
    assert w.check_backlog() > 1500 and w.full
    for i in range(10, 15):
        w.event(data_record(5, 3, b"y" * 100, pos=i * 100))
    w.event(close_record(5, 3))
    w.annotation(Losses(backlog_dropped_events=w.dropped_events))
    w.close()
    assert w.dropped_events == 5 and w.dropped_bytes == 5 * (DATA_HDR.size + 100)
    frames = drain(SpoolReader(spool))
    kinds = [p[0] for k, p in frames if k == 0]
    assert kinds.count(EV_DATA) == 10 and kinds.count(EV_CLOSE) == 1


def _die_writing(spool: str, tail: bytes = b"") -> None:
    """A writer killed (os._exit) after one request, optionally with ``tail`` appended as a half-written frame."""
    code = ("import os, sys; from apptrace.contract.spool import SpoolWriter; from tests.test_spool import HEADER, "
            "data_record; w = SpoolWriter(sys.argv[1], HEADER, max_bytes=1 << 30); "
            "w.event(data_record(9, 3, b'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')); w.flush(); "
            "os.write(w._fd, bytes.fromhex(sys.argv[2])); os._exit(9)")
    died = subprocess.run([sys.executable, "-c", code, spool, tail.hex()], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert died.returncode == 9, died.stderr  # killed: no END marker, its lock gone with it


def test_a_spool_left_by_a_crash_is_kept_and_read_first_then_the_new_run(tmp_path):
    spool = str(tmp_path / "spool")
    # The dead writer's last frame is a run cut short inside its third record: the two whole ones are kept.
    records = [data_record(9, 3, b"x" * 100, pos=30 + i * 100) for i in range(3)]
    run = ring_run(*records)
    _die_writing(spool, struct.pack("<BI", 2, len(run)) + run[:-40])
    second = CaptureHeader(clock_offset_ns=5, max_capture_per_call=1 << 20, started=2, host="h")
    w = SpoolWriter(spool, second, max_bytes=1 << 30)
    assert (w.leftover_segments, w.first_seq) == (1, 1) and w.leftover_bytes > 0
    w.event(close_record(9, 3))
    w.close()
    r = SpoolReader(spool, live_run=second.run_id)
    assert r.at_run() and r.run == HEADER.run_id
    first = drain(r)
    assert r.run_over and not r.finished
    assert [p[0] for _, p in first] == [EV_DATA] * 3 and [p for _, p in first][1:] == records[:2]
    assert r.cut_bytes == len(run) - 40 - len(ring_run(*records[:2]))
    assert r.next_run() and r.run == second.run_id and r.header == second
    assert [p for _, p in drain(r)] == [close_record(9, 3)]
    assert r.run_over and r.finished
    assert sorted(os.listdir(spool)) == [END_MARKER, LOCK]


def test_a_dead_writers_segments_are_final_as_they_are(tmp_path):
    spool = str(tmp_path / "spool")
    _die_writing(spool)
    r = SpoolReader(spool, live_run="another run")  # the run being written now is not this one
    assert len(drain(r)) == 1 and r.run_over and r.cut_bytes == 0
    assert not r.next_run(), "nothing follows it yet"


def test_reading_goes_on_from_a_position_and_segments_wait_for_release(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30, segment_bytes=2000)
    sent = [data_record(4, 3, bytes([i]) * 300, pos=i * 300) for i in range(20)]
    for rec in sent[:12]:
        w.event(rec)
    w.flush()
    r = SpoolReader(spool)
    first = [p for _, p in r.read(max_frames=8)]  # segment 0 whole, then into segment 1
    pos, done = r.position(), r.take_done()
    assert done == [0] and pos.seq == 1 and all(os.path.exists(os.path.join(spool, f"{s:08d}.raw")) for s in done), "kept until released"
    r.close()
    again = SpoolReader(spool)  # a restarted analysis, from the committed position
    assert again.at_run()
    again.seek(pos)
    for rec in sent[12:]:
        w.event(rec)
    w.close()
    assert first + [p for _, p in drain(again)] == sent
    assert sorted(os.listdir(spool)) == [END_MARKER, LOCK]


def test_segments_fit_a_small_filesystem_or_a_small_cap(tmp_path):
    from apptrace.contract.spool import MIN_SEGMENT_BYTES, SEGMENT_BYTES, segment_size

    st = os.statvfs(tmp_path)
    fs = st.f_blocks * st.f_frsize
    assert segment_size(str(tmp_path), 1 << 40) == max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, fs // 16))
    assert segment_size(str(tmp_path), 4 << 20) == 512 << 10
    assert segment_size(str(tmp_path), 1) == MIN_SEGMENT_BYTES


def test_a_spool_a_tracer_is_writing_is_refused_with_its_pid(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30)
    w.event(data_record(9, 3, b"abc"))
    w.flush()
    w.note_reader(4242)
    with pytest.raises(SpoolInUse) as e:
        SpoolWriter(spool, HEADER, max_bytes=1 << 30)
    msg = str(e.value)
    assert f"pid {os.getpid()}" in msg and "remove" not in msg, msg
    assert e.value.holders == [os.getpid(), 4242]
    assert os.path.exists(os.path.join(spool, "00000000.raw")), "the running tracer's spool is untouched"
    w.close()


def test_a_segment_ending_inside_a_frame_is_an_error(tmp_path):
    spool = str(tmp_path / "spool")
    w = SpoolWriter(spool, HEADER, max_bytes=1 << 30)
    w.event(data_record(9, 3, b"abc"))
    w.close()
    seg = os.path.join(spool, "00000000.raw")
    with open(seg, "ab") as f:
        f.write(struct.pack("<BI", 0, 500) + b"short")
    with pytest.raises(RawFormatError, match="ends inside a frame"):  # a writer that ended it: damage, not a crash
        drain(SpoolReader(spool))


def test_remove_spool_leaves_other_files_alone(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    w = SpoolWriter(str(tmp_path), HEADER, max_bytes=1 << 30)
    w.close()
    remove_spool(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


@pytest.mark.parametrize(("text", "n"), [("512M", 512 << 20), ("2G", 2 << 30), ("1.5k", 1536), ("4096", 4096),
                                         ("1GiB", 1 << 30)])
def test_parse_size(text, n):
    assert parse_size(text, positive=True) == n


@pytest.mark.parametrize("text", ["", "G", "-1G", "lots", "0"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_size(text, positive=True)


def test_replaying_a_capture_twice_adds_nothing_the_second_time(tmp_path):
    def record(direction: int, payload: bytes, pos: int, ts: int) -> bytes:
        return DATA_HDR.pack(EV_DATA, direction, 1, 1, 77, 77, 3, ts, 0xAB, pos, len(payload), 0, len(payload),
                             0) + payload

    request = b"GET /once HTTP/1.1\r\nHost: x\r\n\r\n"
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    raw = str(tmp_path / "cap.raw")
    w = RawWriter(raw, HEADER)
    w.event(record(0, request, 0, 1000))  # the traced process wrote the request: a client
    w.event(record(1, response, 0, 2000))
    w.event(close_record(77, 3))
    w.close()
    db = str(tmp_path / "r.duckdb")

    def replay() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "apptrace.cli", "replay", raw, "--db", db], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)

    def rows() -> int:
        from apptrace.store.writer import Store

        with Store(db) as s:
            return s.query_arrow("SELECT count(*) AS n FROM http_events").to_pylist()[0]["n"]

    first = replay()
    assert first.returncode == 0, first.stderr
    assert rows() == 1
    again = replay()
    assert again.returncode == 2, again.stderr
    assert len(again.stderr.strip().splitlines()) == 1 and "already replayed" in again.stderr, again.stderr
    assert rows() == 1


def test_a_segment_of_a_run_the_db_is_still_taking_in_is_not_replayed_into_it(tmp_path):
    """Its analysis committed part of it: the tracer finishes it; a replay would store those rows twice."""
    from apptrace.store.writer import Store

    header = CaptureHeader(clock_offset_ns=0, max_capture_per_call=1 << 20, started=7, host="h")
    seg = str(tmp_path / "00000000.raw")
    w = RawWriter(seg, header)
    w.event(data_record(9, 3, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
    w.close()
    db = str(tmp_path / "r.duckdb")
    with Store(db) as s:
        s.flush(checkpoints=[(header.run_id, 0, 40, b"state")])
    out = subprocess.run([sys.executable, "-m", "apptrace.cli", "replay", seg, "--db", db], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "still taking in" in out.stderr and "apptrace trace --db" in out.stderr
    with Store(db) as s:
        s.flush(checkpoints=[(header.run_id, 1, 0, None)])  # the run is analysed whole: replay is the user's call
    again = subprocess.run([sys.executable, "-m", "apptrace.cli", "replay", seg, "--db", db], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
