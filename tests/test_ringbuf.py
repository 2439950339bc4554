"""apptrace.capture.ringbuf.RingReader against a real BPF ring buffer.

The fixture program writes one record per getppid() from the processes in ``traced``,
into a 2-page ring so that the tests wrap it many times. Record ``seq`` (per process,
counted in BPF) is fully determined by ``seq``: its size, its kind and every byte, so
the tests check each record intact, in order and with nothing missing. Every 7th record
is reserved then discarded (the reader must skip it), and some are reserved and
submitted rather than copied with ringbuf_output.
"""

from __future__ import annotations

import ctypes
import os
import select
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptrace.capture import ringbuf
from apptrace.contract.rawfile import complete_records, split_records

RING_PAGES = 2
RING_BYTES = RING_PAGES * 4096
MAXSZ = 512  # power of two: the verifier bounds the copy with a mask
HDR = 16  # seq, size, tgid, kind
FIXED = 48  # size of the reserved records

BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>
#define RB_NO_WAKEUP 1
#define RB_FORCE_WAKEUP 2
#define MAXSZ __MAXSZ__

struct hdr { u32 seq; u32 size; u32 tgid; u32 kind; };
struct fixed { struct hdr h; u8 body[__FIXED__ - sizeof(struct hdr)]; };
struct scratch_buf { u8 buf[MAXSZ]; };
struct pattern_buf { u8 b[2 * MAXSZ]; };

BPF_RINGBUF_OUTPUT(rb, __PAGES__);
BPF_HASH(traced, u32, u8);
BPF_HASH(seqs, u32, u32);
BPF_ARRAY(drops, u64, 2);      // [0] records that would have been delivered, [1] would-be discards
BPF_ARRAY(wake_every, u32, 1); // 0: never force a wake-up
BPF_ARRAY(slow, u32, 1);       // 1: hold each reserved record a while before submitting it
struct spin_buf { u8 b[4096]; };
BPF_PERCPU_ARRAY(spin, struct spin_buf, 2);
BPF_PERCPU_ARRAY(scratch, struct scratch_buf, 1);
BPF_ARRAY(pattern, struct pattern_buf, 1);  // bytes 0..255, repeated

static __always_inline void drop(int kind) {
    u64 *d = drops.lookup(&kind);
    if (d)
        __sync_fetch_and_add(d, 1);
}

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!traced.lookup(&tgid))
        return 0;
    u32 zero = 0, seq = 0;
    u32 *c = seqs.lookup(&tgid);
    if (c)
        seq = *c;
    u32 next = seq + 1;
    seqs.update(&tgid, &next);
    u32 *w = wake_every.lookup(&zero);
    u32 every = w ? *w : 0;
    u64 flags = (every && seq % every == every - 1) ? RB_FORCE_WAKEUP : RB_NO_WAKEUP;

    if (seq % 7 == 3 || seq % 7 == 5) {
        struct fixed *f = rb.ringbuf_reserve(sizeof(struct fixed));
        if (!f) {
            drop(seq % 7 == 3);
            return 0;
        }
        f->h.seq = seq;
        f->h.size = sizeof(struct fixed);
        f->h.tgid = tgid;
        f->h.kind = 1;
        for (int i = 0; i < sizeof(f->body); i++)
            f->body[i] = (u8)(seq + sizeof(struct hdr) + i);
        u32 *sl = slow.lookup(&zero);
        if (sl && *sl) {
            // Busy work while the record is reserved, so a consumer on another CPU sees
            // its header BUSY (bpf_loop would be cleaner, but BCC 0.26 cannot pass it a callback).
            u32 one = 1;
            struct spin_buf *src = spin.lookup(&zero), *dst = spin.lookup(&one);
            if (src && dst) {
                #pragma unroll
                for (int k = 0; k < 128; k++)
                    bpf_probe_read_kernel(dst->b, sizeof(dst->b), src->b);
            }
        }
        if (seq % 7 == 3)
            rb.ringbuf_discard(f, flags);
        else
            rb.ringbuf_submit(f, flags);
        return 0;
    }

    struct scratch_buf *s = scratch.lookup(&zero);
    if (!s)
        return 0;
    u64 size = sizeof(struct hdr) + (seq * 37) % (MAXSZ - 32);
    struct hdr *h = (struct hdr *)s->buf;
    h->seq = seq;
    h->size = size;
    h->tgid = tgid;
    h->kind = 0;
    // The body is copied from a pattern user space filled in: a byte loop here gets
    // unrolled by clang into a shape the verifier cannot bound.
    struct pattern_buf *p = pattern.lookup(&zero);
    if (!p)
        return 0;
    u64 body = size - sizeof(struct hdr);
    asm volatile("" : "+r"(body));  // clang knows the bound below holds and would drop it
    if (body > MAXSZ - 32)
        body = MAXSZ - 32;
    bpf_probe_read_kernel(s->buf + sizeof(struct hdr), body, p->b + ((seq + sizeof(struct hdr)) & 0xFF));
    u64 n = size;
    asm volatile("" : "+r"(n));
    if (n > MAXSZ - 1)
        n = MAXSZ - 1;
    n &= MAXSZ - 1;
    if (rb.ringbuf_output(s, n, flags) != 0)
        drop(0);
    return 0;
}
"""


def expected(seq: int, tgid: int) -> bytes | None:
    """The record the fixture program writes for ``seq``; None for the discarded ones."""
    if seq % 7 == 3:
        return None
    if seq % 7 == 5:
        size, kind = FIXED, 1
    else:
        size, kind = HDR + (seq * 37) % (MAXSZ - 32), 0
    head = seq.to_bytes(4, "little") + size.to_bytes(4, "little") + tgid.to_bytes(4, "little") + \
        kind.to_bytes(4, "little")
    start = (seq + HDR) & 0xFF
    return head + _PATTERN[start:start + size - HDR]


_PATTERN = bytes(range(256)) * (MAXSZ // 256 + 2)


def parse(buf: bytes) -> tuple[int, int, int]:
    """(seq, tgid, size claimed by the record)"""
    return (int.from_bytes(buf[0:4], "little"), int.from_bytes(buf[8:12], "little"),
            int.from_bytes(buf[4:8], "little"))


class Fixture:
    def __init__(self) -> None:
        from bcc import BPF

        text = BPF_TEXT.replace("__MAXSZ__", str(MAXSZ)).replace("__FIXED__", str(FIXED))
        self.bpf = BPF(text=text.replace("__PAGES__", str(RING_PAGES)).encode())
        self.map_fd = self.bpf[b"rb"].map_fd
        pattern = self.bpf[b"pattern"]
        leaf = pattern.Leaf()
        ctypes.memmove(ctypes.addressof(leaf), _PATTERN, 2 * MAXSZ)
        pattern[ctypes.c_int(0)] = leaf

    def reset(self, wake_every: int = 0, slow: bool = False) -> None:
        self.bpf[b"slow"][ctypes.c_int(0)] = ctypes.c_uint32(int(slow))
        for name in (b"traced", b"seqs"):
            self.bpf[name].clear()
        for i in range(2):
            self.bpf[b"drops"][ctypes.c_int(i)] = ctypes.c_uint64(0)
        self.bpf[b"wake_every"][ctypes.c_int(0)] = ctypes.c_uint32(wake_every)

    def trace(self, pid: int) -> None:
        self.bpf[b"traced"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def count(self, pid: int) -> int:
        key = ctypes.c_uint32(pid)
        return self.bpf[b"seqs"][key].value if key in self.bpf[b"seqs"] else 0

    def drops(self) -> tuple[int, int]:
        return (self.bpf[b"drops"][ctypes.c_int(0)].value, self.bpf[b"drops"][ctypes.c_int(1)].value)

    @staticmethod
    def emit(n: int) -> None:
        for _ in range(n):
            os.getppid()


@pytest.fixture(scope="module")
def prog(ebpf) -> Iterator[Fixture]:  # noqa: ARG001 - ebpf makes it fail loudly
    f = Fixture()
    yield f
    f.bpf.cleanup()


@pytest.fixture
def reader(prog: Fixture) -> Iterator[ringbuf.RingReader]:
    prog.reset()
    r = ringbuf.RingReader(prog.map_fd, RING_BYTES)
    r.drain(lambda buf: False)  # whatever an earlier test left behind
    yield r
    prog.bpf[b"traced"].clear()
    r.close()


def drain_all(reader: ringbuf.RingReader, on_event, per_poll: list[int]) -> None:
    # Bounded: a reader that never advances must fail the test, not hang it.
    for _ in range(1000):
        if not reader.pending():
            return
        per_poll.append(reader.poll(1000, on_event))
    pytest.fail("the ring never emptied")


def check_stream(got: list[bytes], pid: int, upto: int) -> None:
    want = [e for s in range(upto) if (e := expected(s, pid)) is not None]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"record {i} (seq {parse(g)[0]}): {len(g)} bytes, expected seq {parse(w)[0]}, {len(w)} bytes"


def test_supported_here() -> None:
    # The fallback to BCC's consumer is for other architectures; CI must exercise ours.
    assert ringbuf.SUPPORTED
    # And the header walk in C: the Python one is for installs that could not build it.
    assert ringbuf.NATIVE_WALK, "apptrace.capture._ringwalk was not built (scripts/setup.sh builds it)"


@pytest.fixture(params=["native", "python"])
def walker(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """drain_runs with the C header walk, then with the Python one."""
    if request.param == "python":
        monkeypatch.setattr(ringbuf, "_ringwalk", None)
    return request.param


def test_records_intact_in_order_across_many_wraps(prog: Fixture, reader: ringbuf.RingReader) -> None:
    pid = os.getpid()
    prog.trace(pid)
    got: list[bytes] = []
    emitted = 0
    # Worst case 16 records of 504 bytes + header fill the 8 KiB ring exactly: never full.
    for i in range(600):
        batch = 1 + i % 16
        prog.emit(batch)
        emitted += batch
        reader.poll(0, lambda buf: got.append(buf))
        assert reader.pending() == 0
    assert prog.count(pid) == emitted
    assert prog.drops() == (0, 0)
    check_stream(got, pid, emitted)
    ring_bytes = sum((len(b) + 8 + 7) & ~7 for b in got)
    assert ring_bytes > 50 * RING_BYTES  # it did wrap, many times
    assert {len(b) % 8 for b in got} == set(range(8))  # every padding length was exercised


def test_stop_mid_drain_keeps_the_record_and_resumes(prog: Fixture, reader: ringbuf.RingReader) -> None:
    pid = os.getpid()
    prog.trace(pid)
    got: list[bytes] = []
    per_poll: list[int] = []
    taken = 0

    def on_event(buf: bytes) -> bool:
        nonlocal taken
        got.append(buf)
        taken += 1
        return taken % 5 == 0  # stop after every 5th record

    # No wake-ups are forced here, so a poll that waited would sit out its whole timeout:
    # the polls after a stop must not wait (a regression shows as a slow test, not a failure).
    # At most 7 + 8 records of at most 512 bytes are ever in the 8 KiB ring: it never fills.
    emitted = 0
    for i in range(300):
        prog.emit(8)
        emitted += 8
        per_poll.append(reader.poll(0, on_event))
        if i % 2 == 0:
            continue  # leave the rest for a later poll, with more written behind it
        drain_all(reader, on_event, per_poll)
    drain_all(reader, on_event, per_poll)
    assert prog.drops() == (0, 0)
    check_stream(got, pid, emitted)
    assert max(per_poll) == 5
    assert sum(per_poll) == len(got)


def test_full_ring_loses_whole_records_only(prog: Fixture, reader: ringbuf.RingReader) -> None:
    pid = os.getpid()
    prog.trace(pid)
    got: list[bytes] = []
    emitted = 0
    for _ in range(20):
        prog.emit(100)  # far more than the ring holds: most of each batch is dropped
        emitted += 100
        reader.poll(0, lambda buf: got.append(buf))
    lost, lost_discards = prog.drops()
    assert lost > 0
    delivered = sum(expected(s, pid) is not None for s in range(emitted))
    assert len(got) == delivered - lost
    seqs = [parse(b)[0] for b in got]
    assert seqs == sorted(seqs)
    for b in got:
        assert b == expected(parse(b)[0], pid)
    assert lost_discards > 0  # reserve fails too when the ring is full


def test_forced_wakeup_makes_epoll_ready(prog: Fixture, reader: ringbuf.RingReader) -> None:
    pid = os.getpid()
    prog.reset(wake_every=1)
    prog.trace(pid)
    prog.emit(1)
    # A bounded wait, not a timing assertion: the wake-up is delivered by irq_work.
    ready, _, _ = select.select([reader.fileno()], [], [], 30)
    assert ready == [reader.fileno()]
    got: list[bytes] = []
    assert reader.poll(1000, got.append) == 1
    check_stream(got, pid, 1)


def test_records_without_wakeup_are_drained_after_the_timeout(prog: Fixture, reader: ringbuf.RingReader) -> None:
    pid = os.getpid()
    prog.reset(wake_every=0)
    prog.trace(pid)
    prog.emit(3)
    got: list[bytes] = []
    assert reader.poll(50, got.append) == 3  # seq 0, 1, 2: none of them is a discard
    assert reader.poll(50, got.append) == 0
    check_stream(got, pid, 3)


def test_two_cpus_writing_at_once(prog: Fixture, reader: ringbuf.RingReader) -> None:
    # Two processes on two CPUs write concurrently while we drain: records commit out of
    # order (BUSY headers), the reader must still deliver each process's records in order.
    n = 20000
    code = textwrap.dedent(f"""
        import os, sys
        os.sched_setaffinity(0, {{int(sys.argv[1]) % os.cpu_count()}})
        sys.stdin.readline()
        for _ in range({n}):
            os.getppid()
            sum(range(300))  # slow enough that most records are drained, not dropped
    """)
    prog.reset(wake_every=4)  # the 8 KiB ring holds ~30 records: wake well before it fills
    children = [subprocess.Popen([sys.executable, "-c", code, str(cpu)], stdin=subprocess.PIPE) for cpu in (0, 1)]
    for c in children:
        prog.trace(c.pid)
    for c in children:
        assert c.stdin is not None
        c.stdin.write(b"go\n")
        c.stdin.close()
    got: list[bytes] = []
    while any(c.poll() is None for c in children):
        reader.poll(5, got.append)
    reader.poll(0, got.append)
    for c in children:
        assert c.wait() == 0
    by_pid: dict[int, list[bytes]] = {c.pid: [] for c in children}
    for b in got:
        by_pid[parse(b)[1]].append(b)
    lost, _ = prog.drops()
    delivered = 0
    for pid, bufs in by_pid.items():
        count = prog.count(pid)
        assert count >= n
        delivered += sum(expected(s, pid) is not None for s in range(count))
        seqs = [parse(b)[0] for b in bufs]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        for b in bufs:
            assert b == expected(parse(b)[0], pid)
    assert len(got) == delivered - lost


def test_busy_record_stops_the_drain_until_committed(prog: Fixture, reader: ringbuf.RingReader) -> None:
    # A child on one CPU reserves records and holds them ~40 µs before committing; we spin
    # on the other CPU, so the drain meets BUSY headers: it must deliver nothing past them,
    # then pick each record up once it is committed (or skip it, once discarded).
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.fail("this test needs two CPUs", pytrace=False)
    prog.reset(slow=True)
    code = textwrap.dedent(f"""
        import os, sys
        os.sched_setaffinity(0, {{{cpus[0]}}})
        for line in sys.stdin:
            os.getppid()
            sys.stdout.write("done\\n")
            sys.stdout.flush()
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert child.stdin is not None and child.stdout is not None
    prog.trace(child.pid)
    got: list[bytes] = []
    busy_seen = 0
    lines = 0
    os.sched_setaffinity(0, {cpus[1]})
    try:
        # Stop once BUSY was met a few times; a run that never meets it (a descheduled
        # spinner every time) ends after 700 records and fails below.
        while lines < 14 or (lines < 700 and busy_seen < 5):
            child.stdin.write(b"go\n")
            child.stdin.flush()
            lines += 1
            while True:
                waiting = reader.pending()
                before = len(got)
                reader.drain(got.append)
                if waiting and len(got) == before and reader.pending():
                    busy_seen += 1
                if select.select([child.stdout], [], [], 0)[0]:
                    break
            assert child.stdout.readline() == b"done\n"
            reader.drain(got.append)
    finally:
        os.sched_setaffinity(0, cpus)
        child.stdin.close()
        child.wait()
    assert prog.drops() == (0, 0)
    assert prog.count(child.pid) == lines
    check_stream(got, child.pid, lines)
    assert busy_seen > 0


def test_rejects_what_is_not_this_ring(prog: Fixture) -> None:
    with pytest.raises(ValueError, match="not a BPF ring buffer"):
        ringbuf.RingReader(prog.bpf[b"drops"].map_fd)
    with pytest.raises(ValueError, match="expected"):
        ringbuf.RingReader(prog.map_fd, RING_BYTES * 2)
    r = ringbuf.RingReader(prog.map_fd)
    assert r.size == RING_BYTES
    r.close()
    r.close()


def test_runs_hold_the_plain_records_in_order_across_many_wraps(
        prog: Fixture, reader: ringbuf.RingReader, walker: str) -> None:
    # Plain here: kind 0 (the variable-size records). The fixed ones (kind 1) must come one by
    # one, between the runs around them, and the discarded ones must split runs, not appear.
    pid = os.getpid()
    prog.trace(pid)
    got: list[bytes] = []
    runs: list[tuple[int, int]] = []  # (records, ring bytes)
    singles: list[bytes] = []

    def on_run(ring_bytes: bytes, records: int, payload: int) -> None:
        recs = split_records(ring_bytes)
        assert len(recs) == records and sum(map(len, recs)) == payload
        assert all(parse(r)[0] % 7 not in (3, 5) for r in recs)
        runs.append((records, len(ring_bytes)))
        got.extend(recs)

    def on_record(buf: bytes) -> bool:
        singles.append(buf)
        got.append(buf)
        return False

    emitted = 0
    for i in range(600):
        batch = 1 + i % 16
        prog.emit(batch)
        emitted += batch
        reader.wait(0)
        # A small cap, so that runs also end on it, not only at the other records.
        reader.drain_runs(0, 3, on_run, on_record, max_run=1024, type_word=3)
        assert reader.pending() == 0
    assert prog.drops() == (0, 0)
    check_stream(got, pid, emitted)
    assert all(parse(b)[0] % 7 == 5 for b in singles)
    assert max(n for n, _ in runs) > 1
    assert max(size for _, size in runs) <= 1024
    assert sum(size for _, size in runs) > 30 * RING_BYTES  # runs wrapped the ring, many times


def test_a_record_that_stops_the_drain_ends_it_after_the_run_before_it(
        prog: Fixture, reader: ringbuf.RingReader, walker: str) -> None:
    pid = os.getpid()
    prog.trace(pid)
    got: list[bytes] = []
    prog.emit(7)  # seq 0-6: 0,1,2 plain, 3 discarded, 4 plain, 5 fixed, 6 plain
    n = reader.drain_runs(0, 3, lambda run, _n, _b: got.extend(split_records(run)),
                          lambda buf: got.append(buf) or True, type_word=3)
    assert [parse(b)[0] for b in got] == [0, 1, 2, 4, 5]
    assert n == 5
    assert reader.pending() > 0
    reader.drain_runs(0, 3, lambda run, _n, _b: got.extend(split_records(run)), got.append, type_word=3)
    assert reader.pending() == 0
    check_stream(got, pid, 7)


def test_a_run_cut_short_keeps_its_whole_records() -> None:
    def record(payload: bytes) -> bytes:
        return len(payload).to_bytes(4, "little") + bytes(4) + payload + bytes(-len(payload) % 8)

    run = record(b"first") + record(b"second record") + record(b"third")
    assert split_records(run) == [b"first", b"second record", b"third"]
    cut = run[:-6]
    assert complete_records(cut) == ([b"first", b"second record"], len(record(b"first") + record(b"second record")))
    with pytest.raises(ValueError, match="inside a record"):
        split_records(cut)


# A ring as the kernel lays it out, for the two header walks: a page before the data area, the data area
# twice in a row. Each record: (payload bytes, plain or not, state). Plain records have word 0's low byte
# 0x2a and word 3 zero; the others set word 3. States: committed, discarded (reserved then dropped), busy.
_RECORD = st.tuples(st.integers(16, 300), st.booleans(), st.sampled_from(["ok", "ok", "ok", "discard", "busy"]))


def _ring(records: list[tuple[int, bool, str]], size: int, first: int) -> tuple[bytes, int]:
    area = bytearray(size)
    pos = first
    for n, plain, state in records:
        word = n | (ringbuf.DISCARD if state == "discard" else 0) | (ringbuf.BUSY if state == "busy" else 0)
        payload = bytearray((i * 7 + n) & 0xFF for i in range(n))
        payload[0] = 0x2A
        payload[12:16] = (0 if plain else 1).to_bytes(4, "little")
        rec = word.to_bytes(4, "little") + bytes(4) + payload + bytes(-n % 8)
        for i, b in enumerate(rec):
            area[(pos + i) % size] = b
        pos += len(rec)
    return bytes(4096) + bytes(area) + bytes(area), pos


@settings(max_examples=300, deadline=None)
@given(records=st.lists(_RECORD, max_size=40), first=st.integers(0, 511), max_run=st.integers(1, 2000))
def test_the_c_walk_and_the_python_walk_agree(records: list[tuple[int, bool, str]], first: int, max_run: int) -> None:
    from apptrace.capture import _ringwalk

    size = 16384  # holds 40 records of 300 bytes: the walk may wrap, never overrun
    first *= 8
    data, prod = _ring(records, size, first)
    args = (4096, size - 1, first, prod, 0x2A, 0, 3, max_run)
    native = _ringwalk.walk(data, *args)
    python = ringbuf.walk_headers(memoryview(data).cast("I"), *args)
    assert native == python
    segments, end = native
    # Nothing past the first busy record; every committed record once, in order, runs within max_run.
    committed = []
    for n, plain, state in records:
        if state == "busy":
            break
        if state == "ok":
            committed.append((n, plain))
    delivered = []
    for kind, begin, stop, recs, nbytes in segments:
        ring_bytes = data[4096 + (begin & (size - 1)):][:stop - begin]
        if kind == ringbuf.RUN:
            lengths = [len(r) for r in split_records(ring_bytes)]
            assert len(lengths) == recs and sum(lengths) == nbytes
            assert recs == 1 or stop - begin <= max_run
            delivered += [(n, True) for n in lengths]
        else:
            assert recs == 1
            delivered.append((nbytes, False))
    assert delivered == committed
    assert end <= prod


def test_the_c_walk_refuses_a_length_past_the_mapping() -> None:
    from apptrace.capture import _ringwalk

    data = bytes(4096) + (100000).to_bytes(4, "little") + bytes(8188)
    with pytest.raises(ValueError, match="past the mapping"):
        _ringwalk.walk(data, 4096, 4095, 0, 64, 0x2A, 0, 3, 1 << 20)
