"""Benchmark: `apptrace export --parquet` on a DB of synthetic http_events, from the file and through a serving
Store's socket, incremental runs, and http_stats over the export against the same over the DB.

USAGE: .venv/bin/python bench/bench_export.py [--rows 1000000] [--repeat 3] [--json]

Every command is the real CLI as a subprocess (Python start-up included). File and socket exports of the same DB
alternate in the same run, into fresh directories (the machine is noisy: read the ratios).
  full_file      every row, the DB opened read-only by the export
  full_socket    every row, the DB held by a Store serving <db>.sock (as a tracer holds it)
  noop           a second export into the same DIR with nothing new
  incremental    after 5% more rows (late ones: old times) were stored
  run_db / run_parquet   `apptrace run http_stats --arg start_time=-1h` on --db and on --parquet 'DIR/**'
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

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from apptrace.store.writer import Store  # noqa: E402

APPTRACE = [sys.executable, "-m", "apptrace.cli"]


def generate(path: str, rows: int) -> None:
    """Rows straight into DuckDB (range(), seconds not minutes), numbered as the store numbers them."""
    Store(path).close()
    con = duckdb.connect(path)
    now = time.time_ns()
    con.execute(f"""
    INSERT INTO http_events (time_, pid, comm, service, trace_role, local_addr, local_port, remote_addr,
        remote_port, encrypted, tls_lib, host, latency, conn_id, http_version, req_method, req_path, req_route,
        req_headers, resp_status, resp_body, req_body_size, resp_body_size, store_seq)
    SELECT make_timestamp_ns({now} - CAST(random() * 3000e9 AS BIGINT)), 1000 + i % 50, 'python3',
        'svc-' || (i % 20), 'server', '10.0.0.1', 8443, '10.0.0.2', 40000 + i % 20000, true, 'openssl',
        'bench-host', CAST(exp(12 + random() * 4) AS BIGINT), (i % 5000)::VARCHAR || ':7:0', '1.1',
        CASE WHEN i % 4 = 0 THEN 'POST' ELSE 'GET' END, '/api/v1/endpoint/' || ((i // 20) % 50),
        '/api/v1/endpoint/{{id}}', '{{"host":"x","accept":"*/*"}}',
        CASE WHEN random() < 0.02 THEN 503 ELSE 200 END, 'ok', CAST(random() * 4000 AS BIGINT),
        CAST(random() * 60000 AS BIGINT), i + 1
    FROM range({rows}) t(i)""")
    con.execute("CHECKPOINT")
    con.close()


def cli(*args: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([*APPTRACE, *args], cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"apptrace {' '.join(args)} failed: {proc.stderr.strip()}")
    return elapsed


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(path) for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="bench-export-")
    try:
        db = os.path.join(tmp, "bench.duckdb")
        generate(db, args.rows)
        times: dict[str, list[float]] = {"full_file": [], "full_socket": []}
        for i in range(args.repeat):
            out = os.path.join(tmp, f"file-{i}")
            times["full_file"].append(cli("export", "--parquet", out, "--db", db, "--table", "http_events"))
            store = Store(db)
            store.serve()
            try:
                times["full_socket"].append(cli("export", "--parquet", os.path.join(tmp, f"sock-{i}"), "--db", db,
                                                "--table", "http_events"))
            finally:
                store.close()
        out = os.path.join(tmp, "file-0")
        noop = cli("export", "--parquet", out, "--db", db)
        with Store(db) as store:
            late = time.time_ns() - 3600 * 10**9
            store.add_events("http_events", [{"time_": late, "service": "late", "latency": 1, "host": "bench-host"}
                                             for _ in range(args.rows // 20)])
        incremental = cli("export", "--parquet", out, "--db", db)
        run_db = [cli("run", "http_stats", "--arg", "start_time=-2h", "--db", db) for _ in range(args.repeat)]
        run_pq = [cli("run", "http_stats", "--arg", "start_time=-2h", "--parquet", f"{out}/**")
                  for _ in range(args.repeat)]
        med = {k: statistics.median(v) for k, v in times.items()}
        result = {
            "rows": args.rows,
            "db_bytes": os.path.getsize(db),
            "parquet_bytes": dir_bytes(os.path.join(tmp, "file-1" if args.repeat > 1 else "file-0")),
            "full_file_s": med["full_file"], "full_socket_s": med["full_socket"],
            "rows_per_s_file": args.rows / med["full_file"], "rows_per_s_socket": args.rows / med["full_socket"],
            "socket_over_file": med["full_socket"] / med["full_file"],
            "noop_s": noop, "incremental_rows": args.rows // 20, "incremental_s": incremental,
            "run_db_s": statistics.median(run_db), "run_parquet_s": statistics.median(run_pq),
            "parquet_over_db": statistics.median(run_pq) / statistics.median(run_db),
            "samples": {**times, "run_db": run_db, "run_parquet": run_pq},
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    for k, v in result.items():
        if k != "samples":
            print(f"{k:<20} {v:,.3f}" if isinstance(v, float) else f"{k:<20} {v:,}")


if __name__ == "__main__":
    main()
