"""Consume a BPF ring buffer (BPF_MAP_TYPE_RINGBUF) straight from its shared memory.

BCC's consumer goes through libbpf, which calls a ctypes callback for every record: a
Python→C→Python round trip, about 1 µs per record on our 2-vCPU VM. Here the ring is
mapped into this process and read with plain Python, so a record costs one header read,
one slice and one store of the consumer position: 2.5× less (bench/bench_ring_consume.py).
Capture drains in runs (``drain_runs``), whose walk from header to header is in C
(``_ringwalk.c``; ``walk_headers`` is the same walk in Python, where it was not built).

The layout is the kernel's (kernel/bpf/ringbuf.c):

- page 0 of the map, mapped read/write: the consumer position (u64), written only by us;
- page 1: the producer position (u64), written by the kernel;
- then the data area of ``max_entries`` bytes, which the kernel lets us map twice in a
  row, so a record that wraps past the end is still contiguous in our mapping.

Each record starts with an 8-byte header: u32 length, whose top bits say BUSY (still
being written: stop here) and DISCARD (reserved then dropped: skip it), and a u32 page
offset that only the kernel uses. Records are padded to 8 bytes. Positions only grow;
``pos & (max_entries - 1)`` is the offset in the data area.

Memory ordering: the kernel publishes a record by storing its header with release
semantics after the data, and reads our consumer position to know what it may reuse.
The positions and headers are read and written through memoryviews cast to the native
``struct`` formats ``Q`` and ``I`` (same as ``struct.unpack_from('@Q', ...)``, ~20% cheaper
per record: no tuple): CPython copies each item with one fixed-size ``memcpy``, a single
aligned load or store on x86-64, so never torn. x86's total store order gives the acquire
(our header load is not reordered before the producer-position load, nor the data reads
before the header load) and the release (our consumer store is not reordered before the
data reads) that libbpf gets from explicit barriers. Other architectures do not promise
that, so ``SUPPORTED`` is False there and callers keep libbpf's consumer.
"""

from __future__ import annotations

import mmap
import platform
import select
from collections.abc import Callable

from apptrace.contract.rawfile import RING_BUSY, RING_DISCARD, RING_LEN_MASK, RING_RECORD_HEADER

BPF_MAP_TYPE_RINGBUF = 27
BUSY, DISCARD, _LEN_MASK, _HDR = RING_BUSY, RING_DISCARD, RING_LEN_MASK, RING_RECORD_HEADER
MAX_RUN = 1 << 20  # bytes of ring handed out in one run by drain_runs

try:
    # The header walk in C (_ringwalk.c): most of capture's CPU under small records when done in Python.
    from apptrace.capture import _ringwalk
except ImportError:  # not built (no compiler at install): walk_headers does the same, slower
    _ringwalk = None  # type: ignore[assignment]
RUN, RECORD = 0, 1  # segment kinds, as _ringwalk.RUN and _ringwalk.RECORD
NATIVE_WALK = _ringwalk is not None

# Plain loads and stores are only enough under x86's memory model (see the module doc).
SUPPORTED = platform.machine() in ("x86_64", "AMD64")


def walk_headers(hdr: memoryview, start: int, mask: int, cons: int, prod: int, plain_type: int, type_word: int,
                 flags_word: int, max_run: int) -> tuple[list[tuple[int, int, int, int, int]], int]:
    """``_ringwalk.walk`` in Python, over ``hdr`` (the mapping cast to u32 words): where the C module was not built.

    Same segments, same end: (RUN, begin, end, records, payload bytes) for consecutive plain records up to
    ``max_run`` ring bytes, (RECORD, begin, end, 1, payload bytes) for any other committed record; discarded
    records are skipped and end the run before them; the walk ends at ``prod`` or at the first BUSY record.
    """
    segments: list[tuple[int, int, int, int, int]] = []
    run_start = cons
    run_records = run_bytes = 0
    while cons < prod:
        off = start + (cons & mask)
        word = hdr[off >> 2]
        if word < DISCARD:
            size = (word + _HDR + 7) & ~7
            i = (off >> 2) + 2
            if hdr[i + type_word] & 0xFF == plain_type and not hdr[i + flags_word]:
                if cons - run_start + size > max_run and run_records:
                    segments.append((RUN, run_start, cons, run_records, run_bytes))
                    run_start, run_records, run_bytes = cons, 0, 0
                cons += size
                run_records += 1
                run_bytes += word
                continue
            if run_records:
                segments.append((RUN, run_start, cons, run_records, run_bytes))
            segments.append((RECORD, cons, cons + size, 1, word))
            cons += size
        elif word & BUSY:
            break  # records commit out of order across CPUs, but are consumed in order
        else:
            if run_records:
                segments.append((RUN, run_start, cons, run_records, run_bytes))
            cons += ((word & _LEN_MASK) + _HDR + 7) & ~7
        run_start, run_records, run_bytes = cons, 0, 0
    if run_records:
        segments.append((RUN, run_start, cons, run_records, run_bytes))
    return segments, cons


def map_info(map_fd: int) -> dict[str, int]:
    """The kernel's description of a BPF map (type, max_entries, ...) from /proc/self/fdinfo."""
    out: dict[str, int] = {}
    with open(f"/proc/self/fdinfo/{map_fd}") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            try:
                out[key] = int(value, 0) if value.startswith("0x") else int(value)
            except ValueError:
                continue
    return out


class RingReader:
    """A consumer of one BPF ring buffer, given its map fd.

    ``poll(timeout_ms, on_record)`` waits on epoll like libbpf's ``ring_buffer__poll``, then
    drains: ``on_record(data)`` is called once per record, in order, with the record's
    bytes; returning True stops the drain after that record (it stays consumed), and the
    rest comes on the next call.
    """

    def __init__(self, map_fd: int, max_entries: int | None = None) -> None:
        if not SUPPORTED:
            raise OSError(f"RingReader needs x86-64's memory ordering; this is {platform.machine()}")
        info = map_info(map_fd)
        if info.get("map_type") != BPF_MAP_TYPE_RINGBUF:
            raise ValueError(f"fd {map_fd} is not a BPF ring buffer (map_type {info.get('map_type')})")
        size = info["max_entries"]
        if max_entries is not None and max_entries != size:
            raise ValueError(f"ring buffer has {size} bytes, expected {max_entries}")
        self.size = size
        page = mmap.PAGESIZE
        self._data_start = page
        self._mask = size - 1
        # The kernel only lets the consumer page be mapped writable; everything else read-only.
        self._cons_mm = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data_mm = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._cons_mm.close()
            raise
        self._epoll = select.epoll()
        # Level-triggered, as libbpf does: a ring left non-empty stays ready for the next wait.
        self._epoll.register(map_fd, select.EPOLLIN)
        # Views keep the mmaps from closing: all are released in close().
        data = memoryview(self._data_mm)
        cons = memoryview(self._cons_mm)
        self._hdr = data.cast("I")  # headers are 8-aligned: index = byte offset >> 2
        self._prod = data[:8].cast("Q")
        self._cons = cons[:8].cast("Q")
        self._views = [self._hdr, self._prod, self._cons, data, cons]
        self._stopped_early = False
        self.closed = False

    def fileno(self) -> int:
        """The epoll fd: readable when the kernel has woken the ring (for use in another event loop)."""
        return self._epoll.fileno()

    def also_wake_on(self, fd: int) -> None:
        """Let ``wait`` return when ``fd`` is readable too (another ring: the pause reports)."""
        self._epoll.register(fd, select.EPOLLIN)

    def pending(self) -> int:
        """Bytes (headers and padding included) the kernel has produced that nobody has consumed."""
        return self._prod[0] - self._cons[0]

    def poll(self, timeout_ms: int, on_record: Callable[[bytes], object]) -> int:
        """Wait up to ``timeout_ms`` (negative: forever) for a wake-up, then drain. Returns records delivered."""
        # The BPF side wakes us only every Nth record, so a timeout is normal and we drain
        # regardless. After a drain the callback stopped, the rest is known to be there:
        # waiting would only add latency.
        self.wait(timeout_ms)
        return self.drain(on_record)

    def wait(self, timeout_ms: int) -> None:
        """Wait up to ``timeout_ms`` (negative: forever) for a wake-up; not at all after a drain that stopped early."""
        if timeout_ms and not self._stopped_early:
            self._epoll.poll(timeout_ms / 1000 if timeout_ms > 0 else -1)

    def drain(self, on_record: Callable[[bytes], object]) -> int:
        """Deliver every committed record now in the ring, without waiting. Returns records delivered.

        The same walk as ``drain_runs`` with no record plain enough for a run, kept as its own loop:
        expressed through ``drain_runs`` it cost 38% more user CPU per record (0.44 against 0.32 µs,
        bench_ring_consume.py, 5 alternated rounds, 2026-12-05). Capture drains in runs; this is
        the consumer the tests and the per-record benchmark use.
        """
        data = self._data_mm
        hdr = self._hdr
        prod_pos = self._prod
        cons_pos = self._cons
        start = self._data_start
        mask = self._mask
        # Read back, not cached: one load per drain, and another consumer (BCC's, in the
        # benchmark) may take turns on the same map.
        cons = cons_pos[0]
        delivered = 0
        self._stopped_early = False
        while True:
            prod = prod_pos[0]
            if cons >= prod:
                return delivered
            while cons < prod:
                off = start + (cons & mask)
                word = hdr[off >> 2]
                if word < DISCARD:
                    # Neither flag set, the common case: word is the length.
                    cons += (word + _HDR + 7) & ~7
                    off += _HDR
                    buf = data[off:off + word]
                    # Released before the callback, not after as in libbpf (which hands out a
                    # pointer into the ring): we hold a copy, so the kernel may reuse the space.
                    cons_pos[0] = cons
                    delivered += 1
                    if on_record(buf):
                        self._stopped_early = True
                        return delivered
                elif word & BUSY:
                    # Records commit out of order across CPUs, but are consumed in order.
                    return delivered
                else:
                    cons += ((word & _LEN_MASK) + _HDR + 7) & ~7
                    cons_pos[0] = cons

    def drain_runs(
        self,
        plain_type: int,
        flags_word: int,
        on_run: Callable[[bytes, int, int], object],
        on_record: Callable[[bytes], object],
        max_run: int = MAX_RUN,
        type_word: int = 0,
    ) -> int:
        """Drain what is committed now, handing out runs of plain records undivided.

        A record is plain when the low byte of its payload's u32 word number ``type_word``
        (its first byte, by default) is ``plain_type`` and word number ``flags_word`` is zero.
        Consecutive plain records go to ``on_run(ring_bytes, records, payload_bytes)`` as the
        ring holds them, 8-byte headers and padding included (``contract.rawfile.split_records`` takes them
        apart), up to ``max_run`` bytes each: one copy and one call for the lot, where
        ``drain`` makes one per record. Any other record goes to ``on_record(data)`` as
        ``drain`` gives it, after the run before it; returning True ends the drain there.

        The producer position is read once: a drain takes at most one ring's worth, so a
        writer faster than us cannot keep this call going. Returns records delivered.
        """
        data = self._data_mm
        start = self._data_start
        mask = self._mask
        cons_pos = self._cons
        self._stopped_early = False
        if _ringwalk is not None:
            segments, end = _ringwalk.walk(data, start, mask, cons_pos[0], self._prod[0], plain_type, type_word,
                                           flags_word, max_run)
        else:
            segments, end = walk_headers(self._hdr, start, mask, cons_pos[0], self._prod[0], plain_type, type_word,
                                         flags_word, max_run)
        delivered = 0
        for kind, begin, stop, records, payload in segments:
            # The double mapping keeps a run that wraps past the end contiguous.
            off = start + (begin & mask)
            if kind == RUN:
                on_run(data[off:off + (stop - begin)], records, payload)
                cons_pos[0] = stop
                delivered += records
            else:
                buf = data[off + _HDR:off + _HDR + payload]
                cons_pos[0] = stop
                delivered += 1
                if on_record(buf):
                    self._stopped_early = True
                    return delivered
        cons_pos[0] = end  # past the discarded records after the last segment
        return delivered

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for view in self._views:
            view.release()
        self._epoll.close()
        self._data_mm.close()
        self._cons_mm.close()

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
