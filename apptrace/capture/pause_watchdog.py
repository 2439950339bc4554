"""The pause watchdog: no process stays stopped, whatever happens to capture.

Capture stops a process that opens an unknown libssl or execs an unknown file (bpf/tls_capture.c,
section 13) and continues it once the file is probed. This small process, started by capture with
the `paused` map's fd and the pause ring's fd, continues on its own:

- every process stopped longer than the bound (capture is busy or stuck), and says so on stdout
  (one tgid per line, for capture to name the miss);
- every stopped process when capture goes away (its end of our stdin closes: a normal exit, a
  signal, a crash, kill -9), then exits.

It holds the map's fd, so the map outlives capture. It needs no BCC: the map is read with bpf(2).
It wakes only when the kernel reports a pause (the ring's epoll) or a stopped process's bound is
due, so an idle machine costs it nothing.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import sys
import time

SYS_BPF = 321  # x86-64; pausing is enabled only where apptrace.capture.ringbuf is supported
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_GET_NEXT_KEY = 4
BPF_MAP_LOOKUP_AND_DELETE_ELEM = 21
_libc = ctypes.CDLL(None, use_errno=True)


def _bpf(cmd: int, map_fd: int, key: ctypes.Array | None, value: ctypes.Array | None) -> int:
    # union bpf_attr for map element commands: map_fd, pad, key, value/next_key, flags
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key) if key is not None else 0,
                       ctypes.addressof(value) if value is not None else 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    return _libc.syscall(SYS_BPF, cmd, buf, len(attr))


def paused_tgids(map_fd: int) -> dict[int, int]:
    """tgid -> ktime (CLOCK_MONOTONIC ns) of its stop, for every entry of the `paused` map."""
    out: dict[int, int] = {}
    key = ctypes.create_string_buffer(4)
    nxt = ctypes.create_string_buffer(4)
    value = ctypes.create_string_buffer(8)
    first = True
    for _ in range(1 << 16):
        if _bpf(BPF_MAP_GET_NEXT_KEY, map_fd, None if first else key, nxt) != 0:
            break
        first = False
        ctypes.memmove(key, nxt, 4)
        if _bpf(BPF_MAP_LOOKUP_ELEM, map_fd, key, value) == 0:
            out[struct.unpack("<I", key.raw)[0]] = struct.unpack("<Q", value.raw)[0]
    return out


def continue_tgid(map_fd: int, tgid: int, ts: int | None = None) -> bool:
    """Continue the stop of ``tgid`` made at ``ts`` (None: whatever stop it is in). True when that stop was still
    in the map (nobody had continued it yet).

    SIGCONT first, then forget: killed between the two, we leave an entry, never a stopped process. The entry is
    taken atomically (lookup-and-delete): once continued, the process may be stopped again at once (its next
    unknown file) and its new entry must survive, or it would stay stopped with nobody knowing.
    """
    try:
        os.kill(tgid, signal.SIGCONT)
    except ProcessLookupError:
        pass
    key = ctypes.create_string_buffer(struct.pack("<I", tgid), 4)
    value = ctypes.create_string_buffer(8)
    if _bpf(BPF_MAP_LOOKUP_AND_DELETE_ELEM, map_fd, key, value) != 0:
        return False
    found = struct.unpack("<Q", value.raw)[0]
    if ts is not None and found != ts:
        _bpf(BPF_MAP_UPDATE_ELEM, map_fd, key, value)  # a newer stop: its own handler continues it
        return False
    return True


def main(argv: list[str]) -> int:
    map_fd, ring_fd, max_ms = int(argv[0]), int(argv[1]), int(argv[2])
    bound_ns = max_ms * 1_000_000
    # Capture's signals (Ctrl-C reaches the whole process group) must not take us first.
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    ep = select.epoll()
    # Edge-triggered: woken by each report, not held awake while capture has not consumed it yet.
    ep.register(ring_fd, select.EPOLLIN | select.EPOLLET)
    ep.register(sys.stdin.fileno(), select.EPOLLIN | select.EPOLLHUP)
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    while True:
        now = time.monotonic_ns()
        stopped = paused_tgids(map_fd)
        due = []
        for tgid, ts in stopped.items():
            if now - ts >= bound_ns and continue_tgid(map_fd, tgid, ts):
                due.append(tgid)
        for tgid in due:
            del stopped[tgid]
            out.write(f"{tgid}\n")
        if due:
            out.flush()
        timeout = 1.0
        if stopped:
            timeout = max(0.001, (min(stopped.values()) + bound_ns - time.monotonic_ns()) / 1e9)
        for fd, _ in ep.poll(timeout):
            if fd == sys.stdin.fileno() and not os.read(fd, 4096):
                # Capture is gone (or done): nobody else will continue what is stopped. Twice: a
                # probe still running as capture died may stop one more process just after the first sweep.
                for _ in range(2):
                    for tgid in paused_tgids(map_fd):
                        continue_tgid(map_fd, tgid)
                    time.sleep(0.05)
                return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
