"""Load bpf/tls_capture.c with BCC and attach it: uprobes per TLS object, tracepoints, filters.

Uprobes go on the file (inode) at offsets computed by ``apptrace.capture.elfsyms`` from the ELF
symbols; a probe on a file with pid -1 covers every process, present and future, that
maps it, so each file is attached once. With ``--pid`` the probes are attached per
process instead, so the kernel traps only there.
"""

from __future__ import annotations

import ctypes
import os
import signal
import struct
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources

from apptrace.capture import ringbuf, uprobe_links
from apptrace.capture.elfsyms import TlsObject
from apptrace.capture.gosyms import READ as GO_READ
from apptrace.capture.gosyms import WRITE as GO_WRITE
from apptrace.capture.gosyms import GoLayout
from apptrace.contract.events import DATA_FLAGS_WORD, EV_DATA, LOSS_KINDS, fd_key

# (symbol, BPF function suffix); the return probe is shared.
# bpf(2) on x86-64: BPF_ENABLE_STATS with BPF_STATS_RUN_TIME (uapi/linux/bpf.h)
SYS_BPF = 321
BPF_ENABLE_STATS = 32
BPF_STATS_RUN_TIME = 0

_PROBES = (
    ("SSL_write", "write_enter"),
    ("SSL_read", "read_enter"),
    ("SSL_write_ex", "write_ex_enter"),
    ("SSL_read_ex", "read_ex_enter"),
)


UPROBES_CLOSED_INLINE = 32  # perf-event uprobes only: more are closed by a child process after capture exits
GO_LAYOUT_SLOTS = 4  # enum GO_LAYOUT_SLOTS in the C: probe_go_*_enter_0 … _3


class LoadError(Exception):
    pass


@dataclass(frozen=True)
class CaptureConfig:
    max_chunk: int = 16384  # bytes per ring-buffer record
    max_chunks: int = 64  # records per SSL call: 1 MiB per call by default
    ring_pages: int = 4096  # 16 MiB of ring buffer
    pids: tuple[int, ...] = ()
    comms: tuple[str, ...] = ()
    follow_forks: bool = True  # the processes a --pid forks are traced too
    plaintext: bool = True  # plaintext (non-TLS) sockets are captured too (off: --no-plaintext)
    # 'stop': a process that opens an unknown libssl or execs an unknown file is stopped until it is probed;
    # 'report' (--no-pause): unknown libssl opens are only reported, probed late, and named as possible misses;
    # 'off': neither (the benchmarks' baseline)
    pause: str = "stop"
    pause_max_ms: int = 200  # the longest a process stays stopped, whatever user space is doing

    @property
    def probe_pids(self) -> tuple[int, ...]:
        """Where uprobes go: each --pid alone (the kernel then traps only there) when no child of theirs is
        to be followed, else every process mapping the file (-1): a child, or a process a --comm names, may
        start later and make its first SSL call at once. The BPF filter keeps the union of --pid, their
        children and --comm either way."""
        return self.pids if self.pids and not self.comms and not self.follow_forks else (-1,)

    def in_scope(self, pid: int, comm: str | None) -> bool:
        """Is this process traced: no filter, one of --pid, or named by --comm (the union)."""
        if not self.pids and not self.comms:
            return True
        return pid in self.pids or (comm is not None and comm in self.comms)

    @property
    def wake_bytes(self) -> int:
        """Bytes of records a CPU writes before it wakes user space early (between 20 ms polls)."""
        return self.ring_pages * 4096 // 8

    @property
    def max_capture_per_call(self) -> int:
        return self.max_chunk * self.max_chunks

    def validate(self) -> None:
        if self.pause not in ("stop", "report", "off"):
            raise LoadError(f"pause must be stop, report or off, got {self.pause!r}")
        if not 10 <= self.pause_max_ms <= 10000:
            raise LoadError(f"the longest pause must be between 10 and 10000 ms, got {self.pause_max_ms}")
        for name, v in (("max_chunk", self.max_chunk), ("ring_pages", self.ring_pages)):
            if v <= 0 or v & (v - 1):
                raise LoadError(f"{name} must be a power of two, got {v}")
        if not 256 <= self.max_chunk <= 65536:
            raise LoadError(f"max_chunk must be between 256 and 65536 bytes, got {self.max_chunk}")
        if not 1 <= self.max_chunks <= 256:
            raise LoadError(f"max_chunks must be between 1 and 256, got {self.max_chunks}")


def _pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 1 << 22  # the kernel's limit (PID_MAX_LIMIT on 64-bit)


def _host_pidns() -> tuple[int, int]:
    """(dev, inode) of this process's pid namespace: processes outside it are paused per cgroup (section 13)."""
    st = os.stat("/proc/self/ns/pid")
    return st.st_dev, st.st_ino


def _cflags() -> list[str]:
    flags = ["-Wno-macro-redefined"]
    if os.path.exists("/sys/kernel/tracing/events/syscalls/sys_enter_open"):
        flags.append("-DAPPTRACE_HAS_SYS_OPEN")  # x86-64 has open(2); newer architectures only openat
    return flags


def bpf_source(config: CaptureConfig) -> str:
    text = resources.files("apptrace.bpf").joinpath("tls_capture.c").read_text()
    for key, value in {
        "__MAX_CHUNK__": config.max_chunk,
        "__MAX_CHUNKS__": config.max_chunks,
        "__WAKE_BYTES__": config.wake_bytes,
        "__FILTER__": 1 if (config.pids or config.comms) else 0,
        "__FOLLOW_FORKS__": 1 if config.follow_forks else 0,
        "__RINGBUF_PAGES__": config.ring_pages,
        "__TGID_WORDS__": (_pid_max() + 63) // 64,
        "__PLAINTEXT__": 1 if config.plaintext else 0,
        "__PAUSE__": 0 if config.pause == "off" else 1,
        "__HOST_PIDNS_DEV__": _host_pidns()[0],
        "__HOST_PIDNS_INO__": _host_pidns()[1],
    }.items():
        text = text.replace(key, str(value))
    return text


class Probes:
    """The loaded program and everything attached to it."""

    def __init__(self, config: CaptureConfig, on_event: Callable[[bytes], bool],
                 on_run: Callable[[bytes, int, int], object] | None = None) -> None:
        from bcc import BPF  # imported here: replay and the parsers need no BCC

        config.validate()
        self.config = config
        try:
            self.bpf = BPF(text=bpf_source(config), cflags=_cflags())
        except Exception as exc:  # BCC reports compile errors as a bare Exception
            raise LoadError(f"BPF program failed to compile or load: {exc}") from None
        self.attached: dict[tuple[int, int, int], TlsObject] = {}  # (dev, ino, pid) -> object
        for pid in config.pids:
            self.bpf["allowed_tgids"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)
        for comm in config.comms:
            key = self.bpf["allowed_comms"].Key()
            key.c = comm.encode()[:15]
            self.bpf["allowed_comms"][key] = ctypes.c_uint8(1)
        self._cb = on_event
        self._on_run = on_run
        self._ring: ringbuf.RingReader | None = None
        self.ring_bytes = config.ring_pages * 4096
        self.ring_fill_max = 0  # bytes waiting in the ring at the fullest poll since the caller last reset it
        self._stats_fd: int | None = None
        self.closer: tuple[int, int] | None = None  # (pid, uprobes) of the child removing our uprobes after us
        self._links: list[int] = []  # uprobe_multi links (where the kernel has none, BCC holds perf-event uprobes)
        self._uprobes = 0  # offsets probed, whichever the kind
        events = self.bpf["events"]
        if ringbuf.SUPPORTED:
            # Our own mmap consumer: libbpf's costs a ctypes callback (several µs) per record.
            try:
                self._ring = ringbuf.RingReader(events.map_fd, config.ring_pages * 4096)
            except (OSError, ValueError) as exc:
                self.bpf.cleanup()
                raise LoadError(f"cannot map the ring buffer: {exc}") from None
        else:
            # Plain loads and stores order correctly only on x86 (see apptrace/ringbuf.py):
            # elsewhere libbpf's consumer, with its barriers, does the draining.
            events.open_ring_buffer(self._on_ring)
        # The pause ring (section 13) wakes the same wait as the data ring: a stopped process is
        # handled at the next wake-up, ahead of any data backlog.
        self._pause_ring: ringbuf.RingReader | None = None
        self.on_pause: Callable[[bytes], object] | None = None
        if config.pause != "off" and self._ring is not None:
            self._pause_ring = ringbuf.RingReader(self.bpf["pause_events"].map_fd)
            self._ring.also_wake_on(self.bpf["pause_events"].map_fd)
        # Verify every probe program now: loading one takes ~50 ms, and a freshly exec'd static
        # binary (node) must be attached before it makes its first TLS call.
        for lib in ("openssl", "boringssl"):
            for _, suffix in _PROBES:
                self._load(f"probe_{lib}_{suffix}")
        self._load("probe_ssl_return")
        self._load("probe_ssl_set_fd")
        # Go layouts in use, by slot (struct go_layout). Slot 0's probes are verified now, for the same
        # reason as above; a binary with another layout waits for its slot's.
        self._go_slots: list[GoLayout] = []
        for name in ("probe_go_read_enter_0", "probe_go_write_enter_0", "probe_go_return"):
            self._load(name)

    def _load(self, fn_name: str) -> None:
        uprobe_links.load(self.bpf, fn_name)

    def _on_ring(self, ctx, data, size) -> int:  # noqa: ARG002 - BCC's callback signature
        # A negative return stops libbpf's drain (this record is already consumed and kept):
        # user space takes a bounded batch at a time, and when it cannot keep up the kernel
        # ring fills and counts its drops, instead of this process's memory growing.
        return -1 if self._cb(ctypes.string_at(data, size)) else 0

    def seed_socket(self, pid: int, fd: int, role: int) -> None:
        """Tell the kernel about a socket opened before we attached, so SSL calls on it get its fd."""
        conns = self.bpf["conns"]
        key = conns.Key(fd_key(pid, fd))
        if key in conns:
            return
        leaf = conns.Leaf()
        leaf.listen_fd = -1
        leaf.role = role
        if self.config.plaintext:
            # Counted as connect() counts a socket (plain_live_add in the C): its process's bit goes on.
            leaf.plain_counted = 1
            live = self.bpf["plain_live"]
            k = ctypes.c_uint32(pid)
            try:
                n = live[k].value
            except KeyError:
                n = 0
            live[k] = ctypes.c_int64(n + 1)
        conns[key] = leaf
        if self.config.plaintext:
            self._mark_plain(pid)

    def _mark_plain(self, pid: int) -> None:
        """Set ``pid``'s bit in plain_tgid_bits: its sockets are looked at for plaintext."""
        bits = self.bpf["plain_tgid_bits"]
        word = ctypes.c_int(pid >> 6)
        try:
            bits[word] = ctypes.c_uint64(bits[word].value | (1 << (pid & 63)))
        except (KeyError, IndexError):
            pass  # past the bitmap: the kernel looks at every such process anyway

    def ignore_pid(self, pid: int) -> None:
        """Never copy ``pid``'s sockets as plaintext (apptrace's own processes)."""
        self.bpf["ignored_tgids"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def unknown_protocol(self) -> dict[int, tuple[str, int]]:
        """Per process (pid → comm, count): connections whose first bytes were no protocol apptrace parses."""
        out = {}
        for k, v in self.bpf["unknown_protocol"].items():
            out[int(k.value)] = (bytes(v.comm).split(b"\0", 1)[0].decode(errors="replace"), int(v.conns))
        return out

    def unix_path(self, pid: int, fd: int) -> str | None:
        """The path a Unix socket's connect() named, if the kernel saw it."""
        table = self.bpf["unix_paths"]
        try:
            leaf = table[table.Key(fd_key(pid, fd))]
        except KeyError:
            return None
        raw = bytes(leaf.path)
        if raw[:1] == b"\0":  # the abstract namespace: named with a leading '@', as ss(8) does
            return "@" + raw[1:].split(b"\0", 1)[0].decode(errors="replace")
        return raw.split(b"\0", 1)[0].decode(errors="replace") or None

    def seed_listen_ports(self, ports: set[int]) -> None:
        """Ports listening before we attached: sockets on them are the server side."""
        table = self.bpf["listen_ports"]
        for port in ports:
            table[ctypes.c_uint16(port)] = ctypes.c_uint8(1)

    def exec_path(self, pid: int) -> str | None:
        """The file ``pid`` last exec'd, as execve() named it (kept by the kernel past the process's exit)."""
        table = self.bpf["exec_paths"]
        try:
            leaf = table[ctypes.c_uint32(pid)]
        except KeyError:
            return None
        return bytes(leaf.path).split(b"\0", 1)[0].decode(errors="replace") or None

    def allow_pid(self, pid: int) -> None:
        self.bpf["allowed_tgids"][ctypes.c_uint32(pid)] = ctypes.c_uint8(1)

    def _attach(self, fn_name: str, path: str, offsets: list[int], pid: int, retprobe: bool, ino: int) -> None:
        """``fn_name`` at each file offset of ``path``: one uprobe_multi link, or perf-event uprobes (uprobe_links)."""
        if not offsets:
            return
        try:
            link = uprobe_links.attach(self.bpf, fn_name, path, offsets, pid, retprobe, f"apptrace_{ino:x}")
        except OSError as exc:
            raise LoadError(f"cannot attach {'uretprobe' if retprobe else 'uprobe'}s to {path} at "
                            f"{', '.join(f'{o:#x}' for o in offsets)}: {exc.strerror}") from None
        if link is not None:
            self._links.append(link)
        self._uprobes += len(offsets)

    def _go_slot(self, layout: GoLayout) -> int:
        """The layout slot whose probes read ``layout``'s offsets, filled on first use."""
        if layout in self._go_slots:
            return self._go_slots.index(layout)
        if len(self._go_slots) >= GO_LAYOUT_SLOTS:
            raise LoadError(f"more than {GO_LAYOUT_SLOTS} Go struct layouts at once: {layout} has no probe slot")
        slot = len(self._go_slots)
        table = self.bpf["go_layouts"]
        leaf = table.Leaf()
        leaf.conn_iface, leaf.netconn_fd, leaf.netfd_sysfd = layout.conn_iface, layout.netconn_fd, layout.netfd_sysfd
        table[ctypes.c_int(slot)] = leaf
        self._go_slots.append(layout)
        return slot

    def _attach_go(self, obj: TlsObject, pid: int) -> None:
        """Entry uprobes on (*Conn).Read/Write and a uprobe on each of their RETs: never uretprobes (Go moves
        stacks, and a rewritten return address on a moved stack crashes the program)."""
        assert isinstance(obj.go_layout, GoLayout)
        slot = self._go_slot(obj.go_layout)
        for symbol, direction in ((GO_READ, "read"), (GO_WRITE, "write")):
            self._attach(f"probe_go_{direction}_enter_{slot}", obj.path, [obj.offsets[symbol]], pid, False, obj.ino)
        returns = [ret for symbol in (GO_READ, GO_WRITE) for ret in obj.returns[symbol]]
        self._attach("probe_go_return", obj.path, returns, pid, False, obj.ino)

    def attach(self, obj: TlsObject) -> bool:
        """Attach to ``obj`` once per file (or once per --pid). Returns False if already attached."""
        pids = self.config.probe_pids
        done = False
        for pid in pids:
            key = (obj.dev, obj.ino, pid)
            if key in self.attached:
                continue
            if obj.tls_lib == "go":
                self._attach_go(obj, pid)
                self.attached[key] = obj
                done = True
                continue
            returns = []
            for symbol, suffix in _PROBES:
                off = obj.offsets.get(symbol)
                if off is None:
                    continue  # the _ex pair is optional (Debian's BoringSSL has none)
                self._attach(f"probe_{obj.tls_lib}_{suffix}", obj.path, [off], pid, False, obj.ino)
                returns.append(off)
            self._attach("probe_ssl_return", obj.path, returns, pid, True, obj.ino)
            if "SSL_set_fd" in obj.offsets:
                self._attach("probe_ssl_set_fd", obj.path, [obj.offsets["SSL_set_fd"]], pid, False, obj.ino)
            self.attached[key] = obj
            done = True
        return done

    def is_attached(self, obj: TlsObject) -> bool:
        return all((obj.dev, obj.ino, pid) in self.attached for pid in self.config.probe_pids)

    # ---- pausing (section 13 of the C) ----
    @property
    def pausing_supported(self) -> bool:
        return self._pause_ring is not None

    def drain_pauses(self) -> int:
        if self._pause_ring is None or self.on_pause is None:
            return 0
        return self._pause_ring.drain(self.on_pause)

    def pause_map_fds(self) -> tuple[int, int]:
        """The `paused` map's and the pause ring's fds, for the watchdog process."""
        return self.bpf["paused"].map_fd, self.bpf["pause_events"].map_fd

    def set_pausing(self, mode: str) -> None:
        """'stop', 'report' or 'off' (enum pause_mode in the C)."""
        value = {"off": 0, "stop": 1, "report": 2}[mode]
        self.bpf["pause_on"][ctypes.c_int(0)] = ctypes.c_uint32(value)

    def exempt_from_pause(self, tgid: int) -> None:
        self.bpf["pause_exempt"][ctypes.c_uint32(tgid)] = ctypes.c_uint8(1)

    def mark_known(self, key: bytes) -> None:
        """A struct pause_key (ns, zero-padded path) user space has judged: never paused for again."""
        table = self.bpf["known_paths"]
        k = table.Key()
        ctypes.memmove(ctypes.byref(k), key, min(len(key), ctypes.sizeof(k)))
        table[k] = ctypes.c_uint8(1)

    def known_count(self) -> int:
        return sum(1 for _ in self.bpf["known_paths"].keys())

    def unpause(self, tgid: int, ts: int | None = None) -> bool:
        """Continue ``tgid``'s stop made at ``ts``; False when the watchdog had already (see
        pause_watchdog.continue_tgid)."""
        from apptrace.capture.pause_watchdog import continue_tgid
        return continue_tgid(self.bpf["paused"].map_fd, tgid, ts)

    def poll(self, timeout_ms: int) -> None:
        # Records are written without wake-ups most of the time: poll waits for a forced
        # wake-up or the timeout, then drains whatever is there.
        if self._ring is not None:
            self._ring.wait(timeout_ms)
            if self._pause_ring is not None:
                self.drain_pauses()
            pending = self._ring.pending()
            if pending > self.ring_fill_max:
                self.ring_fill_max = pending
            if self._on_run is None:
                self._ring.drain(self._cb)
            else:
                # Data records the kernel did not flag go to disk in runs, unread (see tracer.py).
                self._ring.drain_runs(EV_DATA, DATA_FLAGS_WORD, self._on_run, self._cb)
            return
        self.bpf.ring_buffer_poll(timeout_ms)
        self.bpf.ring_buffer_consume()

    def losses(self) -> dict[str, int]:
        table = self.bpf["losses"]
        out = {}
        for i, name in enumerate(LOSS_KINDS):
            out[name] = int(sum(table[ctypes.c_int(i)]))
        return out

    def probe_count(self) -> int:
        return self._uprobes

    def enable_run_stats(self) -> bool:
        """Have the kernel time every BPF program run, for as long as these probes are loaded (BPF_ENABLE_STATS:
        the fd held keeps it on; closing it turns it off again, unless someone else asked too). False if refused."""
        if self._stats_fd is not None:
            return True
        attr = ctypes.create_string_buffer(struct.pack("<I", BPF_STATS_RUN_TIME), 120)
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(SYS_BPF, BPF_ENABLE_STATS, attr, ctypes.sizeof(attr))
        if fd < 0:
            return False
        self._stats_fd = fd
        return True

    def run_stats(self) -> dict[str, tuple[int, int]]:
        """Program name → (run time ns, runs), from each loaded program's fdinfo."""
        out = {}
        for name, fn in self.bpf.funcs.items():
            try:
                with open(f"/proc/self/fdinfo/{fn.fd}") as f:
                    info = dict(line.split(":", 1) for line in f if ":" in line)
                out[name.decode() if isinstance(name, bytes) else name] = (
                    int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
            except (OSError, ValueError):
                continue
        return out

    def _close_uprobes(self) -> None:
        """Remove every uprobe, without making capture's exit wait for it.

        Links go at once, closed from many threads (see uprobe_links). Removing a perf-event uprobe waits for
        the kernel (~150 ms each here, one at a time whatever the threads): ~1.4 s per file probed, minutes for a capture that probed 200 private libssl copies. Past a few files, a child
        process takes the fds over and closes them after we are gone; it holds nothing else (no pipe a caller
        waits on, no map but what the probes hold). Our uprobes are perf events of the uprobe PMU, with no tracefs
        entry: the last close of the fd removes one.
        """
        uprobe_links.close_all(self._links)
        self._links.clear()
        fds = list(self.bpf.uprobe_fds.values())
        self.bpf.uprobe_fds.clear()
        if len(fds) > UPROBES_CLOSED_INLINE:
            try:
                child = os.fork()
            except OSError:
                child = -1
            if child > 0:
                self.closer = (child, len(fds))
            if child == 0:
                try:
                    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                        signal.signal(s, signal.SIG_IGN)
                    keep = set(fds)
                    for name in os.listdir("/proc/self/fd"):
                        if int(name) not in keep:
                            try:
                                os.close(int(name))
                            except OSError:
                                pass
                    for fd in fds:
                        os.close(fd)
                finally:
                    os._exit(0)
        for fd in fds:
            os.close(fd)

    def close(self) -> None:
        if self._stats_fd is not None:
            os.close(self._stats_fd)
            self._stats_fd = None
        try:
            # The mappings hold the map alive; release them before BCC closes its fd.
            if self._ring is not None:
                self._ring.close()
            if self._pause_ring is not None:
                self._pause_ring.close()
            self._close_uprobes()
            self.bpf.cleanup()
        finally:
            self.attached.clear()


def check_privileges() -> str | None:
    """Why this process cannot load BPF programs, or None if it can."""
    if os.geteuid() == 0:
        return None
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    caps = int(line.split()[1], 16)
                    cap_bpf, cap_perfmon, cap_sys_admin = 1 << 39, 1 << 38, 1 << 21
                    if caps & cap_sys_admin or (caps & cap_bpf and caps & cap_perfmon):
                        return None
    except OSError:
        pass
    return "apptrace needs root (or CAP_BPF+CAP_PERFMON) to load eBPF programs; run it with sudo"


def ensure_tracefs() -> str | None:
    """Mount tracefs when it is missing. Returns a message when it had to act, raises LoadError if it can't."""
    if os.path.exists("/sys/kernel/tracing/uprobe_events"):
        return None
    os.makedirs("/sys/kernel/tracing", exist_ok=True)
    rc = os.system("mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null")
    if rc != 0 or not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        raise LoadError("tracefs is not mounted and mounting it failed: mount -t tracefs nodev /sys/kernel/tracing")
    return "mounted tracefs at /sys/kernel/tracing"
