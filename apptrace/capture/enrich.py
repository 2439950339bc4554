"""What /proc knows about the processes and sockets the kernel reports, read while they still exist.

The kernel's records name a pid and an fd; what they are (command line, service, addresses) only
/proc can say, and only while the process lives. Capture reads it once per process and per socket
and writes it beside the records as annotations (``apptrace.contract.annotations``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

from apptrace.capture import procfs
from apptrace.contract.annotations import Annotation, ProcessSeen, SocketSeen
from apptrace.contract.events import (
    EV_BIND,
    EV_CLOSE,
    EV_CONN,
    EV_EXEC,
    EV_EXIT,
    EV_TGID,
    DataEvent,
    MetaEvent,
)


def _boot_time_ns() -> int:
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("btime"):
                return int(line.split()[1]) * 1_000_000_000
    return 0


class Enricher:
    """Reads /proc once per process and per socket, as annotations for the pipeline (and the raw file)."""

    #: execs remembered for processes not yet seen doing TLS (most never do)
    EXEC_MEMORY = 1024

    def __init__(self) -> None:
        self.boot_ns = _boot_time_ns()
        self.hz = os.sysconf("SC_CLK_TCK")
        self.procs: set[int] = set()
        self.socks: set[tuple[int, int]] = set()
        self._execs: dict[int, procfs.ProcessInfo] = {}
        #: the path a Unix socket's connect() named, as the kernel kept it (Probes.unix_path)
        self.unix_path: Callable[[int, int], str | None] | None = None

    def proc(self, pid: int) -> ProcessSeen | None:
        info = procfs.process_info(pid)
        self.procs.add(pid)
        if info is None:
            # Gone already (a short-lived client whose first data we drain after it exited):
            # what /proc said at its exec, if we saw it.
            info = self._execs.get(pid)
            if info is None:
                return None
        self._execs.pop(pid, None)
        return ProcessSeen(pid=info.pid, comm=info.comm, exe=info.exe, cmdline=info.cmdline, service=info.service,
                           start_time=self.boot_ns + info.start_time_ticks * 1_000_000_000 // self.hz,
                           start_time_ticks=info.start_time_ticks, container_id=info.container_id,
                           pod_uid=info.pod_uid)

    def sock(self, pid: int, fd: int, listen_fd: int = -1, accept_pid: int = 0) -> SocketSeen:
        self.socks.add((pid, fd))
        info = procfs.socket_info(pid, fd)
        seen = SocketSeen(pid, fd) if info is None else SocketSeen(pid, fd, True, **info.as_dict())
        if info is None or info.family in ("unix", "other"):
            connected_to = self.unix_path(pid, fd) if self.unix_path is not None else None
            if connected_to is not None:
                # A Unix client: no address of its own; the path it connected to is its peer's.
                return dataclasses.replace(seen, is_socket=True, family="unix", remote_addr=connected_to,
                                           local_addr=None)
            if listen_fd >= 0 and not seen.local_addr:
                # An accepted Unix socket already gone: its listener's path is its own. A forking server's
                # child (a PostgreSQL backend, gone first) names the parent that accepted it (accept_pid).
                listener = procfs.socket_info(accept_pid or pid, listen_fd)
                if listener is not None and listener.family == "unix" and listener.local_addr:
                    return dataclasses.replace(seen, is_socket=True, family="unix", local_addr=listener.local_addr)
        if (info is None or info.local_port is None) and listen_fd >= 0:
            # The accepted socket is gone already; the listener it came from still says where we listen.
            listener = procfs.socket_info(accept_pid or pid, listen_fd)
            if listener is not None and listener.local_port is not None:
                seen = dataclasses.replace(seen, is_socket=True, local_addr=listener.local_addr,
                                           local_port=listener.local_port, listening_local_port=True,
                                           family=listener.family)
        return seen

    def annotate_data(self, pid: int, fd: int) -> list[Annotation]:
        """For a data record whose process or socket is new to us (the caller checks, cheaply)."""
        out: list[Annotation] = []
        if pid not in self.procs:
            a = self.proc(pid)
            if a:
                out.append(a)
        if fd >= 0 and (pid, fd) not in self.socks:
            out.append(self.sock(pid, fd))
        return out

    def annotate(self, ev: DataEvent | MetaEvent) -> list[Annotation]:
        if type(ev) is DataEvent:
            return self.annotate_data(ev.pid, ev.fd)
        out: list[Annotation] = []
        pid = ev.pid
        t = ev.type
        if t == EV_CONN:
            if ev.local_port and ev.remote_port:
                self.socks.add((pid, ev.fd))  # the kernel said it all: no /proc read, no race
            else:
                # EV_CONN's ssl field: the process that accepted the socket, when it is not pid
                out.append(self.sock(pid, ev.fd, ev.listen_fd, ev.ssl))
        elif t == EV_BIND and (pid, ev.fd) not in self.socks:
            out.append(self.sock(pid, ev.fd))
        elif t == EV_CLOSE:
            self.socks.discard((pid, ev.fd))
        elif t == EV_EXEC:
            self._forget_sockets(pid)
            if pid in self.procs:  # a traced process changed its image: describe the new one now
                a = self.proc(pid)
                if a:
                    out.append(a)
            else:
                # Described only if it ever does TLS: a process row per exec on the machine
                # would fill the DB with shells and compilers.
                info = procfs.process_info(pid)
                if info is not None:
                    if len(self._execs) >= self.EXEC_MEMORY:
                        del self._execs[next(iter(self._execs))]
                    self._execs[pid] = info
        elif t == EV_TGID:
            # The process's first SSL call: ahead of its data, which capture copies unread.
            out.extend(self.annotate_data(pid, -1))
        elif t == EV_EXIT:
            self.procs.discard(pid)
            self._execs.pop(pid, None)
            self._forget_sockets(pid)
        return out

    def _forget_sockets(self, pid: int) -> None:
        # In place: the capture loop holds these sets for a whole batch.
        self.socks.difference_update([k for k in self.socks if k[0] == pid])
