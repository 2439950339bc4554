"""Cost per SSL call of apptrace's probes, against empty probes on the same functions, same run.

A worker process runs HTTP/1.1 request/response exchanges between two in-memory TLS
endpoints (Python ssl.SSLObject over MemoryBIO: SSL_write_ex/SSL_read_ex, no sockets),
so the time per exchange is the TLS work plus whatever the probes add. Modes, alternated
round by round in shuffled order so machine noise hits all of them alike:

  none   no probes
  empty  empty uprobe + uretprobe on SSL_read[_ex]/SSL_write[_ex] (the floor: the trap itself)
  raw    `apptrace trace --pid WORKER --capture-only --raw FILE`: record raw events, no parsing
  full   `apptrace trace --pid WORKER`: capture, parsing, DuckDB storage, redaction

Reports µs per SSL call added by each mode and the ratio full/empty of the added cost.

    sudo .venv/bin/python bench/bench_probe_cost.py [--rounds 5] [--exchanges 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_overhead import start_trace  # noqa: E402

CALLS_PER_EXCHANGE = 4  # client write + server read, server write + client read

WORKER = r"""
import ssl, sys, time
sys.path.insert(0, sys.argv[1])
from apptrace.demo.server import make_certs
certs = make_certs(sys.argv[2])
sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); sctx.load_cert_chain(certs["server"], certs["server-key"])
cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); cctx.load_verify_locations(certs["ca"])
c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
client = cctx.wrap_bio(c_in, c_out, server_hostname="localhost")
server = sctx.wrap_bio(s_in, s_out, server_side=True)
def pump():
    s_in.write(c_out.read()); c_in.write(s_out.read())
for _ in range(20):
    for end in (client, server):
        try: end.do_handshake()
        except ssl.SSLWantReadError: pass
    pump()
REQ = b"GET /bench HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer x\r\n\r\n"
RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
print("ready", flush=True)
for line in sys.stdin:
    n = int(line)
    t = time.perf_counter_ns()
    for _ in range(n):
        client.write(REQ); pump(); server.read(4096)
        server.write(RESP); pump(); client.read(4096)
    print(time.perf_counter_ns() - t, flush=True)
"""

EMPTY_PROBES = r"""
int enter(struct pt_regs *ctx) { return 0; }
int leave(struct pt_regs *ctx) { return 0; }
"""


def libssl_path() -> str:
    import ssl  # noqa: F401 - maps libssl into this process

    with open("/proc/self/maps") as f:
        for line in f:
            if "libssl.so" in line:
                return line.split()[-1]
    raise SystemExit("libssl not mapped")


class Worker:
    def __init__(self, tmp: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", WORKER, str(ROOT), tmp], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "ready"

    def run(self, n: int) -> float:
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline()) / n  # ns per exchange

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait()


def attach_empty(pid: int):
    from bcc import BPF

    b = BPF(text=EMPTY_PROBES)
    lib = libssl_path()
    for sym in ("SSL_write", "SSL_read", "SSL_write_ex", "SSL_read_ex"):
        b.attach_uprobe(name=lib, sym=sym, fn_name="enter", pid=pid)
        b.attach_uretprobe(name=lib, sym=sym, fn_name="leave", pid=pid)
    return b


def start_tracer(pid: int, db: str, raw_only: bool = False) -> subprocess.Popen:
    return start_trace(pid, *(["--capture-only", "--raw", db + ".raw"] if raw_only else ["--db", db]))


def stop_tracer(p: subprocess.Popen) -> str:
    p.send_signal(2)
    _, err = p.communicate(timeout=60)
    return err


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--exchanges", type=int, default=20000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root")
    results: dict[str, list[float]] = {"none": [], "empty": [], "raw": [], "full": []}
    summary_lines = []
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(tmp)
        worker.run(2000)  # warm up
        for r in range(args.rounds):
            modes = list(results)
            random.shuffle(modes)
            for mode in modes:
                if mode == "empty":
                    b = attach_empty(worker.proc.pid)
                    results[mode].append(worker.run(args.exchanges))
                    b.cleanup()
                elif mode in ("full", "raw"):
                    t = start_tracer(worker.proc.pid, os.path.join(tmp, f"bench{r}.duckdb"), raw_only=mode == "raw")
                    results[mode].append(worker.run(args.exchanges))
                    summary_lines.append(stop_tracer(t).strip().splitlines()[-1])
                else:
                    results[mode].append(worker.run(args.exchanges))
        worker.close()
    med = {m: statistics.median(v) for m, v in results.items()}
    per_call = {m: (med[m] - med["none"]) / CALLS_PER_EXCHANGE / 1000 for m in ("empty", "raw", "full")}
    out = {
        "ns_per_exchange_median": med,
        "added_us_per_ssl_call": per_call,
        "full_over_empty_added_cost": per_call["full"] / per_call["empty"] if per_call["empty"] > 0 else None,
        "throughput_ratio_full_vs_empty": med["empty"] / med["full"],
        "throughput_ratio_raw_vs_empty": med["empty"] / med["raw"],
        "throughput_ratio_empty_vs_none": med["none"] / med["empty"],
        "rounds": args.rounds,
        "exchanges_per_round": args.exchanges,
        "tracer_last_summary": summary_lines[-1] if summary_lines else "",
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{'mode':6} {'µs/exchange':>12} {'added µs/SSL call':>18}")
        for m in ("none", "empty", "raw", "full"):
            added = per_call.get(m, 0.0)
            print(f"{m:6} {med[m] / 1000:12.2f} {added:18.2f}")
        print(f"full/empty added cost per call: {out['full_over_empty_added_cost']:.2f}x; "
              f"throughput vs empty probes: raw {out['throughput_ratio_raw_vs_empty']:.3f}, "
              f"full {out['throughput_ratio_full_vs_empty']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
