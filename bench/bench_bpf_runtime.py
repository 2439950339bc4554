"""BPF run time per request: what apptrace's programs cost the traced server, and everyone else.

    sudo .venv/bin/python bench/bench_bpf_runtime.py [--server nghttpd|go] [--rounds 3] [--seconds 5] [--json]

Two nghttpd servers (or two Go net/http servers, bench_overhead.py's); `apptrace trace --pid A` runs throughout. With kernel.bpf_stats_enabled
on, h2load drives A, then B, and the kernel's per-program run time and run count (bpftool)
are read around each load. For A: nanoseconds of BPF per completed request, by program (SSL
probes, socket-syscall tracepoints). For B, which is not traced: what the tracepoints, which
fire machine-wide, still cost an untraced server and its client. Medians over rounds.

The counters include the cost of measuring (two clock reads per run, tens of ns on this VM),
so they overstate short programs a little; the comparison between programs and between A
and B is what this is for. The uprobe trap itself (~12 µs per hit here) is not BPF run time:
bench_probe_cost.py and bench_overhead.py measure it.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.demo.gobuild import go_build  # noqa: E402
from bench.bench_overhead import GO_SERVER_SRC, load, make_site, start_server, start_trace, wait_quiet  # noqa: E402

STATS = "/proc/sys/kernel/bpf_stats_enabled"


def prog_stats() -> dict[str, tuple[int, int]]:
    """Program name -> (run_time_ns, run_cnt), summed over programs of the same name."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    stats: dict[str, tuple[int, int]] = {}
    for p in json.loads(out or "[]"):
        if "run_cnt" in p:
            t, n = stats.get(p["name"], (0, 0))
            stats[p["name"]] = (t + p.get("run_time_ns", 0), n + p["run_cnt"])
    return stats


def measured_load(kind: str, port: int, seconds: float, tmp: str) -> tuple[int, dict[str, tuple[int, int]]]:
    before = prog_stats()
    _, _, done = load(kind, port, seconds, tmp)
    after = prog_stats()
    delta = {k: (t - before.get(k, (0, 0))[0], n - before.get(k, (0, 0))[1]) for k, (t, n) in after.items()}
    return done, {k: v for k, v in delta.items() if v[1] > 0}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server", choices=["nghttpd", "go"], default="nghttpd")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root (BPF, kernel.bpf_stats_enabled)")
    per_req: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}
    per_call: dict[str, list[float]] = {}
    totals: dict[str, list[float]] = {"A": [], "B": []}
    with tempfile.TemporaryDirectory() as tmp:
        certs, docroot = make_site(tmp)
        go_exe = go_build(GO_SERVER_SRC, os.path.join(tmp, "static_server"), tmp) if args.server == "go" else ""
        a, port_a = start_server(args.server, certs, docroot, go_exe)
        b, port_b = start_server(args.server, certs, docroot, go_exe)
        tracer = start_trace(a.pid, "--db", os.path.join(tmp, "bench.duckdb"))
        was = Path(STATS).read_text().strip()
        try:
            Path(STATS).write_text("1")
            for r in range(args.rounds):
                for name, port in (("A", port_a), ("B", port_b)):
                    wait_quiet()
                    done, delta = measured_load(args.server, port, args.seconds, tmp)
                    totals[name].append(sum(t for t, _ in delta.values()) / done)
                    for prog, (t, n) in delta.items():
                        per_req[name].setdefault(prog, []).append(t / done)
                        if name == "A":
                            per_call.setdefault(prog, []).append(t / n)
                    print(f"round {r} {name}: {done} requests, {totals[name][-1]:.0f} ns of BPF per request",
                          file=sys.stderr)
        finally:
            Path(STATS).write_text(was)
            tracer.send_signal(signal.SIGINT)
            tracer.communicate(timeout=300)
            for p in (a, b):
                p.terminate()
                p.wait()
    med = statistics.median
    out = {
        "server": args.server, "rounds": args.rounds, "seconds": args.seconds,
        "traced_ns_per_request": med(totals["A"]), "untraced_ns_per_request": med(totals["B"]),
        "programs": {prog: {"ns_per_call": round(med(per_call.get(prog, [0.0]))),
                            "traced_ns_per_request": round(med(v)),
                            "untraced_ns_per_request": round(med(per_req["B"].get(prog, [0.0])))}
                     for prog, v in sorted(per_req["A"].items())},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'program':40} {'ns/call':>8} {'ns/req A':>9} {'ns/req B':>9}")
        for prog, v in out["programs"].items():
            print(f"{prog:40} {v['ns_per_call']:8} {v['traced_ns_per_request']:9} {v['untraced_ns_per_request']:9}")
        print(f"BPF per request: traced server {out['traced_ns_per_request']:.0f} ns, "
              f"untraced server {out['untraced_ns_per_request']:.0f} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
