"""What /proc tells about a process: its info, its mapped ELF objects, its sockets.

Everything here reads /proc live; nothing here is needed by replay, which gets the
same facts from the annotations recorded at capture time.
"""

from __future__ import annotations

import os
import re
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

INTERPRETERS = re.compile(r"^(python[\d.]*|node(js)?|ruby[\d.]*|perl[\d.]*|java|php[\d.]*|bash|sh|dash|deno|bun)$")
_UNIT = re.compile(r"/([^/]+)\.(service|scope)$")
_CONTAINER = re.compile(r"(?:docker|containerd|crio|libpod)-([0-9a-f]{12})[0-9a-f]*\.scope|/docker/([0-9a-f]{12})")
# The full container id where a runtime put the process: a systemd-driver scope (docker-, cri-containerd-, crio-,
# libpod-<id>.scope) or a cgroupfs-driver directory (/docker/<id>, /kubepods/<qos>/pod<uid>/<id>).
_CONTAINER_ID = re.compile(r"(?:docker|containerd|crio|libpod)-([0-9a-f]{64})\.scope"
                           r"|/(?:docker|libpod|kubepods(?:/[a-z]+)?/pod[0-9a-f-]{36})/([0-9a-f]{64})(?:/|$)")
# A Kubernetes pod's uid: kubepods-<qos>-pod<uid with _ for ->.slice (systemd driver), /kubepods/<qos>/pod<uid>/
_POD_UID = re.compile(r"kubepods[a-z-]*-pod([0-9a-f]{8}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{4}_[0-9a-f]{12})\.slice"
                      r"|/kubepods(?:/[a-z]+)?/pod([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})(?:/|$)")
# Units that say nothing about the application itself.
_GENERIC_UNITS = re.compile(r"^(session-\d+|user@\d+|init|ssh|sshd|cron|getty@.*|serial-getty@.*|run-.*|tmux-spawn-.*)$")


@dataclass
class ProcessInfo:
    pid: int
    comm: str
    exe: str
    cmdline: str
    service: str
    start_time_ticks: int  # field 22 of /proc/PID/stat: tells a reused pid apart
    container_id: str | None = None
    pod_uid: str | None = None

    def as_dict(self) -> dict:
        return {
            "pid": self.pid,
            "comm": self.comm,
            "exe": self.exe,
            "cmdline": self.cmdline,
            "service": self.service,
            "start_time_ticks": self.start_time_ticks,
            "container_id": self.container_id,
            "pod_uid": self.pod_uid,
        }


def _read(path: str, binary: bool = False) -> str | bytes | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data if binary else data.decode("utf-8", "replace")


def container_of(cgroup: str | None) -> tuple[str | None, str | None]:
    """(container id, Kubernetes pod uid) from /proc/PID/cgroup, each None when no line shows one.

    Every hierarchy's line is looked at (v1 lists one per controller, and a runtime may set up only some).
    """
    container = pod = None
    for line in (cgroup or "").splitlines():
        path = line.split(":", 2)[-1]
        if container is None:
            m = _CONTAINER_ID.search(path)
            if m:
                container = m.group(1) or m.group(2)
        if pod is None:
            m = _POD_UID.search(path)
            if m:
                pod = m.group(2) or m.group(1).replace("_", "-")
    return container, pod


def service_name(comm: str, argv: list[str], cgroup: str | None) -> str:
    """The service a process belongs to: systemd unit or container, else a readable argv name.

    ``python3 app.py`` is ``app``, ``node server.js`` is ``server``, ``/usr/sbin/nginx`` is ``nginx``.
    """
    if cgroup:
        container, _pod = container_of(cgroup)
        if container:
            return "container:" + container[:12]
        for line in cgroup.splitlines():
            path = line.rsplit(":", 1)[-1]
            m = _CONTAINER.search(path)
            if m:
                return "container:" + (m.group(1) or m.group(2))
            m = _UNIT.search(path)
            if m and not _GENERIC_UNITS.match(m.group(1)):
                return m.group(1)
    if not argv:
        return comm
    if len(argv) == 1 and " " in argv[0] and not os.path.exists(argv[0]):
        # A process title (setproctitle: "postgres: user db 127.0.0.1(41036) SELECT",
        # "nginx: worker process"): the name is what comes before the colon.
        title = argv[0].split(":", 1)[0].strip()
        return os.path.basename(title.split()[0]) if title else comm
    prog = os.path.basename(argv[0])
    if INTERPRETERS.match(prog):
        args = argv[1:]
        i = 0
        while i < len(args):
            a = args[i]
            if a in ("-m",) and i + 1 < len(args):
                return args[i + 1].rsplit(".", 1)[-1] if args[i + 1].endswith(".__main__") else args[i + 1]
            if a in ("-c", "-e", "--eval"):
                break
            if a.startswith("-"):
                i += 1
                continue
            base = os.path.basename(a)
            stem = os.path.splitext(base)[0]
            if stem in ("index", "main", "__main__", "app", "server") and os.path.dirname(a):
                # ``node srv/index.js``: the folder says more than the file.
                parent = os.path.basename(os.path.dirname(os.path.abspath(a)))
                return parent if stem in ("index", "__main__") else stem
            return stem or base
        return prog
    return prog or comm


def process_info(pid: int) -> ProcessInfo | None:
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    # comm may hold spaces and parentheses: split at the last ')'.
    lp, rp = stat.find("("), stat.rfind(")")
    comm = stat[lp + 1 : rp]
    fields = stat[rp + 2 :].split()
    start = int(fields[19]) if len(fields) > 19 else 0
    raw = _read(f"/proc/{pid}/cmdline", binary=True) or b""
    argv = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        exe = ""
    cgroup = _read(f"/proc/{pid}/cgroup")
    container_id, pod_uid = container_of(cgroup)
    return ProcessInfo(
        pid=pid,
        comm=comm,
        exe=exe,
        cmdline=" ".join(argv),
        service=service_name(comm, argv, cgroup),
        start_time_ticks=start,
        container_id=container_id,
        pod_uid=pod_uid,
    )


def all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def mapped_objects(pid: int) -> list[tuple[str, str]]:
    """Executable file mappings of ``pid``: (path inside the process, path openable from here)."""
    maps = _read(f"/proc/{pid}/maps")
    if not maps:
        return []
    seen: set[str] = set()
    out = []
    for line in maps.splitlines():
        parts = line.split(None, 5)
        if len(parts) < 6 or "x" not in parts[1]:
            continue
        path = parts[5]
        if not path.startswith("/") or path in seen or path.endswith(" (deleted)"):
            continue
        seen.add(path)
        # /proc/PID/root reaches files inside the process's mount namespace (containers).
        out.append((path, f"/proc/{pid}/root{path}"))
    return out


@dataclass
class SocketInfo:
    inode: int
    family: str  # 'ipv4', 'ipv6', 'unix', 'other'
    local_addr: str | None = None
    local_port: int | None = None
    remote_addr: str | None = None
    remote_port: int | None = None
    listening_local_port: bool = False  # someone listens on our local port: we are the server side

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def socket_inode(pid: int, fd: int) -> int | None:
    try:
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if target.startswith("socket:["):
        return int(target[8:-1])
    return None


def _decode_addr(hexaddr: str) -> tuple[str, int]:
    addr, port = hexaddr.split(":")
    raw = bytes.fromhex(addr)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        # /proc prints IPv6 as four host-order 32-bit words.
        words = struct.unpack("<4I", raw)
        ip6 = struct.pack(">4I", *words)
        ip = socket.inet_ntop(socket.AF_INET6, ip6)
        if ip.startswith("::ffff:") and "." in ip:
            ip = ip[7:]
    return ip, int(port, 16)


_TCP_LISTEN, _TCP_ESTABLISHED = "0A", "01"


def _tcp_rows(prefix: str) -> Iterator[tuple[str, list[str]]]:
    """Rows of ``PREFIX/net/tcp`` and ``tcp6`` as (family, columns): local, remote, state, ..., inode."""
    for name, family in (("tcp", "ipv4"), ("tcp6", "ipv6")):
        table = _read(f"{prefix}/net/{name}")
        for line in (table or "").splitlines()[1:]:
            cols = line.split()
            if len(cols) >= 10:
                yield family, cols


def _port(hexaddr: str) -> int:
    return int(hexaddr.rsplit(":", 1)[1], 16)


def socket_info(pid: int, fd: int) -> SocketInfo | None:
    """The TCP 4-tuple of ``pid``'s ``fd`` from /proc/PID/net/tcp{,6}; None if fd is no socket."""
    inode = socket_inode(pid, fd)
    if inode is None:
        return None
    found: SocketInfo | None = None
    listening: set[int] = set()
    for family, cols in _tcp_rows(f"/proc/{pid}"):
        if cols[3] == _TCP_LISTEN:
            listening.add(_port(cols[1]))
        if found is None and int(cols[9]) == inode:
            la, lp = _decode_addr(cols[1])
            ra, rp = _decode_addr(cols[2])
            found = SocketInfo(inode, family, la, lp, ra, rp)
    if found is None:
        paths = unix_socket_paths(pid)
        if inode in paths:
            # A Unix socket: its path (a listener's, and the sockets accepted from it) is its address.
            return SocketInfo(inode, "unix", local_addr=paths[inode])
        return SocketInfo(inode, "other")
    found.listening_local_port = found.local_port in listening
    return found


def unix_socket_paths(pid: int) -> dict[int, str | None]:
    """Unix sockets of ``pid``'s network namespace by inode: their path, None for an unnamed one.

    /proc/PID/net/unix: ``Num RefCount Protocol Flags Type St Inode [Path]``; an abstract name starts
    with '@'. A socket accepted from a listener shows the listener's path.
    """
    out: dict[int, str | None] = {}
    for line in (_read(f"/proc/{pid}/net/unix") or "").splitlines()[1:]:
        cols = line.split(None, 7)
        if len(cols) >= 7 and cols[6].isdigit():
            out[int(cols[6])] = cols[7] if len(cols) > 7 else None
    return out


def tcp_sockets(pid: int) -> list[tuple[int, bool]]:
    """Open TCP sockets of ``pid`` as (fd, is_server_side), from /proc: for connections older than the tracer."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    inodes: dict[int, int] = {}
    for fd in fds:
        inode = socket_inode(pid, int(fd))
        if inode is not None:
            inodes[inode] = int(fd)
    if not inodes:
        return []
    listening: set[int] = set()
    established: list[tuple[int, int]] = []  # (fd, local port)
    for _family, cols in _tcp_rows(f"/proc/{pid}"):
        if cols[3] == _TCP_LISTEN:
            listening.add(_port(cols[1]))
        elif cols[3] == _TCP_ESTABLISHED and int(cols[9]) in inodes:
            established.append((inodes[int(cols[9])], _port(cols[1])))
    return [(fd, port in listening) for fd, port in established]


def listening_ports() -> set[int]:
    """TCP ports in LISTEN state in this network namespace."""
    return {_port(cols[1]) for _family, cols in _tcp_rows("/proc") if cols[3] == _TCP_LISTEN}
