"""Ring-buffer records from bpf/tls_capture.c, decoded.

The layouts mirror ``struct data_event`` and ``struct meta_event`` in the C file; the
first byte of every record is its type.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

EV_DATA, EV_BIND, EV_CONN, EV_CLOSE, EV_EXEC, EV_EXIT, EV_TGID = 1, 2, 3, 4, 5, 6, 7
#: data_event.flags: capture must look at this record (the others are copied in runs, unread)
FLAG_LOOK = 1
DATA_HDR_SIZE = 56
DATA_FLAGS_WORD = 13  # data_event.flags, as an index of the record's u32 words
FD_NONE, FD_NESTED, FD_SSLMAP, FD_PRIOR_READ, FD_CONN_STRUCT, FD_SOCKET = 0, 1, 2, 3, 4, 5
DIR_EGRESS, DIR_INGRESS = 0, 1
ROLE_UNKNOWN, ROLE_CLIENT, ROLE_SERVER = 0, 1, 2
ROLES = {ROLE_UNKNOWN: None, ROLE_CLIENT: "client", ROLE_SERVER: "server"}
TLS_LIB_NONE = 0  # a plaintext socket's record: no TLS library
TLS_LIBS = {1: "openssl", 2: "boringssl", 3: "go"}
#: data_event.ssl of a plaintext socket's records: this bit, above every user-space address, and its open_ts
PLAIN_SESSION_BIT = 1 << 63
LOSS_KINDS = ("lost_events", "lost_bytes", "truncated_bytes", "untracked_calls", "read_faults", "unfollowed_forks")

DATA_HDR = struct.Struct("<BBBBIIiQQQIIII")  # 56 bytes; the last field is flags
META = struct.Struct("<B3xIIiQQQIHH16s16siH2x16s")  # 104 bytes
assert DATA_HDR.size == 56 and META.size == 104
#: pid, fd and plaintext length of a data record, without decoding the rest (the capture hot path)
DATA_PID_FD_LEN = struct.Struct("<4xI4xi32xI")


@dataclass(slots=True)
class DataEvent:
    egress: bool
    fd_source: int
    tls_lib: str | None  # None: a plaintext socket (FD_SOCKET)
    pid: int
    tid: int
    fd: int
    ts: int  # CLOCK_MONOTONIC ns, as bpf_ktime_get_ns
    ssl: int
    pos: int  # stream position of the SSL call's first byte
    orig_len: int  # bytes the whole SSL call moved
    offset: int  # this chunk's place within the call
    data: bytes


@dataclass(slots=True)
class MetaEvent:
    type: int
    pid: int
    tid: int
    fd: int
    ts: int
    ssl: int
    open_ts: int
    role: str | None
    remote_addr: str | None
    remote_port: int | None
    comm: str
    listen_fd: int
    local_addr: str | None
    local_port: int | None


def fd_key(tgid: int, fd: int) -> int:
    """The key of the kernel's per-socket maps (``fd_key`` in the C): tgid in the high half, fd in the low."""
    return ((tgid & 0xFFFFFFFF) << 32) | (fd & 0xFFFFFFFF)


def decode(buf: bytes) -> DataEvent | MetaEvent:
    if buf[0] == EV_DATA:
        (_, d, src, lib, pid, tid, fd, ts, ssl, pos, orig, off, n, _) = DATA_HDR.unpack_from(buf)
        return DataEvent(d == DIR_EGRESS, src, None if lib == TLS_LIB_NONE else TLS_LIBS.get(lib, "unknown"), pid, tid, fd, ts, ssl, pos, orig, off,
                         buf[DATA_HDR_SIZE : DATA_HDR_SIZE + n])
    (typ, pid, tid, fd, ts, ssl, open_ts, role, family, port, addr, comm, listen_fd, lport,
     laddr) = META.unpack_from(buf)
    remote_addr = remote_port = local_addr = local_port = None
    if family in (socket.AF_INET, socket.AF_INET6):
        remote_addr, remote_port = _ip(family, addr), socket.ntohs(port)
        if lport:
            local_addr, local_port = _ip(family, laddr), lport
    return MetaEvent(typ, pid, tid, fd, ts, ssl, open_ts, ROLES.get(role), remote_addr, remote_port,
                     comm.split(b"\0", 1)[0].decode("utf-8", "replace"), listen_fd, local_addr, local_port)


def _ip(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[:4])
    ip = socket.inet_ntop(socket.AF_INET6, raw)
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip
