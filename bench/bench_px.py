"""Benchmark: the seed px script over 10M synthetic http_events rows, against pandas and hand-written SQL.

USAGE: .venv/bin/python bench/bench_px.py [--rows 10000000] [--repeat 5] [--json] [--db PATH] [--keep]

Everything is compared A/B in the same run on the same file (the machine is noisy: read the ratios, not the
absolute numbers). The rows are generated inside DuckDB with range(), so setup takes seconds, not minutes.
  px          px.DataFrame(...).groupby(...).agg(...) → compile → one DuckDB query → pandas (what `run` does)
  sql         the same aggregation written by hand in SQL → pandas
  pandas      the same aggregation in pandas on a DataFrame already in memory (loading it is not counted)
  run         `apptrace run seed.pxl` as a subprocess (Python start-up and imports included)
  report      `apptrace report --since 1h` (terminal) and with --html
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import duckdb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from apptrace.store.writer import Store  # noqa: E402

SEED = ("px.display(px.DataFrame('http_events').groupby(['service', 'req_path']).agg(\n"
        "    p99_latency=('latency', px.quantiles, 0.99), error_rate=('resp_status', px.fraction, px.gt, 499)))\n")
HAND_SQL = ("SELECT service, req_path, quantile_cont(latency, 0.99) AS p99_latency, "
            "avg(CASE WHEN resp_status > 499 THEN 1.0 ELSE 0.0 END) AS error_rate "
            "FROM http_events GROUP BY service, req_path")


def generate(path: str, rows: int) -> None:
    Store(path).close()
    con = duckdb.connect(path)
    now = time.time_ns()
    con.execute(f"""
    INSERT INTO http_events (time_, pid, comm, service, trace_role, local_addr, local_port, remote_addr,
        remote_port, encrypted, tls_lib, latency, conn_id, http_version, req_method, req_path, resp_status,
        req_body_size, resp_body_size)
    SELECT make_timestamp_ns({now} - CAST(random() * 3000e9 AS BIGINT)), 1000 + i % 50, 'python3',
        'svc-' || (i % 20), CASE WHEN i % 3 = 0 THEN 'client' ELSE 'server' END, '10.0.0.1', 8443, '10.0.0.2',
        40000 + i % 20000, true, 'openssl', CAST(exp(12 + random() * 4) AS BIGINT), (i % 5000)::VARCHAR || ':7:0',
        '1.1', CASE WHEN i % 4 = 0 THEN 'POST' ELSE 'GET' END, '/api/v1/endpoint/' || ((i // 20) % 50),
        CASE WHEN random() < 0.02 THEN 503 WHEN random() < 0.05 THEN 404 ELSE 200 END,
        CAST(random() * 4000 AS BIGINT), CAST(random() * 60000 AS BIGINT)
    FROM range({rows}) t(i)""")
    con.execute("CHECKPOINT")
    con.close()


def timed(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up (file cache, imports)
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--db", help="reuse/keep this file (default: a temp file)")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()

    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.mkdtemp(prefix="apptrace-bench-")
        path = os.path.join(tmp, "bench.duckdb")
    t0 = time.perf_counter()
    if not os.path.exists(path):
        generate(path, args.rows)
    gen_s = time.perf_counter() - t0

    import pandas as pd

    import apptrace.query.px as px
    from apptrace.query.backend import FileBackend

    con = duckdb.connect(path, read_only=True)
    n = con.execute("SELECT count(*) FROM http_events").fetchall()[0][0]
    backend = FileBackend(con=con)

    def run_px():
        with px.session(backend=backend, collect=True) as s:
            s.close = lambda: None  # keep the shared connection open
            exec(compile(SEED, "seed.pxl", "exec"), {"px": px})
            return s.outputs[0][1]

    def run_sql():
        return backend.query_arrow(HAND_SQL).to_pandas()

    pdf = con.sql("SELECT service, req_path, latency, resp_status FROM http_events").to_arrow_table().to_pandas()

    def run_pandas():
        g = pdf.groupby(["service", "req_path"], sort=False)
        p99 = g["latency"].quantile(0.99)
        err = (pdf["resp_status"] > 499).groupby([pdf["service"], pdf["req_path"]], sort=False).mean()
        return pd.DataFrame({"p99_latency": p99, "error_rate": err}).reset_index()

    results: dict[str, float] = {}
    # interleave px and sql so drift hits both alike
    px_t, sql_t = [], []
    run_px(), run_sql()
    for _ in range(args.repeat):
        t = time.perf_counter()
        got = run_px()
        px_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        want = run_sql()
        sql_t.append(time.perf_counter() - t)
    results["px"] = statistics.median(px_t)
    results["sql"] = statistics.median(sql_t)
    results["pandas"], pd_out = timed(run_pandas, max(1, args.repeat // 2))

    def run_pandas_with_load():
        nonlocal pdf
        pdf = con.sql("SELECT service, req_path, latency, resp_status FROM http_events").to_arrow_table().to_pandas()
        return run_pandas()

    results["pandas_load"], _ = timed(run_pandas_with_load, max(1, args.repeat // 2))
    # the three agree
    key = ["service", "req_path"]
    a = got.sort_values(key).reset_index(drop=True)
    b = want.sort_values(key).reset_index(drop=True)
    c = pd_out.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) == len(c)
    assert ((a.p99_latency - c.p99_latency).abs() <= 1e-6 * c.p99_latency.abs() + 1e-6).all()
    assert ((a.error_rate.astype(float) - c.error_rate).abs() < 1e-9).all()
    pdf = None  # free the memory before the subprocess runs
    con.close()

    seed_file = os.path.join(tmp or os.path.dirname(path), "seed.pxl")
    with open(seed_file, "w") as f:
        f.write(SEED)
    apptrace = os.path.join(os.path.dirname(sys.executable), "apptrace")

    def cli(*argv: str) -> None:
        r = subprocess.run([apptrace, *argv, "--db", path], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(f"{argv}: {r.stderr}")

    rep = max(1, args.repeat // 2)
    results["run"], _ = timed(lambda: cli("run", seed_file, "--format", "csv"), rep)
    results["report"], _ = timed(lambda: cli("report", "--since", "1h"), rep)
    html = os.path.join(tmp or os.path.dirname(path), "report.html")
    results["report_html"], _ = timed(lambda: cli("report", "--since", "1h", "--html", html), rep)

    out = {
        "rows": n, "groups": len(a), "generate_s": round(gen_s, 2), "median_s": {k: round(v, 4) for k, v in
                                                                                  results.items()},
        "px_vs_pandas_speedup": round(results["pandas"] / results["px"], 1),
        "px_vs_pandas_with_load_speedup": round(results["pandas_load"] / results["px"], 1),
        "px_vs_sql_ratio": round(results["px"] / results["sql"], 3),
        "seed_px_under_1s": results["px"] <= 1.0,
        "threads": duckdb.connect().execute("SELECT current_setting('threads')").fetchall()[0][0],
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{n:,} http_events rows, {len(a)} groups, DuckDB threads={out['threads']} "
              f"(generated in {gen_s:.1f}s)")
        print(f"{'what':<38}{'median':>10}")
        labels = {"px": "seed script, px in-process", "sql": "hand-written SQL", "pandas": "pandas (in memory)",
                  "pandas_load": "pandas (load from DuckDB + compute)",
                  "run": "apptrace run seed.pxl (process)", "report": "apptrace report --since 1h",
                  "report_html": "apptrace report --html"}
        for k, v in results.items():
            print(f"{labels[k]:<38}{v * 1000:>8.0f}ms")
        print(f"px is {out['px_vs_pandas_speedup']}x faster than pandas in memory, "
              f"{out['px_vs_pandas_with_load_speedup']}x with loading; px/sql = {out['px_vs_sql_ratio']} "
              f"(goals: >=10x, <=1.1); seed <= 1s: {out['seed_px_under_1s']}")
    if tmp and not args.db:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
