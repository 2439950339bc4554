"""Overhead on a traced server: two identical TLS servers, one traced with --pid, A/B in the same run.

    sudo .venv/bin/python bench/bench_overhead.py [--server nghttpd|python|go|h2c] [--rounds 3]
                                                  [--seconds 5] [--abba] [--pin] [--base DIR] [--json]

Servers A and B are identical; each round runs h2load against both, alternating which goes
first (with --abba: each twice for half as long, A B B A or B A A B, so that a machine whose speed
drifts during the round slows both alike), while server A is traced in one of four modes:

  none    no tracer at all: the A/B ratio shows the noise (should be about 1.0)
  empty   empty programs on the same functions in A (the floor): uprobes + uretprobes on the SSL
          functions; on the Go server, uprobes on entry and on every RET of crypto/tls.(*Conn).Read
          and Write, as the tracer attaches them; on h2c (plaintext nghttpd), empty programs on the
          entry and exit tracepoints of the socket read/write syscalls (machine-wide: B pays them too)
  full    `apptrace trace --pid A`: capture, parsing, DuckDB, redaction. Analysis runs in a
          SCHED_IDLE child that follows the on-disk spool; after A's load the harness waits until
          it has stored a row for every request A completed (so its catch-up never overlaps
          B's load) and reports that wait and rows/requests
  raw     `apptrace trace --pid A --capture-only --raw FILE`: record raw events, no parsing
  base    as full, with the tracer of the checkout given by --base (old code beside new, same run)

Before every load, in every mode, the harness syncs and waits for a quiet second (under 15%
of the CPUs busy, niced work not counted), so nothing left from the previous step (a tracer
starting, analysis catching up, page writeback) lands in either server's run.

Reported per mode: throughput ratio A/B and p99 latency ratio A/B (medians over rounds),
and full/empty, the goal being full >= 0.95 x empty: the ratio of the two medians, and the
median (with quartiles) of each round's own full/empty, which slow drift of a shared
machine cancels out of.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.capture import uprobe_links  # noqa: E402
from apptrace.capture.elfsyms import TlsObject, inspect  # noqa: E402
from apptrace.demo.gobuild import go_build  # noqa: E402
from apptrace.demo.server import free_port, make_certs, wait_port  # noqa: E402

GO_SERVER_SRC = ROOT / "bench" / "go" / "static_server.go"

EMPTY = "int enter(struct pt_regs *ctx) { return 0; }\nint leave(struct pt_regs *ctx) { return 0; }\n"
# The socket calls whose entry and exit plaintext capture hooks (bpf/tls_capture.c, section 9).
PLAINTEXT_SYSCALLS = ("read", "readv", "recvfrom", "recvmsg", "write", "writev", "sendto", "sendmsg")


def make_site(tmp: str) -> tuple[dict, str]:
    """Certificates and a docroot with the one page every load asks for, under ``tmp``."""
    certs = make_certs(tmp)
    docroot = os.path.join(tmp, "www")
    os.makedirs(docroot, exist_ok=True)
    Path(docroot, "index.html").write_text("<html><body>hello</body></html>\n")
    return certs, docroot


def start_trace(pid: int, *args: str, tree: str | Path = ROOT) -> subprocess.Popen:
    """`apptrace trace --pid PID --no-follow-forks --quiet ARGS`, once its probes are attached (stderr left to read).

    The servers fork nothing, and following forks would attach the probes for every process that maps the same
    libssl, server B included: B, the untraced reference, would then pay a filtered trap per SSL call."""
    return launch_trace("--pid", str(pid), "--no-follow-forks", "--quiet", *args, tree=tree)


def launch_trace(*args: str, tree: str | Path = ROOT) -> subprocess.Popen:
    """`apptrace trace ARGS` from the checkout ``tree``, once it says it is tracing (stderr left to read)."""
    p = subprocess.Popen([sys.executable, "-m", "apptrace.cli", "trace", *args],
                         cwd=tree, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    for line in p.stderr:
        if line.startswith("apptrace: tracing"):
            return p
    raise SystemExit(f"apptrace trace from {tree} exited before it was tracing")


# --base: the checkout whose tracer mode "base" runs (the old code, for old and new in the same run).
BASE_TREE: str | Path = ROOT
# --pin: the servers on one CPU, h2load on another (None: wherever the scheduler puts them). Set by main().
PIN: dict[str, set[int]] | None = None


def _pinned(role: str) -> Callable[[], None] | None:
    """A preexec_fn that pins the child (every thread it will start) to the CPUs of ``role``, under --pin."""
    if PIN is None:
        return None
    cpus = PIN[role]
    return lambda: os.sched_setaffinity(0, cpus)


def start_server(kind: str, certs: dict, docroot: str, go_exe: str = "") -> tuple[subprocess.Popen, int]:
    port = free_port()
    if kind == "h2c":
        cmd = ["nghttpd", "--no-tls", "-a", "127.0.0.1", "-d", docroot, str(port)]
    elif kind.startswith("nghttpd"):
        cmd = ["nghttpd", "-a", "127.0.0.1", "-d", docroot, str(port), certs["server-key"], certs["server"]]
    elif kind == "go":
        cmd = [go_exe, "-port", str(port), "-cert", certs["server"], "-key", certs["server-key"], "-docroot", docroot]
    else:
        cmd = [sys.executable, "-m", "apptrace.demo.server", "--port", str(port), "--cert", certs["server"],
               "--key", certs["server-key"]]
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         preexec_fn=_pinned("server"))
    wait_port(port)
    return p, port


def load(kind: str, port: int, seconds: float, tmp: str,
         when_done: Callable[[], object] | None = None) -> tuple[float, float, int]:
    """h2load for `seconds`: (requests per second, p99 latency in µs, requests done) from its per-request log;
    ``when_done`` is called as soon as h2load exits, before the log is read (a second of CPU at 300k req/s)."""
    log = os.path.join(tmp, f"h2load-{port}-{time.monotonic_ns()}.log")
    http2 = kind in ("nghttpd", "go", "h2c")
    path = "/index.html" if http2 else "/hello"
    scheme = "http" if kind == "h2c" else "https"  # h2load speaks h2c with prior knowledge to an http:// URL
    cmd = ["h2load", "-D", f"{seconds:g}", "-c", "4", "-m", "4" if http2 else "1", f"--log-file={log}",
           f"{scheme}://127.0.0.1:{port}{path}"]
    if not http2:
        cmd.insert(1, "--h1")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds * 4 + 60,
                         preexec_fn=_pinned("load")).stdout
    if when_done is not None:
        when_done()
    done = 0
    for line in out.splitlines():
        if line.startswith("requests:"):
            done = int(line.split(",")[3].split()[0])  # "N done"
    lat = sorted(int(line.split()[2]) for line in open(log) if line.strip())
    os.unlink(log)
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
    return done / seconds, float(p99), done


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the machine; nice time counts as neither, so niced background work does not stall the gate."""
    with open("/proc/stat") as f:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    busy = user + system + irq + softirq + steal
    return busy, busy + idle + iowait


def wait_quiet(max_busy: float = 0.15, timeout: float = 120) -> float:
    """Before every load, in every mode: flush dirty pages and wait for a quiet second.

    Whatever ran just before (a tracer starting, analysis catching up, the kernel writing back
    DuckDB's pages) must not land in the next load, whichever server it drives, or the order
    of the loads would decide the ratio. Returns the seconds waited.
    """
    start = time.monotonic()
    os.sync()
    last = _busy_jiffies()
    while time.monotonic() - start < timeout:
        time.sleep(1.0)
        now = _busy_jiffies()
        busy, total = now[0] - last[0], now[1] - last[1]
        last = now
        if total > 0 and busy / total < max_busy:
            break
    return time.monotonic() - start


def analysis_pid(tracer_pid: int) -> int | None:
    """The analysis child of an `apptrace trace` process, if it has one."""
    try:
        with open(f"/proc/{tracer_pid}/task/{tracer_pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        return None
    for pid in children:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"apptrace.analysis.loop" in f.read():
                return pid
    return None


def _cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return -1
    return int(fields[11]) + int(fields[12])


class Mode:
    def __init__(self, name: str, pid: int, tmp: str, trace_args: list[str] | None = None,
                 plaintext: bool = False) -> None:
        self.name, self.pid, self.tmp = name, pid, tmp
        self.trace_args = trace_args or []
        self.proc: subprocess.Popen | None = None
        self.bpf = None
        self.summary = ""
        self.db = ""
        self.rows_seen = 0
        self.catch_up_s: list[float] = []
        self.floor_probes = 0  # empty mode: uprobes attached (Go: entries + RETs); on h2c: tracepoints
        self.links: list[int] = []
        self.plaintext = plaintext

    def __enter__(self) -> Mode:
        if self.name == "empty":
            from bcc import BPF

            self.bpf = BPF(text=EMPTY.encode())
            if self.plaintext:
                self._attach_syscalls_empty()
                return self
            exe = os.readlink(f"/proc/{self.pid}/exe")
            go = inspect(exe)
            if isinstance(go, TlsObject) and go.tls_lib == "go":
                # entry and every RET, never uretprobes (Go's moving stacks do not survive them)
                self._attach_empty(go, [off for sym, entry in go.offsets.items() for off in (entry, *go.returns[sym])])
            else:
                lib = next(line.split()[-1] for line in open(f"/proc/{self.pid}/maps") if "libssl.so" in line)
                ssl = inspect(lib)
                assert isinstance(ssl, TlsObject), f"{lib}: no SSL functions found"
                offsets = [ssl.offsets[s] for s in ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex")
                           if s in ssl.offsets]
                self._attach_empty(ssl, offsets)
                self._attach_empty(ssl, offsets, retprobe=True)
        elif self.name in ("full", "raw", "base"):
            db = self.db = os.path.join(self.tmp, f"bench-{time.monotonic_ns()}.duckdb")
            extra = ["--capture-only", "--raw", db + ".raw"] if self.name == "raw" else ["--db", db]
            self.proc = start_trace(self.pid, *extra, *self.trace_args,
                                    tree=BASE_TREE if self.name == "base" else ROOT)
        return self

    def _attach_empty(self, obj: TlsObject, offsets: list[int], retprobe: bool = False) -> None:
        """The empty program at file offsets read by apptrace's own ELF code, attached as the tracer attaches
        (uprobe_links.attach: uprobe_multi links where the kernel has them, else perf-event uprobes)."""
        try:
            link = uprobe_links.attach(self.bpf, "leave" if retprobe else "enter", obj.path, offsets, self.pid,
                                       retprobe, f"bench_empty_{obj.ino:x}")
        except OSError as exc:
            raise SystemExit(f"cannot attach an empty uprobe to {obj.path}: {exc.strerror}") from None
        if link is not None:
            self.links.append(link)
        self.floor_probes += len(offsets)

    def _attach_syscalls_empty(self) -> None:
        """The plaintext floor: an empty program on each syscall tracepoint plaintext capture uses, entry and exit.

        Tracepoints are machine-wide, so server B pays the floor too: the floor's A / B is near 1, and
        what full mode adds beyond it is the tracer's own work on A's sockets (B's calls leave at its
        scope check)."""
        for call in PLAINTEXT_SYSCALLS:
            for side in ("enter", "exit"):
                self.bpf.attach_tracepoint(tp=f"syscalls:sys_{side}_{call}", fn_name=side if side == "enter" else "leave")
                self.floor_probes += 1

    def tracer_ticks(self) -> tuple[int, int]:
        """CPU ticks used so far by the capture process and by its analysis child (0, 0 without a tracer)."""
        if self.proc is None:
            return 0, 0
        child = analysis_pid(self.proc.pid)
        return _cpu_ticks(self.proc.pid), _cpu_ticks(child) if child is not None else 0

    def _rows(self) -> int:
        out = subprocess.run([sys.executable, "-m", "apptrace.cli", "sql", "--db", self.db, "--format", "csv",
                              f"SELECT count(*) FROM http_events WHERE pid = {self.pid}"],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        try:
            return int(out.stdout.split()[-1])
        except (ValueError, IndexError):
            return -1

    def settle(self, expected_rows: int, timeout: float = 300) -> None:
        """Full mode: wait until the analysis process has made a row of every request A completed.

        Analysis runs under SCHED_IDLE and catches up when A's load stops; waiting here keeps that
        catch-up out of B's measurement and proves no request was lost.
        """
        if self.name not in ("full", "base"):
            return
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            self.rows_seen = self._rows()
            if self.rows_seen >= expected_rows:
                break
            time.sleep(0.5)
        self.catch_up_s.append(time.monotonic() - start)
        # Rows are visible once committed; a checkpoint may still be running. Wait until the
        # analysis process is back to its idle polling (under 5% of a CPU over a second), so
        # none of its work lands in B's run.
        assert self.proc is not None
        child = analysis_pid(self.proc.pid)
        last = _cpu_ticks(child) if child is not None else -1
        hz = os.sysconf("SC_CLK_TCK")
        while child is not None and time.monotonic() - start < timeout:
            time.sleep(1.0)
            used = _cpu_ticks(child)
            if used - last < 0.05 * hz:
                break
            last = used


    def __exit__(self, *exc: object) -> None:
        uprobe_links.close_all(self.links)
        if self.bpf is not None:
            self.bpf.cleanup()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            _, err = self.proc.communicate(timeout=120)
            self.summary = " | ".join(line for line in err.splitlines() if "events" in line or "losses" in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["nghttpd", "python", "go", "h2c"], default="nghttpd",
                    help="nghttpd: HTTP/2; python: HTTP/1.1 (h2load --h1) on Python's ssl (SSL_*_ex); "
                    "go: HTTP/2 on Go's net/http and crypto/tls (bench/go/static_server.go, built here); "
                    "h2c: plaintext HTTP/2 (nghttpd --no-tls), captured from the socket syscalls, whose "
                    "floor is empty programs on those syscalls' tracepoints")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--modes", default="none,empty,full,raw")
    ap.add_argument("--trace-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `apptrace trace` in modes full and raw, e.g. "
                    "--trace-arg=--analysis-yield-above=50 (repeatable)")
    ap.add_argument("--abba", action="store_true",
                    help="load each server twice per round and mode, for half of --seconds each, in the order "
                    "A B B A (or B A A B): steady drift of a shared machine cancels out of the ratios")
    ap.add_argument("--base", metavar="DIR", help="a checkout of older code (git worktree add DIR REV): mode "
                    "'base' is mode full with the tracer from DIR, so old and new are compared in the same run")
    ap.add_argument("--pin", action="store_true",
                    help="run the servers on the first CPU and h2load on the last (the tracer anywhere): where "
                    "the scheduler puts them changes throughput by more than the tracer does on a small VM")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0 or not shutil.which("h2load"):
        raise SystemExit("needs root and h2load (nghttp2-client)")
    modes = args.modes.split(",")
    global BASE_TREE, PIN
    if "base" in modes:
        if not args.base:
            raise SystemExit("mode base needs --base DIR")
        BASE_TREE = args.base
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        PIN = {"server": {cpus[0]}, "load": {cpus[-1]}}
    ratios: dict[str, list[float]] = {m: [] for m in modes}
    p99s: dict[str, list[float]] = {m: [] for m in modes}
    raw_numbers: list[dict] = []
    summaries: dict[str, str] = {}
    caught_up: list[float] = []  # full mode: seconds analysis needed after A's load
    row_ratio: list[float] = []  # full mode: rows stored / requests A completed
    quiet_waits: list[float] = []  # seconds each load waited for a quiet machine
    floor_probes = 0  # empty mode: how many probes the floor had
    tracer_cpu: dict[str, list[list[float]]] = {m: [] for m in modes}  # [capture, analysis] µs per request of A
    with tempfile.TemporaryDirectory() as tmp:
        certs, docroot = make_site(tmp)
        go_exe = go_build(GO_SERVER_SRC, os.path.join(tmp, "static_server"), tmp) if args.server == "go" else ""
        a, port_a = start_server(args.server, certs, docroot, go_exe)
        b, port_b = start_server(args.server, certs, docroot, go_exe)
        try:
            for r in range(args.rounds):
                for mode in modes:
                    with Mode(mode, a.pid, tmp, args.trace_arg, plaintext=args.server == "h2c") as m:
                        order = [("A", port_a), ("B", port_b)]
                        if (r + modes.index(mode)) % 2:
                            order.reverse()
                        if args.abba:
                            # Each server twice, for half as long, mirrored (A B B A): a machine that drifts
                            # steadily over the round slows both servers alike.
                            order = order + order[::-1]
                        seconds = args.seconds / 2 if args.abba else args.seconds
                        loads: dict[str, list[tuple[float, float, int]]] = {"A": [], "B": []}
                        a_ticks = [0, 0]
                        for name, port in order:
                            quiet_waits.append(wait_quiet())
                            ticks_before = m.tracer_ticks()
                            ticks_after: list[tuple[int, int]] = []
                            loads[name].append(load(args.server, port, seconds, tmp,
                                                    lambda m=m, after=ticks_after: after.append(m.tracer_ticks())))
                            if name == "A":
                                # Where the tracer's own CPU went while A was loaded: what it took from the
                                # machine beyond the probes. Sampled when h2load exits: reading its log
                                # after lets analysis start catching up.
                                a_ticks = [t + x - y for t, x, y in zip(a_ticks, ticks_after[0], ticks_before, strict=True)]
                                m.settle(sum(done for *_, done in loads["A"]))
                        got = {name: (sum(rate for rate, _, _ in runs) / len(runs),
                                      statistics.median(p99 for _, p99, _ in runs),
                                      sum(done for *_, done in runs)) for name, runs in loads.items()}
                        if m.proc is not None:
                            hz = os.sysconf("SC_CLK_TCK")
                            tracer_cpu[mode].append([t / hz / max(got["A"][2], 1) * 1e6 for t in a_ticks])
                    summaries[mode] = m.summary
                    if m.floor_probes:
                        floor_probes = m.floor_probes
                    if mode == "full":
                        caught_up.append(m.catch_up_s[0])
                        row_ratio.append(m.rows_seen / got["A"][2])
                    ratios[mode].append(got["A"][0] / got["B"][0])
                    p99s[mode].append(got["A"][1] / got["B"][1])
                    raw_numbers.append({"round": r, "mode": mode, "A_rps": got["A"][0], "B_rps": got["B"][0],
                                        "A_p99_us": got["A"][1], "B_p99_us": got["B"][1]})
                    print(f"round {r} {mode:5} A {got['A'][0]:8.0f} req/s p99 {got['A'][1] / 1000:7.2f} ms | "
                          f"B {got['B'][0]:8.0f} req/s p99 {got['B'][1] / 1000:7.2f} ms", file=sys.stderr)
        finally:
            for p in (a, b):
                p.terminate()
                p.wait()
    med = {m: statistics.median(v) for m, v in ratios.items()}
    med_p99 = {m: statistics.median(v) for m, v in p99s.items()}
    # Paired: each round's traced/floor ratio, both measured minutes apart rather than across
    # the whole run, so slow drift of the machine (other tenants) cancels out; quartiles show the spread.
    paired = {m: sorted(x / e for x, e in zip(ratios[m], ratios["empty"], strict=True))
              for m in ("full", "raw", "base") if m in ratios and "empty" in ratios}
    paired_stats = {m: {"median": statistics.median(v),
                        "quartiles": statistics.quantiles(v, n=4) if len(v) > 1 else [v[0]] * 3,
                        "per_round": v} for m, v in paired.items()}
    out = {"server": args.server, "throughput_ratio_traced_over_untraced": med, "p99_ratio_traced_over_untraced": med_p99,
           "full_over_empty": med.get("full", 0) / med["empty"] if "empty" in med else None,
           "raw_over_empty": med.get("raw", 0) / med["empty"] if "empty" in med else None,
           "paired_over_empty": paired_stats,
           "tracer_cpu_us_per_request_during_load": {
               m: {"capture": statistics.median(v[0] for v in vs), "analysis": statistics.median(v[1] for v in vs)}
               for m, vs in tracer_cpu.items() if vs},
           "full_catch_up_s": caught_up, "full_rows_over_requests": row_ratio,
           "quiet_wait_s_max": max(quiet_waits, default=0.0), "empty_probes": floor_probes or None,
           "rounds": args.rounds, "seconds": args.seconds, "abba": args.abba, "pin": args.pin, "runs": raw_numbers, "tracer_summaries": summaries}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"server: {args.server}")
        print(f"{'mode':6} {'throughput A/B':>15} {'p99 A/B':>8}")
        for m in modes:
            print(f"{m:6} {med[m]:15.3f} {med_p99[m]:8.2f}")
        if out["full_over_empty"]:
            print(f"full / empty = {out['full_over_empty']:.3f} (goal >= 0.95)")
        for m, st in paired_stats.items():
            q1, q2, q3 = st["quartiles"]
            print(f"{m} / empty, paired per round: median {st['median']:.3f}, quartiles {q1:.3f} {q2:.3f} {q3:.3f}")
        for m, cpu in out["tracer_cpu_us_per_request_during_load"].items():
            print(f"{m}: tracer CPU per request of A during its load: capture {cpu['capture']:.1f} µs, "
                  f"analysis {cpu['analysis']:.1f} µs (median)")
        if row_ratio:
            print(f"full: rows / requests completed = {min(row_ratio):.4f} (worst round); analysis caught up "
                  f"{statistics.median(caught_up):.1f} s after the load stopped (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
