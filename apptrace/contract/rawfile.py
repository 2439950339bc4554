"""The raw capture format: every ring-buffer record, plus what /proc told us, framed on disk.

File layout: the magic line, one JSON header line (``CaptureHeader``), then frames of
``kind:u8 length:u32 payload``. Kind 0 is a ring-buffer record exactly as the kernel wrote it;
kind 1 is an annotation (``annotations``: process info, socket 4-tuple, attached library, loss
counters) that live capture read from /proc and replay cannot; kind 2 (since version 2) is a run
of data records copied from the ring in one piece, the kernel's 8-byte record headers included:
capture copies those without looking at each. Readers take both versions and hand a run out as
the records it holds. ``apptrace trace --raw`` writes this format, and so does each spool segment
(``spool``), so replaying a file runs the same pipeline as live tracing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from apptrace.contract import annotations
from apptrace.contract.annotations import Annotation

MAGIC = b"APPTRACE-RAW 2\n"
MAGICS = (b"APPTRACE-RAW 1\n", MAGIC)  # what readers accept
FRAME = struct.Struct("<BI")
KIND_EVENT, KIND_ANNOTATION, KIND_RING = 0, 1, 2

# The kernel's ring-buffer record header (kernel/bpf/ringbuf.c), as runs keep it: a u32 length whose
# top bits say BUSY (still being written) and DISCARD (reserved, then dropped), and a u32 page
# offset only the kernel uses. Records are padded to 8 bytes.
RING_RECORD_HEADER = 8
RING_BUSY = 1 << 31
RING_DISCARD = 1 << 30
RING_LEN_MASK = RING_DISCARD - 1
_RING_LEN = struct.Struct("<I")

#: what one frame holds: a ring-buffer record (KIND_EVENT) or an annotation (KIND_ANNOTATION)
Item = tuple[int, bytes] | tuple[int, Annotation]


class RawFormatError(Exception):
    """A raw file or spool segment that is not one, or is damaged; one line for the user."""


@dataclass(frozen=True, slots=True)
class CaptureHeader:
    """What replaying a capture needs to know about how it was taken."""

    clock_offset_ns: int = 0  # wall-clock ns minus CLOCK_MONOTONIC ns (the kernel's timestamps)
    max_capture_per_call: int = 1 << 20  # bytes the kernel copies of one SSL call at most
    max_body: int | None = None  # --max-body of the trace; None: the parsers' default
    started: int | None = None  # wall-clock ns
    host: str | None = None

    def line(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode() + b"\n"

    @property
    def run_id(self) -> str:
        """Names the tracer run that wrote the capture: the spool's segments of one run share it."""
        return f"{self.host or ''}:{self.started or 0}"

    @classmethod
    def from_line(cls, line: bytes) -> CaptureHeader:
        obj = json.loads(line)
        if not isinstance(obj, dict):
            raise ValueError("the header is not a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in obj.items() if k in known})


def split_records(run: bytes | memoryview) -> list[bytes]:
    """The records of a run (``RingReader.drain_runs``), each as the kernel wrote it.

    Raises ValueError on a run that ends inside a record; ``complete_records`` says how
    far a damaged run is still good.
    """
    records, end = complete_records(run)
    if end != len(run):
        raise ValueError(f"ring run ends inside a record ({len(run) - end} bytes left over)")
    return records


def complete_records(run: bytes | memoryview) -> tuple[list[bytes], int]:
    """The whole records at the start of ``run``, and the offset where they end."""
    out: list[bytes] = []
    off = 0
    end = len(run)
    mv = memoryview(run)
    hdr = _RING_LEN.unpack_from
    while off + RING_RECORD_HEADER <= end:
        (word,) = hdr(mv, off)
        n = word & RING_LEN_MASK
        size = (n + RING_RECORD_HEADER + 7) & ~7
        if off + RING_RECORD_HEADER + n > end:
            break
        if not word & (RING_BUSY | RING_DISCARD):
            out.append(bytes(mv[off + RING_RECORD_HEADER:off + RING_RECORD_HEADER + n]))
        off = min(off + size, end)
    return out, off


class RawWriter:
    """Writes a raw capture file (``trace --raw``), mode 0600 whatever was there before."""

    def __init__(self, path: str, header: CaptureHeader) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a file that existed keeps its mode through O_CREAT: plaintext is private
        self._f: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self._f.write(MAGIC)
        self._f.write(header.line())
        self.frames = 0

    def event(self, buf: bytes) -> None:
        self._f.write(FRAME.pack(KIND_EVENT, len(buf)))
        self._f.write(buf)
        self.frames += 1

    def run(self, ring_bytes: bytes, records: int, nbytes: int) -> None:
        """A run of data records (``RingReader.drain_runs``) in one frame; ``frames`` counts its records."""
        self._f.write(FRAME.pack(KIND_RING, len(ring_bytes)))
        self._f.write(ring_bytes)
        self.frames += records

    def annotation(self, a: Annotation) -> None:
        payload = annotations.encode(a)
        self._f.write(FRAME.pack(KIND_ANNOTATION, len(payload)))
        self._f.write(payload)
        self.frames += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def frame_items(kind: int, payload: bytes, where: str) -> list[Item]:
    """What one whole frame holds: (KIND_EVENT, record) items, or one (KIND_ANNOTATION, annotation).

    Shared by ``read_raw`` and the spool's reader; ``where`` names the place in errors.
    """
    if kind == KIND_EVENT:
        return [(kind, payload)]
    if kind == KIND_RING:
        try:
            return [(KIND_EVENT, record) for record in split_records(payload)]
        except ValueError as exc:
            raise RawFormatError(f"{where}: {exc}") from None
    if kind == KIND_ANNOTATION:
        try:
            return [(kind, annotations.decode(payload))]
        except ValueError as exc:
            raise RawFormatError(f"{where}: {exc}") from None
    raise RawFormatError(f"{where}: unknown frame kind {kind}")


def read_raw(path: str) -> tuple[CaptureHeader, Iterator[Item]]:
    """Open a raw file: its header, and an iterator of (kind, ring-buffer bytes | annotation)."""
    f = open(path, "rb")
    if f.read(len(MAGIC)) not in MAGICS:
        f.close()
        raise RawFormatError(f"{path}: not an apptrace raw capture (bad magic)")
    try:
        header = CaptureHeader.from_line(f.readline())
    except (ValueError, TypeError) as exc:
        f.close()
        raise RawFormatError(f"{path}: corrupt header: {exc}") from None

    def frames() -> Iterator[Item]:
        with f:
            while True:
                head = f.read(FRAME.size)
                if not head:
                    return
                if len(head) < FRAME.size:
                    raise RawFormatError(f"{path}: truncated frame header at offset {f.tell()}")
                kind, n = FRAME.unpack(head)
                payload = f.read(n)
                if len(payload) < n:
                    if kind == KIND_RING:
                        # A killed writer's last run: its whole records are still good.
                        for record in complete_records(payload)[0]:
                            yield KIND_EVENT, record
                    raise RawFormatError(f"{path}: truncated frame at offset {f.tell()}")
                yield from frame_items(kind, payload, f"{path} at offset {f.tell()}")

    return header, frames()
