"""Record and replay raw capture: every ring-buffer record, plus what /proc told us.

File layout: the magic line, one JSON header line, then frames of
``kind:u8 length:u32 payload``. Kind 0 is a ring-buffer record exactly as the kernel
wrote it; kind 1 is a JSON annotation (process info, socket 4-tuple, attached library)
that live capture read from /proc and replay cannot; kind 2 (since version 2) is a run of
data records copied from the ring in one piece, the kernel's 8-byte record headers
included (``ringbuf.split_records``): capture copies those without looking at each.
Readers take both versions and hand a run out as the records it holds. Replaying a file
runs the same pipeline as live tracing, so tests and benchmarks exercise the real code path.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import IO, Any

from apptrace.ringbuf import complete_records, split_records

MAGIC = b"APPTRACE-RAW 2\n"
MAGICS = (b"APPTRACE-RAW 1\n", MAGIC)  # what readers accept
FRAME = struct.Struct("<BI")
KIND_EVENT, KIND_ANNOTATION, KIND_RING = 0, 1, 2


class RawFormatError(Exception):
    pass


class RawWriter:
    def __init__(self, path: str, header: dict[str, Any]) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        self._f: IO[bytes] = os.fdopen(fd, "wb", buffering=1 << 20)
        self._f.write(MAGIC)
        self._f.write(json.dumps(header).encode() + b"\n")
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

    def annotation(self, obj: dict[str, Any]) -> None:
        payload = json.dumps(obj, separators=(",", ":")).encode()
        self._f.write(FRAME.pack(KIND_ANNOTATION, len(payload)))
        self._f.write(payload)
        self.frames += 1

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def frame_items(kind: int, payload: bytes, where: str) -> list[tuple[int, bytes | dict]]:
    """What one whole frame holds: (KIND_EVENT, record) items, or one (KIND_ANNOTATION, dict).

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
        return [(kind, json.loads(payload))]
    raise RawFormatError(f"{where}: unknown frame kind {kind}")


def read_raw(path: str) -> tuple[dict[str, Any], Iterator[tuple[int, bytes | dict]]]:
    """Open a raw file: its header, and an iterator of (kind, ring-buffer bytes | annotation dict)."""
    f = open(path, "rb")
    if f.read(len(MAGIC)) not in MAGICS:
        f.close()
        raise RawFormatError(f"{path}: not an apptrace raw capture (bad magic)")
    try:
        header = json.loads(f.readline())
    except json.JSONDecodeError as exc:
        f.close()
        raise RawFormatError(f"{path}: corrupt header: {exc}") from None

    def frames() -> Iterator[tuple[int, bytes | dict]]:
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
