"""``apptrace doctor``: can this machine trace? One line per check, with the fix when it fails."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from collections import defaultdict

from apptrace.capture import procfs
from apptrace.capture.elfsyms import SymbolCache, TlsObject, Unprobeable
from apptrace.capture.loader import LoadError, check_privileges, ensure_tracefs
from apptrace.cli.options import add_db
from apptrace.common.defaults import default_db

OK, FAIL, WARN = "ok", "FAIL", "warn"

DOCTOR_EPILOG = """examples:
  apptrace doctor                                 check this machine can trace, list TLS libraries in use
  apptrace doctor --pid 1234                      ... and say what tracing process 1234 would capture
  apptrace doctor --db /var/lib/apptrace/x.duckdb  ... and name the processes a tracer into that DB missed
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    d = subparsers.add_parser("doctor", help="check that this machine can trace; list TLS libraries in use",
                              epilog=DOCTOR_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--pid", type=int, action="append", default=[], metavar="PID",
                   help="look only at these processes (repeatable) and name every one of them; without it, "
                   "every process is looked at and each library lists its first five users")
    add_db(d)
    d.set_defaults(func=lambda args: run_doctor(args.pid, args.db))


def _line(status: str, name: str, detail: str) -> str:
    return f"[{status:>4}] {name:<22} {detail}"


def _ring_walk_line() -> str:
    from apptrace.capture import ringbuf

    if ringbuf.NATIVE_WALK:
        return _line(OK, "ring walk", "in C (apptrace.capture._ringwalk)")
    return _line(WARN, "ring walk", "in Python: apptrace.capture._ringwalk was not built (it needs gcc and "
                 "python3-dev when installing); capture spends about twice the CPU per small record")


def _kernel_checks() -> list[tuple[str, str, str]]:
    out = []
    uprobe_pmu = os.path.exists("/sys/bus/event_source/devices/uprobe")
    out.append((OK if uprobe_pmu else FAIL, "uprobes",
                "uprobe PMU present" if uprobe_pmu else "kernel lacks CONFIG_UPROBE_EVENTS: use a kernel with uprobes"))
    btf = os.path.exists("/sys/kernel/btf/vmlinux")
    out.append((OK if btf else WARN, "BTF", "/sys/kernel/btf/vmlinux present" if btf else "no BTF (not required)"))
    rel = platform.release()
    try:
        major, minor = (int(x) for x in rel.split(".")[:2])
        ringbuf = (major, minor) >= (5, 8)
    except ValueError:
        ringbuf = True
    out.append((OK if ringbuf else FAIL, "ring buffer",
                f"kernel {rel} has BPF ring buffers" if ringbuf else f"kernel {rel} is older than 5.8: no ring buffer"))
    kver = platform.release()
    headers = os.path.exists(f"/lib/modules/{kver}/build/include") or os.path.exists("/sys/kernel/kheaders.tar.xz")
    out.append((OK if headers else FAIL, "kernel headers",
                f"/lib/modules/{kver}/build" if headers else
                "none for the running kernel: run the README setup (installs linux-headers-amd64 and links them)"))
    return out


def _bcc_check() -> tuple[str, str, str]:
    try:
        from bcc import BPF
    except ImportError:
        return FAIL, "BCC", "python3-bpfcc not importable: apt-get install python3-bpfcc, then rerun the setup"
    try:
        b = BPF(text="BPF_RINGBUF_OUTPUT(rb, 1);\nint probe(struct pt_regs *ctx) { u32 v = 1; rb.ringbuf_output(&v, 4, 0); return 0; }")
        b.load_func(b"probe", BPF.KPROBE)
        b.cleanup()
    except Exception as exc:  # noqa: BLE001 - any failure means BCC cannot compile here
        return FAIL, "BCC compile", f"cannot compile a trivial program: {str(exc).splitlines()[0]}"
    return OK, "BCC compile", "compiled and loaded a program with a ring buffer"


def _is_apptrace(info: procfs.ProcessInfo) -> bool:
    """A tracer, its analysis and pause-watchdog processes, or another apptrace command: not something to trace."""
    args = info.cmdline.split()[:3]
    return any(a == "apptrace" or a.endswith("/apptrace") or a == "apptrace.cli"
               or a.startswith(("apptrace.analysis.", "apptrace.capture.")) for a in args)  # not apptrace.demo


def _who(pids: set[int], names: dict[int, str], limit: int | None = 5) -> str:
    shown = [f"{names.get(p, '?')} ({p})" for p in sorted(pids)[:limit]]
    more = len(pids) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more else "")


def _tls_inventory(only: list[int] | None = None) -> list[str]:
    """TLS objects mapped by running processes (``only`` these, if given), probe-able or not, with their users."""
    cache = SymbolCache()
    users: dict[tuple[str, str], set[int]] = defaultdict(set)
    reasons: dict[str, str] = {}
    names: dict[int, str] = {}
    for pid in only or procfs.all_pids():
        info = procfs.process_info(pid)
        if pid == os.getpid() or info is None or _is_apptrace(info):
            continue
        names[pid] = info.comm
        for inside, openable in procfs.mapped_objects(pid):
            result = cache.inspect(openable)
            if isinstance(result, TlsObject):
                # Go programs carry their own crypto/tls: the Go version says which one
                kind = f"{result.tls_lib} {result.version}" if result.version else result.tls_lib
                users[(inside, kind)].add(pid)
            elif isinstance(result, Unprobeable):
                users[(inside, "unprobeable")].add(pid)
                reasons[inside] = result.reason
    lines = []
    limit = None if only else 5
    for (path, kind), pids in sorted(users.items()):
        if kind == "unprobeable":
            lines.append(_line(WARN, "cannot probe", f"{path}: {reasons[path]}: {_who(pids, names, limit)}"))
        else:
            lines.append(_line(OK, f"TLS {kind}", f"{path} in {len(pids)} processes: {_who(pids, names, limit)}"))
    for pid in only or []:
        if pid in names and not any(pid in pids for pids in users.values()):
            lines.append(_line(OK, "no TLS library", f"{names[pid]} ({pid}) maps none: only its plaintext "
                                                     "sockets can be captured"))
    if not users and not only:
        lines.append(_line(OK, "TLS in use", "no running process maps a TLS library right now"))
    return lines


# What `trace` does with sockets that are not TLS (the same tracepoints as the TLS path: nothing more to check).
PLAINTEXT_NOTE = (
    "captured by default (off: trace --no-plaintext): HTTP/1, HTTP/2 with prior knowledge (h2c) and gRPC, "
    "MySQL and PostgreSQL over TCP and Unix stream sockets, told apart in the kernel by their first bytes; "
    "not captured: other protocols (counted per process as unknown_protocol_conns), sockets moved by "
    "sendfile/splice/io_uring/sendmmsg/recvmmsg, UDP, and sockets a process got other than by connect/accept, "
    "from a forking server's accept, or open when the tracer started")


def _late_processes(db: str) -> list[str]:
    """How late processes are caught, and the ones a tracer into ``db`` named as missed (while it runs, and after
    it stopped with a spool left over)."""
    from apptrace.capture.tracer import MISSED_FILE

    lines = [_line(OK if platform.machine() == "x86_64" else WARN, "late processes",
                   "a process started after the tracer is stopped (~1 ms) until its own TLS copy is probed"
                   if platform.machine() == "x86_64" else "not stopped on this architecture: their first "
                   "requests may be missed")]
    path = os.path.join(f"{db}.spool", MISSED_FILE)
    try:
        with open(path) as f:
            missed = json.load(f)
    except (OSError, ValueError):
        return lines
    for m in missed if isinstance(missed, list) else []:
        lines.append(_line(WARN, "missed", f"pid {m.get('pid')} ({m.get('comm')}): {m.get('reason')} "
                                           f"(traced into {db})"))
    return lines


def run_doctor(pids: list[int] | None = None, db: str | None = None) -> int:
    gone = [p for p in pids or [] if procfs.process_info(p) is None]
    if gone:
        print(f"apptrace doctor: no process with pid {', '.join(map(str, gone))}", file=sys.stderr)
        return 2
    failed = False
    why = check_privileges()
    print(_line(FAIL if why else OK, "privileges", why or "root (or CAP_BPF+CAP_PERFMON)"))
    failed |= bool(why)
    for status, name, detail in _kernel_checks():
        print(_line(status, name, detail))
        failed |= status == FAIL
    if not why:
        try:
            msg = ensure_tracefs()
            print(_line(OK, "tracefs", msg or "mounted at /sys/kernel/tracing"))
        except LoadError as exc:
            print(_line(FAIL, "tracefs", str(exc)))
            failed = True
        status, name, detail = _bcc_check()
        print(_line(status, name, detail))
        failed |= status == FAIL
    else:
        print(_line(FAIL, "tracefs", "not checked: needs root"))
        print(_line(FAIL, "BCC compile", "not checked: needs root"))
    for line in _tls_inventory(pids):
        print(line)
    print(_line(OK, "plaintext", PLAINTEXT_NOTE))
    print(_ring_walk_line())
    for line in _late_processes(default_db(db)):
        print(line)
    print("apptrace doctor: " + ("tracing cannot work here; fix the FAIL lines above" if failed else "ready to trace"))
    return 1 if failed else 0
