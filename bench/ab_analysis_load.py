"""Tracer CPU during a load on a traced server, two trees alternated: how much runs beside the server.

    sudo .venv/bin/python bench/ab_analysis_load.py --base DIR [--this DIR] [--server go|h2c] [--rounds 4]
                                                    [--seconds 6]

DIR is a checkout (e.g. a `git worktree add /tmp/base REV`). Each round starts a fresh
`apptrace trace --pid SERVER` from each tree in turn (alternating which goes first), waits for a
quiet machine, runs h2load -c 4 -m 4 for --seconds against the Go HTTPS server of bench_overhead
(bench/go/static_server.go) or a plaintext nghttpd (h2c), and reports the CPU the capture and analysis
processes used *during* the load (until h2load exits), per request the server completed. Analysis is meant to wait while the load
keeps the CPUs busy; a fresh tracer's first load is where one-off costs (imports, first inserts)
land, which is what a benchmark round with a new tracer sees.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.demo.gobuild import go_build  # noqa: E402
from bench.bench_overhead import (  # noqa: E402
    GO_SERVER_SRC,
    _cpu_ticks,
    analysis_pid,
    launch_trace,
    load,
    make_site,
    start_server,
    wait_quiet,
)


def one_load(tree: str, server: str, server_pid: int, port: int, seconds: float, tmp: str, db: str) -> dict:
    tracer = launch_trace("--pid", str(server_pid), "--no-follow-forks", "--quiet", "--db", db, tree=tree)
    try:
        wait_quiet()
        child = analysis_pid(tracer.pid)
        if child is None:
            raise SystemExit("no analysis process")
        a0, c0 = _cpu_ticks(child), _cpu_ticks(tracer.pid)
        after: list[tuple[int, int]] = []
        rate, _, done = load(server, port, seconds, tmp, lambda: after.append((_cpu_ticks(child), _cpu_ticks(tracer.pid))))
        (a1, c1), = after
    finally:
        tracer.send_signal(2)
        tracer.communicate(timeout=300)
    hz = os.sysconf("SC_CLK_TCK")
    return {"analysis_us_per_req": (a1 - a0) / hz / max(done, 1) * 1e6,
            "capture_us_per_req": (c1 - c0) / hz / max(done, 1) * 1e6, "req_s": rate}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", required=True, help="checkout of the old code")
    ap.add_argument("--this", default=str(ROOT), help="checkout of the new code (default: this tree)")
    ap.add_argument("--server", choices=["go", "h2c"], default="go")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    trees = {"base": args.base, "this": args.this}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    with tempfile.TemporaryDirectory() as tmp:
        certs, docroot = make_site(tmp)
        exe = go_build(GO_SERVER_SRC, os.path.join(tmp, "static_server"), tmp) if args.server == "go" else ""
        server, port = start_server(args.server, certs, docroot, exe)
        try:
            for r in range(args.rounds):
                for name in (("base", "this") if r % 2 == 0 else ("this", "base")):
                    got = one_load(trees[name], args.server, server.pid, port, args.seconds, tmp,
                                   os.path.join(tmp, f"{name}{r}.duckdb"))
                    results[name].append(got)
                    print(f"round {r} {name}: analysis {got['analysis_us_per_req']:.2f} µs/request, "
                          f"capture {got['capture_us_per_req']:.2f}, {got['req_s']:.0f} req/s", file=sys.stderr)
        finally:
            server.kill()
    summary = {name: {k: statistics.median(x[k] for x in rows) for k in rows[0]} for name, rows in results.items()}
    print(json.dumps({"rounds": results, "median": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
