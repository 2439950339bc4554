"""Tail latency against capture CPU: `trace --drain-ms` values compared in the same run.

    sudo .venv/bin/python bench/bench_drain_interval.py [--values 20,5] [--rounds 5] [--seconds 5] [--json]

bench_overhead.py's two nghttpd servers and h2load; server A is traced with
`apptrace trace --pid A --capture-only --raw` at each --drain-ms value in turn, alternating
which server goes first, with a quiet second before every load. Reported per value (medians
over rounds): throughput A/B, p99 latency A/B, and the capture process's CPU per request A
completed. Capture drains the ring in bursts; a request that arrives during one waits.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import _cpu_ticks, load, make_site, start_server, start_trace, wait_quiet  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", default="20,5", help="--drain-ms values to compare (default 20,5)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    values = [int(v) for v in args.values.split(",")]
    thr: dict[int, list[float]] = {v: [] for v in values}
    p99: dict[int, list[float]] = {v: [] for v in values}
    cpu: dict[int, list[float]] = {v: [] for v in values}
    hz = os.sysconf("SC_CLK_TCK")
    with tempfile.TemporaryDirectory() as tmp:
        certs, docroot = make_site(tmp)
        a, port_a = start_server("nghttpd", certs, docroot)
        b, port_b = start_server("nghttpd", certs, docroot)
        try:
            for r in range(args.rounds):
                for i, v in enumerate(values):
                    tracer = start_trace(a.pid, "--capture-only", "--raw", os.path.join(tmp, "capture.raw"),
                                         "--drain-ms", str(v))
                    order = [("A", port_a), ("B", port_b)]
                    if (r + i) % 2:
                        order.reverse()
                    got = {}
                    for name, port in order:
                        wait_quiet()
                        before = _cpu_ticks(tracer.pid)
                        got[name] = load("nghttpd", port, args.seconds, tmp)
                        if name == "A":
                            used_s = (_cpu_ticks(tracer.pid) - before) / hz
                    tracer.send_signal(signal.SIGINT)
                    tracer.communicate(timeout=300)
                    thr[v].append(got["A"][0] / got["B"][0])
                    p99[v].append(got["A"][1] / got["B"][1])
                    cpu[v].append(used_s * 1e6 / got["A"][2])
                    print(f"round {r} --drain-ms {v}: throughput A/B {thr[v][-1]:.3f}, p99 A/B {p99[v][-1]:.2f}, "
                          f"capture {cpu[v][-1]:.2f} µs CPU per request", file=sys.stderr, flush=True)
        finally:
            for p in (a, b):
                p.terminate()
                p.wait()
    med = statistics.median
    out = {"rounds": args.rounds, "seconds": args.seconds,
           "drain_ms": {str(v): {"throughput_ratio": med(thr[v]), "p99_ratio": med(p99[v]),
                                 "capture_cpu_us_per_request": med(cpu[v])} for v in values}}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for v, d in out["drain_ms"].items():
            print(f"--drain-ms {v:>3}: throughput A/B {d['throughput_ratio']:.3f}  p99 A/B {d['p99_ratio']:.2f}  "
                  f"capture {d['capture_cpu_us_per_request']:.2f} µs/request")
    return 0


if __name__ == "__main__":
    sys.exit(main())
