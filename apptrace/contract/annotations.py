"""Annotations: what capture learned outside the ring buffer, for the analysis process and for replay.

The kernel records say which process and socket bytes belong to, not what they are. Capture reads
that from /proc while the process and socket still exist (replay cannot: they are gone) and writes
it beside the records, in order. Each kind is one frozen record here; on disk it is one JSON object
whose ``t`` names the kind, with the same keys as the record's fields, so raw captures written by
earlier versions still replay (unknown keys are ignored, missing ones take the defaults).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, ClassVar

from apptrace.contract.events import LOSS_KINDS


@dataclass(frozen=True, slots=True)
class ProcessSeen:
    """A process that does TLS, as /proc described it (at its exec, or when its first record came)."""

    KIND: ClassVar[str] = "proc"
    pid: int
    comm: str = ""
    exe: str = ""
    cmdline: str = ""
    service: str = ""
    start_time: int | None = None  # wall-clock ns
    start_time_ticks: int | None = None  # /proc/PID/stat field 22: tells a reused pid apart
    container_id: str | None = None  # from /proc/PID/cgroup, when a container runtime put it in one
    pod_uid: str | None = None  # the Kubernetes pod's uid, when the cgroup path shows one


@dataclass(frozen=True, slots=True)
class SocketSeen:
    """What /proc said about one fd of a process: read late, so the kernel's own view wins (see pipeline)."""

    KIND: ClassVar[str] = "sock"
    pid: int
    fd: int
    is_socket: bool = False
    inode: int | None = None
    family: str | None = None  # 'ipv4', 'ipv6', 'unix', 'other'
    local_addr: str | None = None
    local_port: int | None = None
    remote_addr: str | None = None
    remote_port: int | None = None
    listening_local_port: bool = False  # someone listens on our local port: we are the server side


@dataclass(frozen=True, slots=True)
class LibraryProbed:
    """A TLS object (shared library or executable) capture attached its probes to."""

    KIND: ClassVar[str] = "lib"
    path: str
    tls_lib: str
    offsets: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LibraryUnprobeable:
    """A TLS implementation capture found but cannot probe, and why (e.g. stripped of its symbols)."""

    KIND: ClassVar[str] = "unprobeable"
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ProcessMissed:
    """A process whose TLS library may have run before its probes were in (a late process capture could not
    stop in time, a file it could not read or probe), and why: its first requests may be missing."""

    KIND: ClassVar[str] = "missed"
    pid: int
    comm: str = ""
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ProtocolUnknown:
    """A process's plaintext connections whose first bytes were no protocol apptrace parses, so far (the kernel's
    count, a running total): decided in the kernel and never copied, so this is all that is known of them."""

    KIND: ClassVar[str] = "unknown_protocol"
    pid: int
    comm: str = ""
    conns: int = 0


@dataclass(frozen=True, slots=True)
class Losses:
    """The loss counters so far (totals since capture started, not deltas): kernel and spool."""

    KIND: ClassVar[str] = "losses"
    lost_events: int = 0
    lost_bytes: int = 0
    truncated_bytes: int = 0
    untracked_calls: int = 0
    read_faults: int = 0
    unfollowed_forks: int = 0  # children of a traced --pid left untraced (the kernel's table was full)
    backlog_dropped_events: int = 0  # data records the spool refused past --spool-max
    disk_full_dropped_events: int = 0  # records the spool could not write: no room on its filesystem
    # plaintext sockets whose first bytes were no protocol apptrace parses: not copied (the kernel's count)
    unknown_protocol_conns: int = 0

    def kernel(self) -> dict[str, int]:
        """The kernel's counters by name (``events.LOSS_KINDS``)."""
        return {k: getattr(self, k) for k in LOSS_KINDS}


Annotation = (ProcessSeen | SocketSeen | LibraryProbed | LibraryUnprobeable | ProcessMissed | ProtocolUnknown
              | Losses)

_KINDS: dict[str, Any] = {cls.KIND: cls for cls in (ProcessSeen, SocketSeen, LibraryProbed, LibraryUnprobeable,
                                                   ProcessMissed, ProtocolUnknown, Losses)}
_FIELDS: dict[Any, frozenset[str]] = {cls: frozenset(f.name for f in dataclasses.fields(cls))
                                      for cls in _KINDS.values()}


def encode(a: Annotation) -> bytes:
    """The JSON bytes of one annotation frame."""
    obj = {"t": a.KIND, **{f: getattr(a, f) for f in _FIELDS[type(a)]}}
    return json.dumps(obj, separators=(",", ":")).encode()


def decode(payload: bytes | str | dict) -> Annotation:
    """One annotation from its JSON (or already parsed) form; ValueError for an unknown kind or a bad field."""
    obj = json.loads(payload) if not isinstance(payload, dict) else payload
    if not isinstance(obj, dict):
        raise ValueError(f"annotation is not a JSON object: {str(obj)[:60]!r}")
    cls = _KINDS.get(obj.get("t"))
    if cls is None:
        raise ValueError(f"unknown annotation kind {obj.get('t')!r}")
    known = _FIELDS[cls]
    try:
        return cls(**{k: v for k, v in obj.items() if k in known})
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"bad {cls.KIND} annotation: {exc}") from None
