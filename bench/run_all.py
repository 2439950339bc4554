"""Run every benchmark under bench/ and print one table.

    sudo .venv/bin/python bench/run_all.py [--quick] [--only NAME]... [--table-only DIR]

Each benchmark compares A and B in the same run and reports ratios (the machine is
noisy); absolute numbers are for the record. Each benchmark's JSON goes to bench/out/,
then one table lists every figure with its goal. --table-only DIR prints the table from
JSON files already in DIR (e.g. bench/results/<date>/) without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES = {
    "probe_cost": (["bench_probe_cost.py", "--json"], ["bench_probe_cost.py", "--json", "--rounds", "3",
                                                       "--exchanges", "5000"]),
    "ring_consume": (["bench_ring_consume.py", "--json", "--tracer", "20000"], ["bench_ring_consume.py", "--json"]),
    "bpf_runtime": (["bench_bpf_runtime.py", "--json"], ["bench_bpf_runtime.py", "--json", "--rounds", "1",
                                                         "--seconds", "2"]),
    "parsers_http": (["bench_parsers_http.py", "--json"], ["bench_parsers_http.py", "--json", "--seconds", "1"]),
    "parsers_sql": (["bench_parsers_sql.py", "--json"], ["bench_parsers_sql.py", "--json", "--rounds", "2"]),
    "pipeline": (["bench_pipeline.py", "--json"], ["bench_pipeline.py", "--json"]),
    "overhead_h2": (["bench_overhead.py", "--json", "--rounds", "7"],
                    ["bench_overhead.py", "--json", "--rounds", "1", "--seconds", "2"]),
    "overhead_python": (["bench_overhead.py", "--json", "--server", "python", "--rounds", "5"],
                        ["bench_overhead.py", "--json", "--server", "python", "--rounds", "1", "--seconds", "2"]),
    "drain_interval": (["bench_drain_interval.py", "--json"], ["bench_drain_interval.py", "--json", "--rounds", "1",
                                                              "--seconds", "2"]),
    "loss_memory_pipeline": (["bench_loss.py", "--json", "--seconds", "60"], ["bench_loss.py", "--json", "--seconds", "5"]),
    "px": (["bench_px.py", "--json"], ["bench_px.py", "--json", "--rows", "1000000", "--repeat", "2"]),
}
NEEDS_ROOT = ("probe_cost", "ring_consume", "bpf_runtime", "overhead", "drain", "loss")

Row = tuple[str, str, str, str]  # figure, value, goal, verdict


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "MISSED")


def _f(v: object, fmt: str = "{:.3f}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) else "?"


def _probe_cost(d: dict) -> list[Row]:
    added = d.get("added_us_per_ssl_call", {})
    return [(f"µs added per SSL call, {m}", _f(added.get(m), "{:.1f}"), "", "-") for m in ("empty", "raw", "full")]


def _ring(d: dict) -> list[Row]:
    med = d.get("median", {})
    rows: list[Row] = [(f"ring drain user µs/record, {m}", _f(med.get(m, {}).get("user_us"), "{:.2f}"), "", "-")
                       for m in ("bcc", "mmap")]
    rows.append(("ring drain: BCC callback / our mmap reader", _f(d.get("user_ratio_bcc_over_mmap"), "{:.2f}x"), "",
                 "-"))
    if d.get("tracer"):
        rows.append(("capture-only tracer CPU/event: BCC / mmap", _f(d["tracer"]["ratio_bcc_over_mmap"], "{:.2f}x"),
                     "", "-"))
    return rows


def _bpf_runtime(d: dict) -> list[Row]:
    return [("BPF ns per request, traced nghttpd", _f(d.get("traced_ns_per_request"), "{:.0f}"), "", "-"),
            ("BPF ns per request, untraced nghttpd + its h2load", _f(d.get("untraced_ns_per_request"), "{:.0f}"), "",
             "-")]


def _parsers_http(d: dict) -> list[Row]:
    return [(f"HTTP parser {r['case']} records/s", f"{r['records_per_s']:,}", f"{r['goal_per_s']:,}",
             _verdict(r["meets_goal"])) for r in d.get("results", [])]


def _parsers_sql(d: dict) -> list[Row]:
    return [(f"SQL parser {r['scenario']} pairs/s", f"{r['pairs_per_s']:,}", "100,000", _verdict(r["vs_goal"] >= 1))
            for r in d.get("results", [])]


def _pipeline(d: dict) -> list[Row]:
    rows: list[Row] = []
    for name, e in (d.get("captures") or {}).items():
        this = e.get("this", {})
        rows.append((f"replay into DuckDB, {name}: events/s, rows/s",
                     f"{this.get('events_per_s', 0):,} / {this.get('rows_per_s', 0):,}", "", "-"))
        if "speedup_this_over_base" in e:
            rows.append((f"replay into DuckDB, {name}: speed-up over {d.get('base', 'base')}",
                         _f(e["speedup_this_over_base"], "{:.2f}x"), "", "-"))
    return rows


def _overhead(d: dict) -> list[Row]:
    s = d.get("server", "?")
    tr = d.get("throughput_ratio_traced_over_untraced", {})
    p99 = d.get("p99_ratio_traced_over_untraced", {})
    rows: list[Row] = [(f"{s}: throughput traced/untraced, {m}", _f(tr.get(m)), "~1.0" if m == "none" else "",
                        "-") for m in ("none", "empty", "full", "raw") if m in tr]
    rows += [(f"{s}: p99 traced/untraced, {m}", _f(p99.get(m), "{:.2f}"), "", "-") for m in ("empty", "full")
             if m in p99]
    foe = d.get("full_over_empty")
    rows.append((f"{s}: (b) full / (a) empty", _f(foe), ">= 0.95", _verdict(foe >= 0.95 if foe else None)))
    full_paired = d.get("paired_over_empty", {}).get("full")
    if full_paired:
        q1, _, q3 = full_paired["quartiles"]
        rows.append((f"{s}: (b) / (a) paired per round, median [quartiles]",
                     f"{full_paired['median']:.3f} [{q1:.2f}-{q3:.2f}]", ">= 0.95",
                     _verdict(full_paired["median"] >= 0.95)))
    if d.get("raw_over_empty"):
        rows.append((f"{s}: (c) capture-only / (a) empty", _f(d["raw_over_empty"]), "", "-"))
    rr = d.get("full_rows_over_requests") or []
    if rr:
        rows.append((f"{s}: full, rows / requests completed (worst round)", _f(min(rr), "{:.4f}"), "1.0",
                     _verdict(min(rr) >= 1.0)))
    return rows


def _drain(d: dict) -> list[Row]:
    return [(f"nghttpd, capture-only, --drain-ms {v}: throughput A/B, p99 A/B, capture µs/request",
             f"{e['throughput_ratio']:.3f}, {e['p99_ratio']:.2f}, {e['capture_cpu_us_per_request']:.2f}", "", "-")
            for v, e in d.get("drain_ms", {}).items()]


def _loss(d: dict) -> list[Row]:
    rows: list[Row] = [
        ("max load: requests completed", f"{d.get('requests_completed', 0):,}", "", "-"),
        ("max load: lost events (ring buffer)", str(d.get("lost_events")), "0", _verdict(d.get("lost_events") == 0)),
        ("max load: backlog dropped events (spool cap)", str(d.get("backlog_dropped_events")), "0",
         _verdict(d.get("backlog_dropped_events") in (0, None))),
        ("max load: rows / requests completed", _f(d.get("rows_per_completed_request"), "{:.4f}"), "1.0",
         _verdict((d.get("rows_per_completed_request") or 0) >= 1.0)),
    ]
    if "analysis_caught_up_s_after_load" in d:
        rows.append(("max load: analysis caught up after the load (s)", str(d["analysis_caught_up_s_after_load"]),
                     "", "-"))
        rows.append(("max load: largest spool backlog (MiB)", _f(d.get("max_spool_bytes", 0) / 2**20, "{:.0f}"),
                     "", "-"))
    for key, label in (("tracer_rss_kib", "capture"), ("analysis_rss_kib", "analysis")):
        rss = d.get(key) or {}
        if rss.get("max"):
            rows.append((f"max load: {label} RSS first/max/last (MiB)",
                         "/".join(_f((rss.get(k) or 0) / 1024, "{:.0f}") for k in ("first", "max", "last")),
                         "flat", "-"))
    rep = d.get("replay") or {}
    if rep:
        rows.append(("replay of that capture: events/s, rows/s", f"{rep['events_per_s']:,} / {rep['rows_per_s']:,}",
                     "", "-"))
    return rows


def _px(d: dict) -> list[Row]:
    med = d.get("median_s", {})
    return [
        (f"seed script over {d.get('rows', 0):,} rows (s)", _f(med.get("px")), "<= 1", _verdict(d.get("seed_px_under_1s"))),
        ("px / hand-written SQL", _f(d.get("px_vs_sql_ratio")), "<= 1.1", _verdict((d.get("px_vs_sql_ratio") or 9) <= 1.1)),
        ("pandas in memory / px", _f(d.get("px_vs_pandas_speedup"), "{:.1f}x"), ">= 10x",
         _verdict((d.get("px_vs_pandas_speedup") or 0) >= 10)),
        ("apptrace report (s)", _f(med.get("report")), "", "-"),
    ]


SUMMARIES: dict[str, Callable[[dict], list[Row]]] = {
    "probe_cost": _probe_cost, "ring_consume": _ring, "bpf_runtime": _bpf_runtime, "parsers_http": _parsers_http, "parsers_sql": _parsers_sql,
    "pipeline": _pipeline, "overhead_h2": _overhead, "overhead_python": _overhead, "drain_interval": _drain,
    "loss_memory_pipeline": _loss,
    "px": _px,
}


def table(results: dict[str, dict]) -> str:
    rows: list[Row] = []
    for name in BENCHES:
        if name in results:
            try:
                rows += SUMMARIES[name](results[name])
            except (KeyError, TypeError, ValueError) as exc:
                rows.append((f"{name}: cannot summarise ({exc})", "", "", "-"))
    w = max((len(r[0]) for r in rows), default=10)
    lines = [f"{'figure':<{w}}  {'value':>18}  {'goal':>9}  verdict", "-" * (w + 42)]
    lines += [f"{f:<{w}}  {v:>18}  {g:>9}  {ok}" for f, v, g, ok in rows]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs, to check the harness")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these")
    ap.add_argument("--table-only", metavar="DIR", help="print the table from DIR/<name>.json; run nothing")
    args = ap.parse_args()
    results: dict[str, dict] = {}
    if args.table_only:
        for name in BENCHES:
            p = Path(args.table_only) / f"{name}.json"
            if p.exists():
                results[name] = json.loads(p.read_text())
        print(table(results))
        return 0
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name, (full, quick) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        if name.startswith(NEEDS_ROOT) and os.geteuid() != 0:
            print(f"{name}: needs root, not run", file=sys.stderr)
            failed.append(name)
            continue
        argv = quick if args.quick else full
        cmd = [sys.executable, str(HERE / argv[0]), *argv[1:]]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed.append(name)
            continue
        try:
            results[name] = json.loads(proc.stdout)
        except json.JSONDecodeError:
            print(f"{name}: output is not JSON:\n{proc.stdout[-2000:]}", file=sys.stderr)
            failed.append(name)
            continue
        (out_dir / f"{name}.json").write_text(json.dumps(results[name], indent=2))
    print(table(results))
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
