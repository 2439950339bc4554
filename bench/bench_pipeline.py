"""Analysis pipeline throughput, end to end: a recorded raw capture replayed into a fresh DuckDB file.

    sudo .venv/bin/python bench/bench_pipeline.py [--captures DIR] [--record] [--base REV] [--this REV]
                                                  [--rounds 3] [--json] [--profile]

1. Captures (recorded once into --captures, default /tmp/apptrace-bench-pipeline; --record
   records them again; needs root and the README's setup), each one protocol:
     h2   `apptrace trace --pid nghttpd --capture-only --raw`, h2load -c 4 -m 4 for --seconds
     h1   the same against `python -m apptrace.demo.server` with h2load --h1, path /hello
     h2paths  like h2, but h2load cycles through 1,000 distinct paths (-i): every request
              header block differs, so each is decoded by hpack (h2load's single path is
              the best case for the parser's block caches; real clients vary paths)
     grpc     4 grpcio clients making server-streaming calls (3 messages each) for --seconds against the h2 gRPC server
              of the e2e tests (Python ssl; grpcio's stripped BoringSSL is not traced)
     mysql    mariadb-slap --ssl, 4 connections, 4,000 text queries per second of --seconds
              (it runs a fixed number), against MariaDB traced by pid
     pgsql    pgbench -M prepared -S -c 4 -T --seconds over TLS against PostgreSQL 15,
              backends traced with --comm postgres
2. Replay: each capture goes through `apptrace.analysis.replay.replay_file` into a fresh DuckDB file
   through `apptrace.store.writer.Store`, exactly what `apptrace replay FILE --db X` does, timed
   inside a child process (interpreter start and one-off imports excluded: pyarrow imports
   pandas on its first conversion, ~0.3 s once per process). Reported: events/s and rows/s
   (rows of every table) per capture.
3. A/B: with --base REV (a commit, default none), the same replays run on REV's code too,
   from a `git worktree` of it, alternated round by round in the same run, and the speedup
   (REV's time / this tree's, median over rounds) is reported. The machine is noisy: compare
   ratios. --this REV measures REV (e.g. HEAD) instead of the working tree, so uncommitted
   work elsewhere in the tree stays out of the comparison.

--profile writes a pyinstrument profile of one replay of each capture on this tree.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Runs in a child process whose sys.path starts at the tree under test, so the base commit's
# code and this tree's never share an interpreter (nor its module cache).
CHILD = r"""
import json, os, sys, time
tree, raw, db, profile = sys.argv[1:5]
sys.path.insert(0, tree)
import apptrace
# setup.py installs protocols/ as apptrace.protocols; an editable install maps that name to the checkout it was
# made from, so the tree's own copy is found first by looking in its top directory too.
apptrace.__path__.append(tree)
try:
    import apptrace.protocols as protocols
    from apptrace.analysis.replay import replay_file
    from apptrace.store.writer import Store
except ImportError:  # a tree from before apptrace/ had one sub-package per stage (2026-12-05)
    import protocols
    from apptrace.replay import replay_file
    from apptrace.store import Store
assert apptrace.__file__.startswith(tree) and protocols.__file__.startswith(tree), (apptrace.__file__, tree)
import pyarrow
pyarrow.array([0])  # its first conversion imports pandas: keep that out of the timed part
store = Store(db)
prof = None
if profile:
    from pyinstrument import Profiler
    prof = Profiler(interval=0.0005)
    prof.start()
t0 = time.perf_counter()
pipeline, error = replay_file(raw, store, flush=store.flush)
store.close()
seconds = time.perf_counter() - t0
if prof is not None:
    prof.stop()
    with open(profile, "w") as f:
        f.write(prof.output_text(unicode=True, color=False, show_all=False))
t = pipeline.totals
print(json.dumps({"seconds": seconds, "events": t.events, "records": t.records, "bytes": t.bytes,
                  "parse_errors": t.parse_errors, "gap_bytes": t.gap_bytes, "error": error}))
"""

CAPTURES = {
    "h2": "HTTP/2: h2load -c 4 -m 4 against nghttpd",
    "h1": "HTTP/1.1: h2load --h1 -c 4 against the Python ssl demo server",
    "h2paths": "HTTP/2: h2load -c 4 -m 4 against nghttpd, 1,000 distinct paths",
    "grpc": "gRPC: 4 grpcio clients' server-streaming calls against an h2 gRPC server on Python ssl",
    "mysql": "MySQL: mariadb-slap, 4 connections of text queries, against MariaDB",
    "pgsql": "PostgreSQL: pgbench -M prepared -S -c 4 against PostgreSQL 15",
}
DEFAULT = "h2,h1,grpc,mysql,pgsql"
PATHS = 1000

# A load of gRPC calls for the gRPC capture: grpcio's own (stripped) BoringSSL is not traced, so
# only the server side is recorded, which is the side that stores rows.
GRPC_LOAD = r"""
import sys, threading, time, grpc
port, ca, seconds = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
ident = lambda b: b
calls = []
def client():
    n = 0
    with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        # Stream, not Unary: the server sleeps 50 ms in Unary (for the latency tests).
        stream = ch.unary_stream("/apptrace.Echo/Stream", request_serializer=ident, response_deserializer=ident)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            assert len(list(stream(b"go %d" % n, timeout=20))) == 3
            n += 1
    calls.append(n)
threads = [threading.Thread(target=client) for _ in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(f"requests: {sum(calls)} server-streaming calls")
"""


@contextmanager
def site(kind: str, seconds: float, tmp: str) -> Iterator[tuple[list[str], list[str], dict[str, str]]]:
    """A running server for ``kind``: yields (what `apptrace trace` traces, the load command, its env)."""
    from apptrace.demo.server import free_port, wait_port
    from bench.bench_overhead import make_site
    from tests import sql_servers

    certs, docroot = make_site(tmp)
    env = dict(os.environ)
    if kind == "mysql":
        with tempfile.TemporaryDirectory(dir=tmp) as data, sql_servers.mariadb(certs, data) as db:
            load = ["mariadb-slap", "--no-defaults", "-h", "127.0.0.1", "-P", str(db.port), "-uapp", "-psecret",
                    "--ssl", "--create-schema=shop", "--concurrency=4", f"--number-of-queries={int(seconds * 4000)}",
                    "--query=SELECT id, name, price FROM items WHERE id = 2"]
            yield ["--pid", str(db.pid)], load, env
        return
    if kind == "pgsql":
        with sql_servers.postgres(certs) as db:
            subprocess.run(["pgbench", "-i", "-q", "-h", db.extra["dir"], "-p", str(db.port), "-U", "postgres",
                            "postgres"], check=True, capture_output=True, timeout=120)
            env["PGSSLMODE"] = "require"
            load = ["pgbench", "-n", "-M", "prepared", "-S", "-c", "4", "-j", "1", "-T", f"{max(int(seconds), 1)}",
                    "-h", "127.0.0.1", "-p", str(db.port), "-U", "postgres", "postgres"]
            # Backends are forked per connection: traced by name, not by the postmaster's pid.
            yield ["--comm", "postgres"], load, env
        return
    port = free_port()
    if kind.startswith("h2"):
        cmd = ["nghttpd", "-a", "127.0.0.1", "-d", docroot, str(port), certs["server-key"], certs["server"]]
        load = ["h2load", "-D", f"{seconds:g}", "-c", "4", "-m", "4", f"https://127.0.0.1:{port}/index.html"]
        if kind == "h2paths":
            uris = os.path.join(tmp, "uris.txt")
            with open(uris, "w") as f:
                for i in range(PATHS):
                    Path(docroot, f"p{i}.html").write_text("<html><body>hello</body></html>\n")
                    f.write(f"https://127.0.0.1:{port}/p{i}.html?id={i * 7919 % 100003}\n")
            load[-1:] = ["-i", uris]
    elif kind == "grpc":
        cmd = [sys.executable, "-m", "tests.peers.e2e_grpc_server", "--port", str(port), "--cert", certs["server"],
               "--key", certs["server-key"]]
        load = [sys.executable, "-c", GRPC_LOAD, str(port), certs["ca"], f"{seconds:g}"]
    else:
        cmd = [sys.executable, "-m", "apptrace.demo.server", "--port", str(port), "--cert", certs["server"],
               "--key", certs["server-key"]]
        load = ["h2load", "--h1", "-D", f"{seconds:g}", "-c", "4", "-m", "1", f"https://127.0.0.1:{port}/hello"]
    server = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield ["--pid", str(server.pid)], load, env
    finally:
        server.terminate()
        server.wait()


def record(kind: str, out: str, seconds: float, tmp: str) -> None:
    """One raw capture of ``kind``'s load against its server, traced with --capture-only."""
    with site(kind, seconds, tmp) as (scope, load, env):
        if os.path.exists(out):
            os.unlink(out)
        tracer = subprocess.Popen([sys.executable, "-m", "apptrace.cli", "trace", *scope,
                                   "--raw", out, "--capture-only", "--quiet"], cwd=ROOT, stderr=subprocess.PIPE,
                                  text=True)
        assert tracer.stderr is not None
        for line in tracer.stderr:
            if line.startswith("apptrace: tracing"):
                break
        done = subprocess.run(load, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
        time.sleep(0.5)  # the last responses' records: a drain or two
        tracer.send_signal(signal.SIGINT)
        _, err = tracer.communicate(timeout=120)
        reqs = next((line for line in done.splitlines()
                     if line.strip().startswith(("requests:", "number of transactions actually", "Number of clients"))),
                    "")
        print(f"recorded {kind}: {out} ({os.path.getsize(out) / 1e6:.1f} MB); load: {reqs.strip()}; "
              f"tracer: {' | '.join(line for line in err.splitlines() if 'events' in line)}", file=sys.stderr)


def replay(tree: str, raw: str, tmp: str, profile: str = "") -> dict:
    db = os.path.join(tmp, f"replay-{time.monotonic_ns()}.duckdb")
    env = {**os.environ, "PYTHONPATH": tree}
    try:
        out = subprocess.run([sys.executable, "-c", CHILD, tree, raw, db, profile], cwd=tree, env=env,
                             capture_output=True, text=True, check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"replay on {tree} failed:\n{exc.stderr}") from exc
    finally:
        for f in (db, db + ".wal"):
            if os.path.exists(f):
                os.unlink(f)
    return json.loads(out.splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--captures", default="/tmp/apptrace-bench-pipeline", metavar="DIR")
    ap.add_argument("--record", action="store_true", help="record the captures again")
    ap.add_argument("--seconds", type=float, default=5, help="h2load duration when recording")
    ap.add_argument("--only", default=DEFAULT, help=f"comma-separated captures ({DEFAULT}; also h2paths)")
    ap.add_argument("--base", metavar="REV", help="also replay on REV's code (git worktree) and report ratios")
    ap.add_argument("--this", metavar="REV", help="measure REV's code (git worktree) instead of the working tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="pyinstrument profile of one replay per capture")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    kinds = args.only.split(",")
    os.makedirs(args.captures, exist_ok=True)
    raws = {k: os.path.join(args.captures, f"{k}.raw") for k in kinds}
    for k, raw in raws.items():
        if args.record or not os.path.exists(raw):
            if os.geteuid() != 0 or not shutil.which("h2load"):
                raise SystemExit("recording needs root and the README's setup (h2load, nghttpd, MariaDB, PostgreSQL)")
            record(k, raw, args.seconds, args.captures)

    trees = {"this": str(ROOT)}
    worktrees: list[str] = []
    worktree_ctx = tempfile.TemporaryDirectory(prefix="apptrace-bench-")
    for name, rev in (("this", args.this), ("base", args.base)):
        if rev:
            trees[name] = os.path.join(worktree_ctx.name, name)
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", trees[name], rev], check=True,
                           capture_output=True)
            worktrees.append(trees[name])
    results: dict[str, dict[str, list[dict]]] = {k: {t: [] for t in trees} for k in kinds}
    profiles: dict[str, str] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for k in kinds:
                    order = list(trees)
                    if r % 2:
                        order.reverse()
                    for t in order:
                        res = replay(trees[t], raws[k], tmp)
                        results[k][t].append(res)
                        print(f"round {r} {k} {t:4}: {res['seconds']:7.2f} s {res['events'] / res['seconds']:9.0f} "
                              f"events/s {res['records'] / res['seconds']:9.0f} rows/s", file=sys.stderr)
            if args.profile:
                for k in kinds:
                    profiles[k] = os.path.join(args.captures, f"profile-{k}.txt")
                    replay(trees["this"], raws[k], tmp, profiles[k])
    finally:
        for w in worktrees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", w], capture_output=True)
        worktree_ctx.cleanup()

    out: dict = {"rounds": args.rounds, "base": args.base, "this": args.this or "working tree", "captures": {}}
    for k in kinds:
        entry: dict = {"what": CAPTURES[k], "file": raws[k]}
        for t in trees:
            runs = results[k][t]
            entry[t] = {"events": runs[0]["events"], "rows": runs[0]["records"],
                        "parse_errors": runs[0]["parse_errors"],
                        "events_per_s": round(statistics.median(x["events"] / x["seconds"] for x in runs)),
                        "rows_per_s": round(statistics.median(x["records"] / x["seconds"] for x in runs))}
        if "base" in trees:
            ratios = [b["seconds"] / a["seconds"]
                      for a, b in zip(results[k]["this"], results[k]["base"], strict=True)]
            entry["speedup_this_over_base"] = round(statistics.median(ratios), 2)
            entry["same_rows"] = entry["this"]["rows"] == entry["base"]["rows"]
        if k in profiles:
            entry["profile"] = profiles[k]
        out["captures"][k] = entry
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for k, e in out["captures"].items():
            print(f"{k}: {e['what']}")
            for t in trees:
                print(f"  {t:4}: {e[t]['events']} events, {e[t]['rows']} rows: {e[t]['events_per_s']} events/s, "
                      f"{e[t]['rows_per_s']} rows/s")
            if "speedup_this_over_base" in e:
                print(f"  speedup (this / base, median of per-round ratios): {e['speedup_this_over_base']}x"
                      f"{'' if e['same_rows'] else '  ROW COUNTS DIFFER'}")
            if "profile" in e:
                print(f"  profile: {e['profile']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
