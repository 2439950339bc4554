"""The on-disk queue between the capture process and the analysis process.

Capture must keep pace with the kernel or the ring buffer overflows; parsing and storing
cost fifty times more per event and may fall behind under load. The spool decouples the
two: capture appends frames to numbered segment files, analysis follows them at its own
(lower) priority and deletes each segment once it is done with it. A burst becomes
backlog on disk instead of lost events, and the traced programs keep the CPU.

Each segment is a complete raw capture file (see ``rawlog``), so a spool left behind by a
crash can be fed to ``apptrace replay``. The backlog is bounded: past ``max_bytes`` the
writer drops data records and counts them; connection, process and annotation frames are
always kept, so what is dropped shows up as counted gaps in the right connections.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO

from apptrace.contract import annotations
from apptrace.contract.annotations import Annotation
from apptrace.contract.events import EV_DATA
from apptrace.contract.rawfile import (
    FRAME,
    KIND_ANNOTATION,
    KIND_EVENT,
    KIND_RING,
    MAGIC,
    MAGICS,
    CaptureHeader,
    Item,
    RawFormatError,
    frame_items,
)

SEGMENT_BYTES = 64 << 20
END_MARKER = "END"
#: capture's health, rewritten once a second when metrics are on (apptrace.analysis.metrics reads it)
HEALTH = "health.json"
LOCK = "LOCK"  # held (flock) by the writer while it runs, with its pid inside


class SpoolInUse(OSError):
    """Another tracer is writing this spool (so, the same DB) right now."""


def _take_lock(directory: str) -> int:
    fd = os.open(os.path.join(directory, LOCK), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise SpoolInUse(f"{directory} is in use by a running apptrace trace (pid {holder}): stop it first, "
                         "or trace into another --db") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd
READ_CHUNK = 1 << 20


def segment_name(seq: int) -> str:
    return f"{seq:08d}.raw"


def segments_bytes(directory: str) -> int:
    """Bytes in the spool's segment files."""
    total = 0
    for name in os.listdir(directory):
        if name.endswith(".raw"):
            try:
                total += os.stat(os.path.join(directory, name)).st_size
            except FileNotFoundError:
                pass  # the reader finished it while we looked
    return total


class SpoolWriter:
    """Appends ring-buffer records and annotations to the spool; same interface as ``RawWriter``."""

    def __init__(self, directory: str, header: CaptureHeader, *, max_bytes: int,
                 segment_bytes: int = SEGMENT_BYTES) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Before anything else: a running tracer's spool is not ours. Held until this process exits, so
        # through the analysis of the backlog too.
        self._lock_fd = _take_lock(directory)
        for name in os.listdir(directory):
            if name.endswith(".raw") or name == END_MARKER:
                os.close(self._lock_fd)
                raise FileExistsError(f"{directory} holds a spool from an earlier run; replay or remove it first")
        self.directory = directory
        self.header_line = header.line()
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.seq = 0
        self.frames = 0
        self.dropped_events = 0
        self.dropped_bytes = 0
        self.full = False
        self._written = 0  # bytes in the current segment
        self._f: IO[bytes] | None = None
        self._open_segment()

    def _open_segment(self) -> None:
        path = os.path.join(self.directory, segment_name(self.seq))
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        self._f = os.fdopen(fd, "wb", buffering=1 << 20)
        self._f.write(MAGIC)
        self._f.write(self.header_line)
        self._f.flush()  # the reader may open it now, and the backlog counts it
        self._written = len(MAGIC) + len(self.header_line)

    def _rotate(self) -> None:
        assert self._f is not None
        # The next segment appears only after this one is complete: a reader that sees it
        # may treat end-of-file here as final.
        self._f.close()
        self.seq += 1
        self._open_segment()

    def event(self, buf: bytes) -> None:
        if self.full and buf[0] == EV_DATA:
            self.dropped_events += 1
            self.dropped_bytes += len(buf)
            return
        self._frame(KIND_EVENT, buf)
        if self._written >= self.segment_bytes:
            self._rotate()

    def run(self, ring_bytes: bytes, records: int, nbytes: int) -> None:
        """A run of data records as the ring held them (``RingReader.drain_runs``), in one frame."""
        if self.full:
            self.dropped_events += records
            self.dropped_bytes += nbytes
            return
        self._frame(KIND_RING, ring_bytes)
        self.frames += records - 1
        if self._written >= self.segment_bytes:
            self._rotate()

    def annotation(self, a: Annotation) -> None:
        # Never a reason to rotate: a segment ends after an event, so annotations stay with
        # the records they describe.
        self._frame(KIND_ANNOTATION, annotations.encode(a))

    def _frame(self, kind: int, payload: bytes) -> None:
        f = self._f
        assert f is not None
        f.write(FRAME.pack(kind, len(payload)))
        f.write(payload)
        self.frames += 1
        self._written += FRAME.size + len(payload)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def check_backlog(self) -> int:
        """Re-evaluate the cap (called about once a second); returns the backlog in bytes.

        The backlog is what the reader has not deleted yet: written and not consumed.
        """
        backlog = segments_bytes(self.directory)
        self.full = backlog >= self.max_bytes
        return backlog

    def close(self) -> None:
        """Finish the last segment and tell the reader nothing more will come."""
        if self._f is None:
            return
        self._f.close()
        self._f = None
        with open(os.path.join(self.directory, END_MARKER), "w"):
            pass


class SpoolReader:
    """Follows the spool a writer is appending to; hands out complete frames, deletes finished segments."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.seq = 0
        self.finished = False
        self._f: IO[bytes] | None = None
        self._buf = b""

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, segment_name(seq))

    def _open(self) -> bool:
        try:
            f = open(self._path(self.seq), "rb")
        except FileNotFoundError:
            return False
        head = f.read(len(MAGIC))
        line = f.readline()
        if len(head) < len(MAGIC) or not line.endswith(b"\n"):
            # The writer creates the file and writes its header in one buffered flush; not there yet.
            f.close()
            return False
        if head not in MAGICS:
            f.close()
            raise RawFormatError(f"{self._path(self.seq)}: not an apptrace spool segment")
        self._f = f
        return True

    def _writer_moved_on(self) -> bool:
        return os.path.exists(self._path(self.seq + 1)) or os.path.exists(os.path.join(self.directory, END_MARKER))

    def read(self, max_frames: int = 5000) -> list[Item]:
        """Complete frames, about ``max_frames`` at most; an empty list means nothing new yet (or ``finished``)."""
        out: list[Item] = []
        while len(out) < max_frames and not self.finished:
            if self._f is None and not self._open():
                if os.path.exists(os.path.join(self.directory, END_MARKER)) and not os.path.exists(
                        self._path(self.seq)):
                    self.finished = True
                break
            assert self._f is not None
            moved_on = self._writer_moved_on()  # looked at before reading: then EOF below is final
            # An idle tracer polls this 50 times a second: a read at end of file would still
            # allocate (and map) a 1 MiB buffer each time, so look at the size first.
            if os.fstat(self._f.fileno()).st_size <= self._f.tell():
                chunk = b""
            else:
                chunk = self._f.read(READ_CHUNK)
            if chunk:
                self._buf = self._buf + chunk if self._buf else chunk
                self._frames(out)
                continue
            if not moved_on:
                break  # caught up with the writer
            if self._buf:
                raise RawFormatError(f"{self._path(self.seq)}: ends inside a frame ({len(self._buf)} bytes)")
            self._f.close()
            self._f = None
            os.unlink(self._path(self.seq))
            self.seq += 1
        return out

    def _frames(self, out: list) -> None:
        buf = self._buf
        off = 0
        end = len(buf)
        unpack = FRAME.unpack_from
        hdr = FRAME.size
        while off + hdr <= end:
            kind, n = unpack(buf, off)
            if off + hdr + n > end:
                break
            out.extend(frame_items(kind, buf[off + hdr:off + hdr + n], self._path(self.seq)))
            off += hdr + n
        self._buf = buf[off:]

    def backlog_bytes(self) -> int:
        """Bytes on disk not handed out yet."""
        return max(segments_bytes(self.directory) - self._consumed_in_current(), 0)

    def _consumed_in_current(self) -> int:
        if self._f is None:
            return 0
        return self._f.tell() - len(self._buf)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def remove_spool(directory: str) -> None:
    """Delete the spool's own files, then the directory if nothing else is in it."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return
    for name in names:
        if name in (END_MARKER, LOCK) or name.startswith(HEALTH) or (name.endswith(".raw") and name[:-4].isdigit()):
            os.unlink(os.path.join(directory, name))
    try:
        os.rmdir(directory)
    except OSError:
        pass  # the user's directory, holding other things
