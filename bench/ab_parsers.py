"""ab_parsers: the parser benchmarks of a base revision and of the working tree, side by side in one run.

USAGE: .venv/bin/python bench/ab_parsers.py --base REV [--rounds N] [--json OUT] [--only http|sql]

Checks REV out into a temporary ``git worktree`` and runs, round after round, REV's own
``bench/bench_parsers_http.py --json`` and ``bench/bench_parsers_sql.py --json`` and the working
tree's, alternating which tree goes first, so that a noisy spell on this shared machine hurts
both alike. Per case it prints the median throughput of each tree, the ratio of the medians
(this/base: above 1 is faster), and the median of the per-round ratios, which cancels drift
between rounds. The worktree is removed at the end.

Each tree's scripts must measure that tree's parsers. The working tree's import
``apptrace.protocols``, which the editable install maps to this checkout's protocols/. A
base tree's scripts put their own folder first on sys.path: an old one imports its
top-level ``protocols`` from there, but one that imports ``apptrace.protocols`` would get
*this* checkout's parsers through the editable install. So every script runs under a
bootstrap that maps ``apptrace.protocols`` to its own tree's protocols/ and reports which
folder the parsers came from; a run that measured the wrong tree is an error.

Caveats: throughput is process CPU time (both scripts use it), yet other tenants still
disturb caches and frequency; compare ratios, not absolute figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
# (script, its flags, the result list's name key, the throughput key)
BENCHES = {
    "http": ("bench/bench_parsers_http.py", "case", "records_per_s"),
    "sql": ("bench/bench_parsers_sql.py", "scenario", "pairs_per_s"),
}
MARK = "ab_parsers: protocols from "

# Runs a bench script as __main__ with ``apptrace.protocols`` taken from TREE/protocols, and
# says on stderr, at exit, which folder the parser package was really imported from.
BOOTSTRAP = """
import atexit, runpy, sys
from importlib.util import spec_from_file_location
MARK, TREE, SCRIPT = sys.argv[1:4]

class TreeProtocols:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "apptrace.protocols":
            return spec_from_file_location(
                name, TREE + "/protocols/__init__.py", submodule_search_locations=[TREE + "/protocols"]
            )
        return None

sys.meta_path.insert(0, TreeProtocols)

def where():
    mods = [sys.modules.get(n) for n in ("apptrace.protocols", "protocols")]
    print(MARK + " ".join(sorted({m.__file__ for m in mods if m is not None})), file=sys.stderr)

atexit.register(where)
sys.argv = [SCRIPT] + sys.argv[4:]
runpy.run_path(SCRIPT, run_name="__main__")
"""


def run_bench(tree: Path, bench: str, extra: list[str]) -> dict[str, float]:
    script, key, metric = BENCHES[bench]
    cmd = [sys.executable, "-c", BOOTSTRAP, MARK, str(tree), str(tree / script), "--json", *extra]
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{script} in {tree} failed:\n{proc.stderr}")
    used = [line[len(MARK) :] for line in proc.stderr.splitlines() if line.startswith(MARK)]
    want = str(tree / "protocols") + "/"
    if not used or not all(p.startswith(want) for p in used[-1].split()):
        raise SystemExit(f"{script} in {tree} measured the parsers in {used}, not those in {want}")
    doc = json.loads(proc.stdout)
    return {r[key]: float(r[metric]) for r in doc["results"]}


def bench_args(bench: str, args: argparse.Namespace) -> list[str]:
    if bench == "http":
        return ["--seconds", str(args.http_seconds)]
    return ["--rounds", str(args.sql_rounds), "--pairs", str(args.sql_pairs)]


def compare(base_tree: Path, this_tree: Path, args: argparse.Namespace) -> list[dict]:
    benches = [args.only] if args.only else list(BENCHES)
    # (bench, case) -> {"base": [rates], "this": [rates]}
    runs: dict[tuple[str, str], dict[str, list[float]]] = {}
    for rnd in range(args.rounds):
        order = [("base", base_tree), ("this", this_tree)]
        if rnd % 2:
            order.reverse()
        for bench in benches:
            for label, tree in order:
                for case, rate in run_bench(tree, bench, bench_args(bench, args)).items():
                    runs.setdefault((bench, case), {"base": [], "this": []})[label].append(rate)
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)
    out = []
    for (bench, case), r in runs.items():
        if len(r["base"]) != len(r["this"]):
            continue  # a case only one tree has
        b, t = statistics.median(r["base"]), statistics.median(r["this"])
        ratios = [x / y for x, y in zip(r["this"], r["base"], strict=True)]
        out.append({
            "bench": bench,
            "case": case,
            "unit": BENCHES[bench][2],
            "base_median": round(b),
            "this_median": round(t),
            "ratio": round(t / b, 3),
            "round_ratio_median": round(statistics.median(ratios), 3),
            "base": [round(x) for x in r["base"]],
            "this": [round(x) for x in r["this"]],
        })  # fmt: skip
    return out


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=HERE, check=True, capture_output=True, text=True).stdout.strip()


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="examples:\n  ab_parsers.py --base fc3215e\n"
        "  ab_parsers.py --base HEAD --rounds 7 --json bench/results/ab.json\n"
        "  ab_parsers.py --base HEAD~3 --only sql --rounds 3",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--base", default="HEAD", help="revision to compare the working tree against (default HEAD)"
    )
    ap.add_argument("--rounds", type=int, default=5, help="rounds per tree (default 5)")
    ap.add_argument("--json", metavar="OUT", type=Path, help="also write the result here")
    ap.add_argument("--only", choices=list(BENCHES), help="run only one of the two benchmarks")
    ap.add_argument(
        "--http-seconds", type=float, default=2.0, help="bench_parsers_http.py --seconds (default 2)"
    )
    ap.add_argument("--sql-rounds", type=int, default=3, help="bench_parsers_sql.py --rounds (default 3)")
    ap.add_argument(
        "--sql-pairs", type=int, default=50_000, help="bench_parsers_sql.py --pairs (default 50000)"
    )
    args = ap.parse_args()

    base_commit = git("rev-parse", "--verify", f"{args.base}^{{commit}}")
    tmp = Path(tempfile.mkdtemp(prefix="ab_parsers-"))
    base_tree = tmp / "base"
    git("worktree", "add", "--detach", str(base_tree), base_commit)
    try:
        rows = compare(base_tree, HERE, args)
    finally:
        git("worktree", "remove", "--force", str(base_tree))
        tmp.rmdir()

    w = max(len(r["case"]) for r in rows)
    print(f"base {args.base} ({base_commit[:10]}) vs working tree at {git('rev-parse', '--short', 'HEAD')}, "
          f"{args.rounds} rounds; figures are medians of records (http) or pairs (sql) per second")  # fmt: skip
    print(f"{'case':<{w}}  {'base':>9}  {'this':>9}  {'this/base':>9}  {'per-round':>9}")
    for r in rows:
        print(f"{r['case']:<{w}}  {r['base_median']:>9}  {r['this_median']:>9}  {r['ratio']:>9.3f}  "
              f"{r['round_ratio_median']:>9.3f}")  # fmt: skip
    if args.json:
        doc = {
            "date": datetime.date.today().isoformat(),
            "base": args.base,
            "base_commit": base_commit,
            "this_head": git("rev-parse", "HEAD"),
            "this_dirty_protocols": bool(git("status", "--porcelain", "--", "protocols")),
            "rounds": args.rounds,
            "python": sys.version.split()[0],
            "settings": {
                "http_seconds": args.http_seconds,
                "sql_rounds": args.sql_rounds,
                "sql_pairs": args.sql_pairs,
            },
            "results": rows,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
