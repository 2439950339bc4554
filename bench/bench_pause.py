"""What pausing late processes (bpf/tls_capture.c section 13) costs, A/B in the same run.

    sudo .venv/bin/python bench/bench_pause.py [--rounds 3]

(a) openat-heavy: a process opening and closing a file N times (every openat() runs the path check);
(b) exec-heavy: a shell running /bin/true N times (every exec looks its path up among the known ones);
each timed untraced (A), with `apptrace trace` tracing everything (B), and with `apptrace trace --no-pause`
(C: the tracer's other work on each exec, no known-path lookup), alternated, ratios of the medians. Then, with the tracer running:
(c) the first exec of a non-TLS binary at a path it has not judged (a fresh copy of /bin/true), against an
exec of a known path: the extra wall time is the stop;
(d) curl with a private libssl copy at a fresh path against curl with the system's: the extra wall time is the
stop while the copy is probed. The tracer's own figure (kernel stop to SIGCONT) is printed from its summary.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.demo.server import free_port, make_certs, wait_port  # noqa: E402

LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
OPEN_LOOP = "import os\nfor _ in range({n}):\n    os.close(os.open('/etc/hostname', os.O_RDONLY))\n"


def timed(cmd: list[str], env: dict | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def start_trace(db: str, *args: str) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-m", "apptrace.cli", "trace", "--db", db, "--quiet", *args], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    for line in p.stderr:
        if line.startswith("apptrace: tracing"):
            time.sleep(2.0)  # the background judging of the program directories
            return p
    raise SystemExit("apptrace trace exited before it was tracing")


def stop_trace(p: subprocess.Popen) -> str:
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    return err


def workloads(n_open: int, n_exec: int) -> dict[str, list[str]]:
    return {
        "openat": [sys.executable, "-c", OPEN_LOOP.format(n=n_open)],
        "exec": ["sh", "-c", f"i=0; while [ $i -lt {n_exec} ]; do /bin/true; i=$((i+1)); done"],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--opens", type=int, default=200_000)
    ap.add_argument("--execs", type=int, default=1000)
    ap.add_argument("--firsts", type=int, default=20, help="unknown binaries and private-libssl clients per round")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-pause-")
    work = workloads(args.opens, args.execs)
    a: dict[str, list[float]] = {k: [] for k in work}
    b: dict[str, list[float]] = {k: [] for k in work}
    c: dict[str, list[float]] = {k: [] for k in work}  # traced with --no-pause: no exec lookups, no stops
    first_unknown: list[float] = []
    first_known: list[float] = []
    curl_private: list[float] = []
    curl_system: list[float] = []
    summaries = []
    certs = make_certs(tmp)
    port = free_port()
    server = subprocess.Popen(["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-quiet", "-cert",
                               certs["server"], "-key", certs["server-key"]],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    curl = ["curl", "-sk", "-o", "/dev/null", f"https://127.0.0.1:{port}/"]
    try:
        for r in range(args.rounds):
            for name, cmd in work.items():
                a[name].append(timed(cmd))
            tracer = start_trace(os.path.join(tmp, f"r{r}.duckdb"))
            try:
                for name, cmd in work.items():
                    b[name].append(timed(cmd))
            finally:
                stop_trace(tracer)
            tracer = start_trace(os.path.join(tmp, f"c{r}.duckdb"), "--no-pause")
            try:
                for name, cmd in work.items():
                    c[name].append(timed(cmd))
            finally:
                stop_trace(tracer)
            print(f"round {r + 1}: " + ", ".join(f"{k} A {a[k][-1]:.3f}s B {b[k][-1]:.3f}s C {c[k][-1]:.3f}s"
                                                 for k in work), flush=True)
        # One tracer for the stops: each private copy it probes holds 9 uprobes, whose removal at exit is slow
        # (see Probes._close_uprobes) and would slow the next tracer's attaching if it overlapped.
        tracer = start_trace(os.path.join(tmp, "firsts.duckdb"))
        try:
            for i in range(args.firsts):
                fresh = os.path.join(tmp, f"true-{i}")
                shutil.copy("/bin/true", fresh)
                first_unknown.append(timed([fresh]))
                first_known.append(timed([fresh]))  # now judged: its second run is a known path
                libdir = os.path.join(tmp, f"ssl-{i}")
                os.makedirs(libdir)
                shutil.copy(LIBSSL, libdir)
                curl_private.append(timed(curl, {**os.environ, "LD_LIBRARY_PATH": libdir}))
                curl_system.append(timed(curl))
        finally:
            err = stop_trace(tracer)
        m = re.search(r"stopped \d+ late processes[^\n]*", err)
        summaries.append(m.group(0) if m else "(no stop reported)")
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    for name in work:
        ma, mb, mc = (statistics.median(x[name]) for x in (a, b, c))
        unit = args.opens if name == "openat" else args.execs
        print(f"({'a' if name == 'openat' else 'b'}) {name}: untraced (A) {ma * 1e6 / unit:.2f} µs each, traced (B) "
              f"{mb * 1e6 / unit:.2f}, traced --no-pause (C) {mc * 1e6 / unit:.2f}: B/A {mb / ma:.3f}, "
              f"B/C {mb / mc:.3f} (medians of {args.rounds} rounds)")
    med = statistics.median
    print(f"(c) first exec of an unknown non-TLS binary: {med(first_unknown) * 1e3:.2f} ms, of a known one "
          f"{med(first_known) * 1e3:.2f} ms: the stop adds {(med(first_unknown) - med(first_known)) * 1e3:.2f} ms")
    print(f"(d) curl with a private libssl: {med(curl_private) * 1e3:.1f} ms, with the system's "
          f"{med(curl_system) * 1e3:.1f} ms: the stop adds {(med(curl_private) - med(curl_system)) * 1e3:.1f} ms")
    for s in summaries:
        print(f"    tracer: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
