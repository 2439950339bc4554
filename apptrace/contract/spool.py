"""The on-disk queue between the capture process and the analysis process.

Capture must keep pace with the kernel or the ring buffer overflows; parsing and storing
cost fifty times more per event and may fall behind under load. The spool decouples the
two: capture appends frames to numbered segment files, analysis follows them at its own
(lower) priority. A burst becomes backlog on disk instead of lost events, and the traced
programs keep the CPU.

Each segment is a complete raw capture file (see ``rawfile``) whose header names the *run*
(one ``apptrace trace`` process) that wrote it. A run that died (``kill -9``, a crash) leaves
its segments behind; the next writer on the directory keeps them and numbers its own after
them, and the reader finishes the dead run before it starts on the new one. The reader never
deletes a segment by itself: analysis deletes it (``SpoolReader.release``) once what was drawn
from it is committed to the DB, together with where reading stopped (see
``apptrace.analysis.checkpoint``).

The backlog is bounded: past ``max_bytes`` the writer drops data records and counts them;
connection, process and annotation frames are always kept, so what is dropped shows up as
counted gaps in the right connections. A full filesystem is the same: data records are
dropped and counted until there is room again, and no half frame is ever left on disk.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass

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
    complete_records,
    frame_items,
)

SEGMENT_BYTES = 64 << 20  # at most; smaller on a small filesystem or under a small --spool-max
MIN_SEGMENT_BYTES = 256 << 10
END_MARKER = "END"
#: capture's health, rewritten once a second when metrics are on (apptrace.analysis.metrics reads it)
HEALTH = "health.json"
LOCK = "LOCK"  # held (flock) by the writer while it runs, and by its analysis child; their pids inside
READ_CHUNK = 1 << 20
WRITE_AHEAD = 4 << 20  # bytes of frames buffered before they are written out between flushes
#: frames that are not data (connections, processes, annotations) kept in memory while the disk is full
PENDING_META_MAX = 1 << 20
ROOM_MARGIN = 64 << 10  # free bytes beyond a write's own that the filesystem must have for it to be tried
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class SpoolInUse(OSError):
    """Another tracer is writing this spool (so, the same DB) right now."""

    def __init__(self, message: str, holders: list[int]) -> None:
        super().__init__(message)
        #: the pids in the lock file: the capture process, then its analysis child (when it has one)
        self.holders = holders


def read_holders(directory: str) -> list[int]:
    """The pids written in the spool's lock file (capture first), or [] when there is none."""
    try:
        with open(os.path.join(directory, LOCK)) as f:
            return [int(w) for w in f.read().split() if w.isdigit()]
    except OSError:
        return []


def _take_lock(directory: str, *, wait: bool = False) -> int:
    while True:
        path = os.path.join(directory, LOCK)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holders = read_holders(directory)
            os.close(fd)
            holder = str(holders[0]) if holders else "?"
            raise SpoolInUse(f"{directory} is in use by a running apptrace trace (pid {holder}): stop it first, "
                             "or trace into another --db", holders) from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a lock file its last holder removed while we waited for it
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def segment_name(seq: int) -> str:
    return f"{seq:08d}.raw"


def segment_seqs(directory: str) -> list[int]:
    """The numbers of the segment files in the spool, in order."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(int(n[:-4]) for n in names if n.endswith(".raw") and n[:-4].isdigit())


def segments_bytes(directory: str) -> int:
    """Bytes in the spool's segment files."""
    total = 0
    for seq in segment_seqs(directory):
        try:
            total += os.stat(os.path.join(directory, segment_name(seq))).st_size
        except FileNotFoundError:
            pass  # the reader finished it while we looked
    return total


def segment_size(directory: str, max_bytes: int) -> int:
    """How big a segment may grow: a segment is deleted only once it is read whole, so on a small
    filesystem (or under a small cap) segments are small enough for several to fit."""
    st = os.statvfs(directory)
    fs_bytes = st.f_blocks * st.f_frsize
    return max(MIN_SEGMENT_BYTES, min(SEGMENT_BYTES, fs_bytes // 16, max_bytes // 8))


def segment_header(path: str) -> CaptureHeader | None:
    """The header of a segment file, None while its writer has not written it whole yet."""
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
            line = f.readline()
    except FileNotFoundError:
        return None
    if len(head) < len(MAGIC) or not line.endswith(b"\n"):
        return None
    if head not in MAGICS:
        raise RawFormatError(f"{path}: not an apptrace spool segment")
    try:
        return CaptureHeader.from_line(line)
    except (ValueError, TypeError) as exc:
        raise RawFormatError(f"{path}: corrupt header: {exc}") from None


def _data_records_in(buf: bytes | bytearray) -> tuple[int, int, bytearray]:
    """Walk frames that could not be written: (data records, their bytes, the other frames to keep)."""
    records = nbytes = 0
    keep = bytearray()
    off, end, hdr = 0, len(buf), FRAME.size
    while off + hdr <= end:
        kind, n = FRAME.unpack_from(buf, off)
        payload = buf[off + hdr:off + hdr + n]
        if kind == KIND_RING:
            got = complete_records(payload)[0]
            records += len(got)
            nbytes += sum(map(len, got))
        elif kind == KIND_EVENT and payload[:1] == bytes([EV_DATA]):
            records += 1
            nbytes += n
        else:
            keep += buf[off:off + hdr + n]
        off += hdr + n
    return records, nbytes, keep


class SpoolWriter:
    """Appends ring-buffer records and annotations to the spool; same interface as ``RawWriter``."""

    def __init__(self, directory: str, header: CaptureHeader, *, max_bytes: int,
                 segment_bytes: int | None = None, wait_for_lock: bool = False) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        # Before anything else: a running tracer's spool is not ours. Held until this process exits (and its
        # analysis child, which inherits it), so through the analysis of the backlog too.
        self._lock_fd = _take_lock(directory, wait=wait_for_lock)
        self.directory = directory
        # What a run that died left behind: kept, and numbered before ours, so analysis finishes it first.
        left = segment_seqs(directory)
        self.leftover_segments = len(left)
        self.leftover_bytes = segments_bytes(directory)
        if os.path.exists(os.path.join(directory, END_MARKER)):
            os.unlink(os.path.join(directory, END_MARKER))  # that run's; ours is written when we close
        self.header_line = header.line()
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes or segment_size(directory, max_bytes)
        self.first_seq = self.seq = left[-1] + 1 if left else 0
        self.frames = 0
        self.dropped_events = 0  # past --spool-max
        self.dropped_bytes = 0
        self.disk_full_dropped_events = 0  # no room on the spool's filesystem
        self.full = False  # past the cap
        self.disk_full = False
        self._dropping = False  # either of the two: the one test the hot path makes
        self._buf = bytearray()  # frames not written out yet
        self._written = 0  # bytes in the current segment, buffered ones included
        self._durable = 0  # bytes of the current segment written whole (the file's length)
        self._fd: int | None = None
        self._closed = False
        self._open_segment()

    def note_reader(self, pid: int) -> None:
        """Write the analysis child's pid beside ours in the lock file (it holds the lock with us)."""
        os.ftruncate(self._lock_fd, 0)
        os.pwrite(self._lock_fd, f"{os.getpid()}\n{pid}\n".encode(), 0)

    @property
    def lock_fd(self) -> int:
        return self._lock_fd

    def _set_dropping(self) -> None:
        self._dropping = self.full or self.disk_full

    def _open_segment(self) -> bool:
        """Start segment ``seq``; False (and the disk counted full) when there is no room for it."""
        path = os.path.join(self.directory, segment_name(self.seq))
        head = MAGIC + self.header_line
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            self._no_room()
            return False
        try:
            # One write: the reader takes a segment whose header is not whole yet for one still being made.
            if os.write(fd, head) != len(head):
                raise OSError(errno.ENOSPC, "short write")
        except OSError as exc:
            os.close(fd)
            os.unlink(path)  # a header cut short would stop the reader for good
            if exc.errno not in DISK_FULL:
                raise
            self._no_room()
            return False
        self._fd = fd
        self._written = self._durable = len(head)
        return True

    def _no_room(self) -> None:
        self.disk_full = True
        self._set_dropping()

    def _write_out(self) -> None:
        """Write the buffered frames; with no room, drop the data among them (counted) and keep the rest."""
        buf = self._buf
        if self.disk_full or self._fd is None:
            if len(buf) > PENDING_META_MAX:  # the disk stays full for long: what was kept goes too, counted
                self.disk_full_dropped_events += self._count_frames(buf)
                self._buf = bytearray()
                self._written = self._durable
            return
        if not buf:
            return
        st = os.fstatvfs(self._fd)
        if st.f_bavail * st.f_frsize < len(buf) + ROOM_MARGIN:
            # Not written at all, rather than in part: a reader may read a partial frame before it could
            # be cut back (that case is handled too, below and in the reader, for a disk filled meanwhile).
            self._no_room_for(buf)
            return
        try:
            view = memoryview(buf)
            done = 0
            while done < len(buf):
                done += os.write(self._fd, view[done:])
            view.release()
        except OSError as exc:
            view.release()
            if exc.errno not in DISK_FULL:
                raise
            # No half frame stays behind: the reader would stop at it.
            os.ftruncate(self._fd, self._durable)
            self._no_room_for(buf)
            return
        self._durable += len(buf)
        self._buf = bytearray()

    def _no_room_for(self, buf: bytearray) -> None:
        records, nbytes, keep = _data_records_in(buf)
        self.disk_full_dropped_events += records
        self.dropped_bytes += nbytes
        self._buf = keep
        self._written = self._durable + len(keep)
        self._no_room()

    @staticmethod
    def _count_frames(buf: bytearray) -> int:
        n = off = 0
        while off + FRAME.size <= len(buf):
            off += FRAME.size + FRAME.unpack_from(buf, off)[1]
            n += 1
        return n

    def _rotate(self) -> None:
        self._write_out()
        if self.disk_full or self._fd is None:
            return  # stay in this segment until there is room again (see check_backlog)
        # The next segment appears only after this one is complete: a reader that sees it
        # may treat end-of-file here as final.
        os.close(self._fd)
        self._fd = None
        self.seq += 1
        self._open_segment()

    def event(self, buf: bytes) -> None:
        if self._dropping and buf[0] == EV_DATA:
            self._drop(1, len(buf))
            return
        self._frame(KIND_EVENT, buf)
        if self._written >= self.segment_bytes:
            self._rotate()
        elif len(self._buf) >= WRITE_AHEAD:
            self._write_out()

    def run(self, ring_bytes: bytes, records: int, nbytes: int) -> None:
        """A run of data records as the ring held them (``RingReader.drain_runs``), in one frame."""
        if self._dropping:
            self._drop(records, nbytes)
            return
        self._frame(KIND_RING, ring_bytes)
        self.frames += records - 1
        if self._written >= self.segment_bytes:
            self._rotate()
        elif len(self._buf) >= WRITE_AHEAD:
            self._write_out()

    def _drop(self, records: int, nbytes: int) -> None:
        if self.full:
            self.dropped_events += records
        else:
            self.disk_full_dropped_events += records
        self.dropped_bytes += nbytes

    def annotation(self, a: Annotation) -> None:
        # Never a reason to rotate: a segment ends after an event, so annotations stay with
        # the records they describe.
        self._frame(KIND_ANNOTATION, annotations.encode(a))

    def _frame(self, kind: int, payload: bytes) -> None:
        buf = self._buf
        buf += FRAME.pack(kind, len(payload))
        buf += payload
        self.frames += 1
        self._written += FRAME.size + len(payload)

    def flush(self) -> None:
        if not self.disk_full:
            self._write_out()

    def check_backlog(self) -> int:
        """Re-evaluate the cap, and whether there is room again (called about once a second); returns
        the backlog in bytes.

        The backlog is what the reader has not deleted yet: written and not consumed.
        """
        if self.disk_full and not self._closed:
            self._retry()
        backlog = segments_bytes(self.directory)
        self.full = backlog >= self.max_bytes
        self._set_dropping()
        return backlog

    def _retry(self) -> None:
        """The disk was full: write what was kept, and carry on if it fits."""
        st = os.statvfs(self.directory)
        if st.f_bavail * st.f_frsize < len(self._buf) + len(self.header_line) + MIN_SEGMENT_BYTES:
            return  # not enough room yet: a write now would only fail again
        self.disk_full = False
        if self._fd is None and not self._open_segment():
            return
        self._write_out()
        self._set_dropping()

    def close(self) -> None:
        """Finish the last segment and tell the reader nothing more will come."""
        if self._closed:
            return
        self._closed = True
        if self.disk_full:
            self._retry()
        self._write_out()
        if self.disk_full:  # still no room: what was kept for later is lost, and counted
            self.disk_full_dropped_events += self._count_frames(self._buf)
            self._buf = bytearray()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        try:
            with open(os.path.join(self.directory, END_MARKER), "w"):
                pass
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            # No room even for an empty file: the reader sees a run whose writer is gone, and ends it
            # all the same (analysis is told capture stopped).

    def remove_own(self) -> None:
        """Delete what this writer wrote (closed first): it stopped before anything was traced."""
        self.close()
        for seq in segment_seqs(self.directory):
            if seq >= self.first_seq:
                os.unlink(os.path.join(self.directory, segment_name(seq)))
        if self.leftover_segments == 0:
            remove_spool(self.directory)
        else:
            try:
                os.unlink(os.path.join(self.directory, END_MARKER))
            except FileNotFoundError:
                pass


@dataclass(frozen=True)
class Position:
    """Where reading stopped: the next frame is at ``offset`` in segment ``seq`` (0: after its header)."""

    seq: int
    offset: int


class SpoolReader:
    """Follows the spool run by run; hands out complete frames.

    ``run`` and ``header`` describe the run being read. When it has nothing more to give (its
    writer ended it, or died), ``run_over`` is set: the caller finishes the run's analysis, then
    calls ``next_run``. The run capture is writing now is ``live_run``; any other run in the
    spool was written by a process that is gone, so its last segment is complete as it is.
    """

    def __init__(self, directory: str, live_run: str | None = None) -> None:
        self.directory = directory
        self.live_run = live_run
        self.writer_gone = False  # capture died: the live run's segments are complete as they are too
        seqs = segment_seqs(directory)
        self.seq = seqs[0] if seqs else 0
        self.run: str | None = None
        self.header: CaptureHeader | None = None
        self.run_over = False
        self.finished = False  # the live run ended (END) and was read whole
        #: bytes of a dead run's last frame that its writer did not write whole (whole records kept)
        self.cut_bytes = 0
        self._f = None
        self._buf = b""
        self._done: list[int] = []  # segments read whole, deleted by ``release``

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, segment_name(seq))

    def _dead(self) -> bool:
        return self.writer_gone or (self.live_run is not None and self.run != self.live_run)

    def at_run(self) -> bool:
        """Look at the segment the reader is at: sets ``run`` and ``header``; False when there is none yet."""
        if self.run is not None:
            return True
        header = segment_header(self._path(self.seq))
        if header is None:
            return False
        self.header = header
        self.run = header.run_id
        return True

    def _open(self) -> bool:
        header = segment_header(self._path(self.seq))
        if header is None:
            return False
        if self.run is None:
            self.run, self.header = header.run_id, header
        elif header.run_id != self.run:
            self.run_over = True  # a later run's segment: ours ended with the one before
            return False
        f = open(self._path(self.seq), "rb")
        f.readline()  # the magic line; then the header line
        f.readline()
        self._f = f
        return True

    def seek(self, pos: Position) -> None:
        """Continue the current run at ``pos`` (a checkpoint's); its segments before it are consumed."""
        self.close()
        for seq in segment_seqs(self.directory):
            if self.seq <= seq < pos.seq:
                self._done.append(seq)
        self.seq = pos.seq
        self.run_over = False
        if pos.offset and self._open():
            self._f.seek(pos.offset)

    def skip_run(self) -> None:
        """The current run is analysed whole (its checkpoint says so): its segments are only left to delete."""
        for seq in segment_seqs(self.directory):
            if seq >= self.seq:
                header = segment_header(self._path(seq))
                if header is not None and header.run_id != self.run:
                    self.seq = seq
                    break
                self._done.append(seq)
        else:
            self.seq = max([self.seq, *(s + 1 for s in self._done)])
        self.close()
        self.run_over = True

    def next_run(self) -> bool:
        """Move on past an ended run; False when no segment follows it (yet)."""
        self.close()
        self.run = self.header = None
        self.run_over = False
        return self.at_run()

    def position(self) -> Position:
        if self._f is None:
            return Position(self.seq, 0)
        return Position(self.seq, self._f.tell() - len(self._buf))

    def take_done(self) -> list[int]:
        """Segments read whole since last asked: delete them (``release``) once their rows are committed."""
        done, self._done = self._done, []
        return done

    def give_back(self, done: list[int]) -> None:
        """The commit failed: these stay until a later one succeeds."""
        self._done = done + self._done

    def release(self, done: list[int]) -> None:
        for seq in done:
            try:
                os.unlink(self._path(seq))
            except FileNotFoundError:
                pass

    def read(self, max_frames: int = 5000) -> list[Item]:
        """Complete frames of the current run, about ``max_frames`` at most; an empty list means nothing new
        yet, or ``run_over``."""
        out: list[Item] = []
        while len(out) < max_frames and not self.run_over:
            if self._f is None and not self._open():
                if self.run_over or self.run is None:
                    break  # a later run's segment comes next, or no segment has been made yet
                if not os.path.exists(self._path(self.seq)) and (
                        self._dead() or os.path.exists(os.path.join(self.directory, END_MARKER))):
                    self.run_over = True  # nothing follows the run's last segment
                    self.finished = self.live_run is None or self.run == self.live_run
                break
            assert self._f is not None
            # Looked at before reading: then end-of-file below is final.
            moved_on = (self._dead() or os.path.exists(self._path(self.seq + 1))
                        or os.path.exists(os.path.join(self.directory, END_MARKER)))
            # An idle tracer polls this 50 times a second: a read at end of file would still
            # allocate (and map) a 1 MiB buffer each time, so look at the size first.
            size = os.fstat(self._f.fileno()).st_size
            if size < self._f.tell():
                # The writer ran out of room mid-write and cut the segment back to its last whole frame.
                self._f.seek(self._consumed_in_current())
                self._buf = b""
                chunk = b""
            elif size == self._f.tell():
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
                if not self._dead():
                    raise RawFormatError(f"{self._path(self.seq)}: ends inside a frame ({len(self._buf)} bytes)")
                self._salvage(out)
            self._f.close()
            self._f = None
            self._done.append(self.seq)
            self.seq += 1
        return out

    def _salvage(self, out: list[Item]) -> None:
        """A dead writer's last frame, cut short: its whole ring records are still good."""
        buf, self._buf = self._buf, b""
        if len(buf) >= FRAME.size:
            kind, _ = FRAME.unpack_from(buf)
            if kind == KIND_RING:
                records, end = complete_records(buf[FRAME.size:])
                out.extend((KIND_EVENT, r) for r in records)
                self.cut_bytes += len(buf) - FRAME.size - end
                return
        self.cut_bytes += len(buf)

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
        done = 0
        for seq in self._done:
            try:
                done += os.stat(self._path(seq)).st_size
            except FileNotFoundError:
                pass
        return max(segments_bytes(self.directory) - done - self._consumed_in_current(), 0)

    def _consumed_in_current(self) -> int:
        if self._f is None:
            return 0
        return self._f.tell() - len(self._buf)

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._buf = b""


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
