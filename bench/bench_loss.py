"""Loss under load, tracer memory, and pipeline throughput on the capture that load produced.

    sudo .venv/bin/python bench/bench_loss.py [--seconds 60] [--clients 3] [--json] [--profile]

1. Loss: nghttpd (HTTP/2 over TLS) traced with `apptrace trace --pid` (everything on, plus
   --raw); several h2load clients drive it as hard as the machine allows for --seconds.
   Reported: requests h2load completed, server rows stored, events, lost events, spool drops,
   gap bytes, the largest analysis backlog on disk, and how long analysis needed after the
   load to catch up. Goal: 0 lost events and one row per completed request.
2. Memory: RSS of the capture process and of the analysis process, sampled every second
   during the load (flat = bounded), and the spool's size on disk.
3. Pipeline: the raw capture replayed (`apptrace replay`, no kernel in the loop) into a fresh
   DuckDB file: events/s and rows/s end to end; --profile adds a pyinstrument profile.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.contract.spool import segments_bytes  # noqa: E402
from bench.bench_overhead import analysis_pid, make_site, start_server, start_trace  # noqa: E402


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def spool_bytes(path: str) -> int:
    return segments_bytes(path) if os.path.isdir(path) else 0


def count_rows(db: str, pid: int) -> int:
    out = subprocess.run([sys.executable, "-m", "apptrace.cli", "sql", "--db", db, "--format", "json",
                          f"SELECT count(*) AS n FROM http_events WHERE pid = {pid}"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return int(json.loads(out)["output"][0]["n"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=60)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true", help="profile the replay with pyinstrument")
    ap.add_argument("--keep", metavar="DIR", help="keep the DB and raw capture in DIR")
    ap.add_argument("--no-replay", action="store_true", help="skip the pipeline replay (long memory runs)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    tmp_ctx = tempfile.TemporaryDirectory()
    tmp = args.keep or tmp_ctx.name
    os.makedirs(tmp, exist_ok=True)
    certs, docroot = make_site(tmp)
    server, port = start_server("nghttpd", certs, docroot)
    db, raw = os.path.join(tmp, "load.duckdb"), os.path.join(tmp, "load.raw")
    for f in (db, raw):
        if os.path.exists(f):
            os.unlink(f)
    tracer = start_trace(server.pid, "--db", db, "--raw", raw)
    rss: list[int] = []  # capture process
    rss_analysis: list[int] = []
    spool: list[int] = []
    child = analysis_pid(tracer.pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            rss.append(rss_kib(tracer.pid))
            if child is not None:
                rss_analysis.append(rss_kib(child))
            spool.append(spool_bytes(db + ".spool"))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    clients = [subprocess.Popen(["h2load", "-D", str(args.seconds), "-c", "4", "-m", "8",
                                 f"https://127.0.0.1:{port}/index.html"], stdout=subprocess.PIPE, text=True)
               for _ in range(args.clients)]
    completed = 0
    for c in clients:
        out, _ = c.communicate()
        m = re.search(r"requests: \d+ total, \d+ started, (\d+) done", out)
        completed += int(m.group(1)) if m else 0
    load_end = time.monotonic()
    stop.set()
    time.sleep(1.5)  # the last flush
    tracer.send_signal(signal.SIGINT)
    _, err = tracer.communicate(timeout=3600)
    catch_up_s = time.monotonic() - load_end  # analysis runs at normal priority once capture has stopped
    server.terminate()
    server.wait()
    summary = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", err)}
    events = int(re.search(r"(\d+) events", err).group(1))
    rows = count_rows(db, server.pid)

    replay: dict = {}
    if not args.no_replay:
        replay_db = os.path.join(tmp, "replay.duckdb")
        if os.path.exists(replay_db):
            os.unlink(replay_db)
        cmd = [sys.executable, "-m", "apptrace.cli", "replay", raw, "--db", replay_db]
        if args.profile:
            cmd = [sys.executable, "-m", "pyinstrument", "-o", os.path.join(tmp, "replay-profile.txt"), "-m",
                   "apptrace.cli", "replay", raw, "--db", replay_db]
        t0 = time.perf_counter()
        rep = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        replay_s = time.perf_counter() - t0
        replay_rows = count_rows(replay_db, server.pid)
        replay_events = int(re.search(r"replayed (\d+) events", rep.stderr).group(1))
        all_rows = int(re.search(r"(\d+) records", rep.stderr).group(1))
        replay = {"seconds": round(replay_s, 2), "events": replay_events, "rows_all_tables": all_rows,
                  "server_rows": replay_rows, "events_per_s": round(replay_events / replay_s),
                  "rows_per_s": round(all_rows / replay_s)}
        if args.profile:
            replay["profile"] = os.path.join(tmp, "replay-profile.txt")
    out = {
        "seconds": args.seconds,
        "h2load_clients": args.clients,
        "requests_completed": completed,
        "server_rows": rows,
        "rows_per_completed_request": rows / completed if completed else None,
        "events": events,
        "lost_events": summary.get("lost_events"),
        "backlog_dropped_events": summary.get("backlog_dropped_events"),
        "max_spool_bytes": max(spool, default=0),
        "analysis_caught_up_s_after_load": round(catch_up_s, 1),
        "gap_bytes": summary.get("gap_bytes"),
        "parse_errors": summary.get("parse_errors"),
        "tracer_rss_kib": {"first": rss[0] if rss else None, "max": max(rss, default=None),
                           "last": rss[-1] if rss else None, "samples": len(rss),
                           "per_minute_max": [max(rss[i:i + 60]) for i in range(0, len(rss), 60)]},
        "analysis_rss_kib": {"first": rss_analysis[0] if rss_analysis else None,
                             "max": max(rss_analysis, default=None),
                             "last": rss_analysis[-1] if rss_analysis else None,
                             "per_minute_max": [max(rss_analysis[i:i + 60])
                                                for i in range(0, len(rss_analysis), 60)]},
        "replay": replay,
    }
    print(json.dumps(out, indent=2) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))
    if not args.keep:
        tmp_ctx.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
