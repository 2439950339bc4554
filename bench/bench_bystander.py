"""What tracing everything costs a bystander: a bulk TCP transfer of non-protocol data, traced vs not.

    sudo .venv/bin/python bench/bench_bystander.py [--rounds 5] [--seconds 5] [--json] [-- TRACE_ARGS...]

iperf3 (Debian's) sends a bulk stream over loopback between two processes that speak no protocol
apptrace parses. Each round runs the same transfer twice, alternating which goes first:

  untraced  no tracer
  traced    `apptrace trace` with no scope at all (every process, plaintext capture on), as a user
            tracing a whole host runs it

The transfer's first bytes (iperf3's cookie) are no supported protocol, so the kernel decides
"unknown" on each connection and stops looking at it: what the bystander pays is the syscall
tracepoints' early exit. Reported: throughput traced / untraced per round and its median (the
goal: >= 0.97), and the tracer's `unknown_protocol_conns` count from its summary, which shows
the connections were looked at and dropped rather than not seen.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.demo.server import free_port, wait_port  # noqa: E402
from bench.bench_overhead import launch_trace, wait_quiet  # noqa: E402


def transfer(port: int, seconds: float) -> float:
    """One iperf3 client run against the server on ``port``: received bits per second."""
    out = subprocess.run(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", f"{seconds:g}", "-J"],
                         capture_output=True, text=True, timeout=seconds * 4 + 60)
    if out.returncode != 0:
        raise SystemExit(f"iperf3 client failed: {out.stdout[-400:]}{out.stderr[-400:]}")
    return float(json.loads(out.stdout)["end"]["sum_received"]["bits_per_second"])


def stop_tracer(p: subprocess.Popen) -> str:
    p.send_signal(2)
    _, err = p.communicate(timeout=300)
    return err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    ap.add_argument("trace_args", nargs="*", help="extra `apptrace trace` arguments, after --")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_bystander: needs root (it runs the tracer)", file=sys.stderr)
        return 2
    if not shutil.which("iperf3"):
        print("bench_bystander: iperf3 not found: run the README's setup (scripts/setup.sh)", file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="apptrace-bystander-")
    port = free_port()
    server = subprocess.Popen(["iperf3", "-s", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    rounds = []
    summaries = []
    try:
        wait_port(port)
        for r in range(args.rounds):
            result = {}
            for mode in (("untraced", "traced") if r % 2 == 0 else ("traced", "untraced")):
                tracer = None
                if mode == "traced":
                    tracer = launch_trace("--db", os.path.join(tmp, f"r{r}.duckdb"), *args.trace_args)
                wait_quiet()
                result[mode] = transfer(port, args.seconds)
                if tracer is not None:
                    summaries.append(stop_tracer(tracer))
                print(f"round {r} {mode:9s} {result[mode] / 1e9:8.2f} Gbit/s", file=sys.stderr, flush=True)
            result["ratio"] = result["traced"] / result["untraced"]
            print(f"round {r} traced/untraced {result['ratio']:.3f}", file=sys.stderr, flush=True)
            rounds.append(result)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [x["ratio"] for x in rounds]
    unknown = [line.strip() for s in summaries for line in s.splitlines() if "unknown" in line]
    report = {
        "rounds": rounds,
        "ratio_median": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "untraced_gbps_median": statistics.median(x["untraced"] for x in rounds) / 1e9,
        "tracer_summary_unknown": unknown,
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"traced/untraced throughput: median {report['ratio_median']:.3f} "
          f"[{report['ratio_min']:.3f}-{report['ratio_max']:.3f}] over {len(rounds)} rounds; goal >= 0.97",
          file=sys.stderr)
    for line in unknown[:3]:
        print(f"tracer summary: {line}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
