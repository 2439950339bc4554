"""Run every benchmark under bench/ and print one table.

    sudo .venv/bin/python bench/run_all.py [--quick]

Each benchmark compares A and B in the same run and reports ratios (the machine is
noisy); absolute numbers are for the record. Raw JSON goes to bench/out/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHES = {
    "probe_cost": (["bench_probe_cost.py", "--json"], ["bench_probe_cost.py", "--json", "--rounds", "3",
                                                       "--exchanges", "5000"]),
    "parsers_http": (["bench_parsers_http.py", "--json"], ["bench_parsers_http.py", "--json", "--seconds", "1"]),
    "parsers_sql": (["bench_parsers_sql.py", "--json"], ["bench_parsers_sql.py", "--json", "--rounds", "2"]),
    "overhead_h2": (["bench_overhead.py", "--json"], ["bench_overhead.py", "--json", "--rounds", "1", "--seconds", "2"]),
    "overhead_python": (["bench_overhead.py", "--json", "--server", "python"],
                        ["bench_overhead.py", "--json", "--server", "python", "--rounds", "1", "--seconds", "2"]),
    "loss_memory_pipeline": (["bench_loss.py", "--json", "--seconds", "60"], ["bench_loss.py", "--json", "--seconds", "5"]),
    "px": (["bench_px.py", "--json"], ["bench_px.py", "--json", "--rows", "1000000", "--repeat", "2"]),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller runs, to check the harness")
    ap.add_argument("--only", action="append", choices=sorted(BENCHES), help="run only these")
    args = ap.parse_args()
    out_dir = HERE / "out"
    out_dir.mkdir(exist_ok=True)
    failed = []
    for name, (full, quick) in BENCHES.items():
        if args.only and name not in args.only:
            continue
        if name.startswith(("probe_cost", "overhead", "loss")) and os.geteuid() != 0:
            print(f"{name}: needs root, not run", file=sys.stderr)
            failed.append(name)
            continue
        cmd = [sys.executable, str(HERE / (quick if args.quick else full)[0]), *(quick if args.quick else full)[1:]]
        print(f"== {name}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            failed.append(name)
            continue
        try:
            result = json.loads(proc.stdout)
        except json.JSONDecodeError:
            print(f"{name}: output is not JSON:\n{proc.stdout[-2000:]}", file=sys.stderr)
            failed.append(name)
            continue
        (out_dir / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"\n### {name}\n{json.dumps(result, indent=2)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
