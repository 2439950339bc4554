"""Capture's side of pausing (bpf/tls_capture.c, section 13): probe a late process's TLS object before it runs.

The kernel stops a process that opens a libssl* file, or execs a file, whose path user space has not
judged yet, and reports it on the pause ring. For each report this module finds the file (through the
process's own fd and root, so a container's private copy is the one read), has the tracer probe it,
records the path as judged (the kernel then never stops anyone for it again), and continues the process.
A uprobe registered on a file before the loader maps it is in place from the mapping's first
instruction, so the process's first TLS call is captured.

No process stays stopped: the watchdog process (``pause_watchdog``) continues any that is stopped past
``pause_max_ms``, and every one when capture goes away, however it goes. Each process whose TLS library
may have run before its probes were in is named as a miss, with the reason.
"""

from __future__ import annotations

import fcntl
import os
import resource
import signal
import stat
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apptrace.capture.loader import Probes

PATH_LEN = 256  # PAUSE_PATH_LEN in the C
KEY = struct.Struct(f"<Q{PATH_LEN}s")  # struct pause_key
EVENT = struct.Struct(f"<iiIIQ{KEY.size}s")  # struct pause_event: tgid, fd, reason, stopped, ts, key
PAUSE_OPEN, PAUSE_EXEC = 1, 2
# Directories whose executables are judged in the background at start, so that a first exec of an
# ordinary program (a shell's `ls`) is not stopped.
# When to look for a parent that passed our stop of its child on to itself (su, runuser, sudo).
ANCESTOR_CHECKS_S = (0.002, 0.02, 0.2)
PROGRAM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
SEED_SLICE_S = 0.005  # background judging per loop iteration: a pause report waits at most this long for it


@dataclass(frozen=True)
class PauseEvent:
    tgid: int
    fd: int
    reason: int
    stopped: bool
    ts: int  # CLOCK_MONOTONIC ns of the stop
    key: bytes  # struct pause_key as the kernel hashed it
    ns: int  # 0: the tracer's pid namespace; else the process's cgroup id
    path: str  # as the process named it, in its own mount namespace


def decode_event(buf: bytes) -> PauseEvent:
    tgid, fd, reason, stopped, ts, key = EVENT.unpack_from(buf)
    ns, raw = KEY.unpack(key)
    return PauseEvent(tgid, fd, reason, bool(stopped), ts, key, ns,
                      raw.split(b"\0", 1)[0].decode(errors="surrogateescape"))


def path_key(path: str, ns: int = 0) -> bytes | None:
    raw = os.fsencode(path)
    if len(raw) >= PATH_LEN:
        return None  # the kernel's copy is cut at 255 bytes and would never match: such a path is paused for
    return KEY.pack(ns, raw)


def host_variants(path: str) -> set[str]:
    """The names a library is opened by on a merged-/usr system: ld.so's cache may say /lib or /usr/lib."""
    out = {path}
    for short, long in (("/lib/", "/usr/lib/"), ("/lib64/", "/usr/lib64/"), ("/bin/", "/usr/bin/"),
                        ("/sbin/", "/usr/sbin/")):
        if path.startswith(short):
            out.add(long + path[len(short):])
        elif path.startswith(long):
            out.add(short + path[len(long):])
    return out


_EHDR = struct.Struct("<16xHHIQQQIHHHHHH")  # ELF64 header after e_ident: e_type … e_shstrndx
QUICK_STRINGS_MAX = 4 << 20


def plainly_without_tls(path: str, depth: int = 0) -> bool:
    """True when the ELF headers alone show ``path`` has nothing to probe: no Go sections, and no SSL_write in
    its dynamic or static string tables (a library exporting it, or a static copy that kept its symbols, names it
    there). A few small reads; anything else (scripts too) is left to a full look at its first exec."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
            if head.startswith(b"#!") and not depth:
                # A script: what runs is its interpreter (the exec reports the script's path).
                interpreter = head[2:].split(b"\n", 1)[0].split()
                return bool(interpreter) and plainly_without_tls(os.fsdecode(interpreter[0]), 1)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return False
            shoff, shentsize, shnum, shstrndx = (_EHDR.unpack_from(head)[i] for i in (5, 10, 11, 12))
            if not shoff or shentsize < 64 or not 0 < shnum <= 4096 or shstrndx >= shnum:
                return False
            f.seek(shoff)
            table = f.read(shnum * shentsize)
            if len(table) < shnum * shentsize:
                return False
            sections = [struct.unpack_from("<IIQQQQ", table, i * shentsize) for i in range(shnum)]
            f.seek(sections[shstrndx][4])
            names = f.read(min(sections[shstrndx][5], 1 << 20))
            strings = 0
            for name_off, _type, _flags, _addr, offset, size in sections:
                name = names[name_off:names.find(b"\0", name_off)]
                if name in (b".gopclntab", b".go.buildinfo"):
                    return False
                if name in (b".dynstr", b".strtab"):
                    strings += size
                    if strings > QUICK_STRINGS_MAX:
                        return False
                    f.seek(offset)
                    if b"SSL_write\0" in f.read(size):
                        return False
            return True
    except (OSError, struct.error, IndexError):
        return False


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0].decode()
    except (OSError, IndexError):
        return ""


def _ancestors(pid: int, depth: int = 3) -> tuple[int, ...]:
    out = []
    for _ in range(depth):
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                pid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
        if pid <= 1:
            break
        out.append(pid)
    return tuple(out)


def raise_fd_limit() -> int:
    """Each probed file costs ~10 perf-event fds (one per uprobe): many private libssl copies need many."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
        except (ValueError, OSError):
            pass
    return soft


# Verdicts of a judge: the file's TLS was probed, it holds none we could probe, or it could not be probed.
PROBED, NOTHING = "probed", "nothing"
Judge = Callable[[int, str], str]  # (pid, openable path) -> PROBED, NOTHING, or why it failed


class Pauser:
    """Handles the kernel's pause reports; owns the watchdog process."""

    def __init__(self, probes: Probes, judge: Judge, on_miss: Callable[[int, str], None],
                 log: Callable[[str], None], max_ms: int, mode: str = "stop") -> None:
        self.probes = probes
        self.mode = mode
        self.judge = judge
        self.on_miss = on_miss
        self.log = log
        self.max_ms = max_ms
        self.watchdog: subprocess.Popen | None = None
        self._reports: list[PauseEvent] = []
        self._seed_queue: Iterator[str] | None = None
        self._watchdog_buf = b""
        self.paused = 0  # processes stopped and continued by us
        self.pause_ms_max = 0.0  # the longest stop so far, from the kernel's stop to our SIGCONT
        self.pause_ms_total = 0.0
        self.handled_late: set[int] = set()  # tgids the watchdog continued before we got to them
        # (due monotonic s, ancestor pids) of recent stops: see check_ancestors
        self._ancestor_checks: list[tuple[float, tuple[int, ...]]] = []
        self.ancestors_continued = 0

    # ---- lifecycle ----
    def start(self, exempt: tuple[int, ...]) -> None:
        raise_fd_limit()
        self.probes.on_pause = self._on_report
        for tgid in (os.getpid(), *exempt):
            self.probes.exempt_from_pause(tgid)
        if self.mode == "stop":
            self._start_watchdog()
        self.probes.set_pausing(self.mode)

    def _start_watchdog(self) -> None:
        map_fd, ring_fd = self.probes.pause_map_fds()
        self.watchdog = subprocess.Popen(
            [sys.executable, "-m", "apptrace.capture.pause_watchdog", str(map_fd), str(ring_fd), str(self.max_ms)],
            pass_fds=(map_fd, ring_fd), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.probes.exempt_from_pause(self.watchdog.pid)
        assert self.watchdog.stdout is not None
        # Pausing goes on only once the watchdog can take over: its first line says it is up.
        line = self.watchdog.stdout.readline()
        if line != b"ready\n":
            raise OSError(f"the pause watchdog did not start ({line!r})")
        fd = self.watchdog.stdout.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def check_watchdog(self) -> None:
        """Called once a second: a watchdog that died is replaced before anything else is stopped."""
        if self.watchdog is not None and self.watchdog.poll() is not None:
            self.probes.set_pausing("off")
            self.log(f"apptrace: the pause watchdog exited ({self.watchdog.returncode}); restarted it")
            self._start_watchdog()
            self.probes.set_pausing(self.mode)

    def close(self) -> None:
        self.probes.set_pausing("off")
        self.probes.drain_pauses()
        self.handle()
        from apptrace.capture.pause_watchdog import paused_tgids
        for tgid in paused_tgids(self.probes.pause_map_fds()[0]):
            self.probes.unpause(tgid)
        if self.watchdog is not None:
            assert self.watchdog.stdin is not None
            self.watchdog.stdin.close()  # it continues whatever is left, and exits
            try:
                self.watchdog.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.watchdog.kill()
                self.watchdog.wait()
            self.read_watchdog()

    # ---- seeding: files judged up front are never paused for ----
    def seed(self, libraries: list[str], pids: list[int]) -> None:
        """The system's TLS libraries (already probed) and the programs running now; then, in the background
        (``seed_step``), every program in the usual program directories."""
        for lib in libraries:
            for name in host_variants(lib):
                self._mark(name)
        for pid in pids:
            try:
                exe = os.readlink(f"/proc/{pid}/exe")
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv0 = f.read(PATH_LEN).split(b"\0", 1)[0].decode(errors="surrogateescape")
            except OSError:
                continue
            if os.stat(f"/proc/{pid}/ns/pid").st_ino != os.stat("/proc/self/ns/pid").st_ino:
                continue  # a container's paths: its own files
            for name in (exe, argv0):
                if name.startswith("/"):
                    self._mark(name)
        self._seed_queue = self._programs()

    def _programs(self) -> Iterator[str]:
        dirs = [d for d in (*os.environ.get("PATH", "").split(":"), *PROGRAM_DIRS) if d.startswith("/")]
        seen: set[str] = set()
        for d in dict.fromkeys(dirs):
            try:
                names = sorted(os.listdir(d))
            except OSError:
                continue
            for name in names:
                path = f"{d}/{name}"
                if path not in seen:
                    seen.add(path)
                    yield path

    def seed_step(self) -> None:
        if self._seed_queue is None:
            return
        until = time.monotonic() + SEED_SLICE_S
        for path in self._seed_queue:
            try:
                st = os.stat(path)
            except OSError:
                continue
            # Only what the headers clear: a program with TLS in it is judged whole at its first exec.
            if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111 and plainly_without_tls(path):
                self._mark(path)
            if time.monotonic() >= until:
                return
        self._seed_queue = None

    def _mark(self, path: str, ns: int = 0) -> None:
        key = path_key(path, ns)
        if key is not None:
            self.probes.mark_known(key)

    # ---- reports ----
    def _on_report(self, buf: bytes) -> None:
        self._reports.append(buf)

    def pending(self) -> bool:
        return bool(self._reports)

    def handle(self) -> None:
        """Probe what every reported process opened or exec'd, then continue them all."""
        if not self._reports:
            return
        reports, self._reports = self._reports, []
        events = [decode_event(b) for b in reports]
        outcomes: dict[int, str] = {}
        for ev in events:
            verdict = self._judge_event(ev)
            if verdict == PROBED:
                outcomes.setdefault(ev.tgid, PROBED)
            elif verdict != NOTHING:
                outcomes[ev.tgid] = verdict
            if verdict in (PROBED, NOTHING):
                # The kernel's own bytes: the same key it will hash next time.
                self.probes.mark_known(ev.key)
        now = time.monotonic_ns()
        for ev in events:
            if not ev.stopped:
                why = "pausing is off (--no-pause)" if self.mode == "report" else "the kernel refused to stop it"
                if outcomes.get(ev.tgid) not in (None, PROBED):
                    self.on_miss(ev.tgid, f"{why}: {outcomes[ev.tgid]}")
                elif outcomes.get(ev.tgid) == PROBED:
                    self.on_miss(ev.tgid, f"{why}: its TLS library {ev.path} was probed only after it was opened, "
                                          "and may have run unprobed")
                elif ev.reason == PAUSE_OPEN:
                    # Not stopped, it may have exited while its file was read: nothing we read can be trusted.
                    self.on_miss(ev.tgid, f"{why}: it opened {ev.path}, which could not be judged before it ran")
                continue
            outcome = outcomes.get(ev.tgid)
            ancestors = _ancestors(ev.tgid)
            if self.probes.unpause(ev.tgid, ev.ts):
                t = time.monotonic()
                self._ancestor_checks.extend((t + d, ancestors) for d in ANCESTOR_CHECKS_S)
                ms = (now - ev.ts) / 1e6
                self.paused += 1
                self.pause_ms_total += ms
                self.pause_ms_max = max(self.pause_ms_max, ms)
            elif outcome == PROBED:
                self.handled_late.add(ev.tgid)
                self.on_miss(ev.tgid, f"continued by the pause watchdog after {self.max_ms} ms, before its TLS "
                                      f"library {ev.path} was probed")
            if outcome not in (None, PROBED):
                self.on_miss(ev.tgid, outcome)

    def check_ancestors(self) -> None:
        """Continue a parent that stopped itself because we stopped its child.

        su, runuser and sudo pass a child's stop on to themselves (so that a shell's job control sees the whole
        job stopped) and continue the child only when they are continued: after our SIGCONT the child runs,
        and the parent would stay stopped for good. An ancestor found stopped within a moment of our pause is
        continued (it then continues its child again, which is harmless).
        """
        if not self._ancestor_checks:
            return
        now = time.monotonic()
        due = [a for t, a in self._ancestor_checks if t <= now]
        if not due:
            return
        self._ancestor_checks = [(t, a) for t, a in self._ancestor_checks if t > now]
        for ancestors in due:
            for pid in ancestors:
                if _state(pid) == "T":
                    try:
                        os.kill(pid, signal.SIGCONT)
                        self.ancestors_continued += 1
                    except OSError:
                        pass

    def _judge_event(self, ev: PauseEvent) -> str:
        for openable in self._candidates(ev):
            verdict = self.judge(ev.tgid, openable)
            if verdict != "unreadable":
                return verdict
        if ev.reason == PAUSE_OPEN:
            return f"could not read the TLS library it opened ({ev.path}): gone from its fd and its root"
        return NOTHING  # an exec'd file we cannot read: nothing we could have probed anyway

    def _candidates(self, ev: PauseEvent) -> Iterator[str]:
        """Paths through which this process's file can be read from here, best first."""
        root = f"/proc/{ev.tgid}/root"
        link = f"/proc/{ev.tgid}/fd/{ev.fd}" if ev.reason == PAUSE_OPEN else f"/proc/{ev.tgid}/exe"
        try:
            target = os.readlink(link)
            if target.startswith("/") and not target.endswith(" (deleted)"):
                yield root + target
        except OSError:
            pass  # closed already (or the process is gone): the name it used, in its own root
        if ev.path.startswith("/"):
            yield root + ev.path
        else:
            yield f"/proc/{ev.tgid}/cwd/{ev.path}"

    # ---- the watchdog's reports ----
    def read_watchdog(self) -> None:
        """tgids the watchdog continued past the bound: a stop capture never handled is named here."""
        if self.watchdog is None or self.watchdog.stdout is None:
            return
        try:
            chunk = os.read(self.watchdog.stdout.fileno(), 65536)
        except (BlockingIOError, OSError, ValueError):
            return
        self._watchdog_buf += chunk
        *lines, self._watchdog_buf = self._watchdog_buf.split(b"\n")
        for line in lines:
            if line.isdigit():
                tgid = int(line)
                if tgid not in self.handled_late and not any(decode_event(b).tgid == tgid for b in self._reports):
                    self.handled_late.add(tgid)
                    self.on_miss(tgid, f"stopped, then continued by the pause watchdog after {self.max_ms} ms: "
                                       "capture never handled its report")
