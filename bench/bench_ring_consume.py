"""User-space CPU per ring-buffer record: BCC's callback consumer against apptrace.capture.ringbuf.

A BPF program on the ``syscalls:sys_enter_getppid`` tracepoint writes one fixed-size
record per call from a child process (filtered by its pid) into a ring large enough to
hold all of them. The child fills the ring, exits, and then this process drains it with
one consumer while its own thread's CPU time is measured (getrusage(RUSAGE_THREAD)).
Each round fills and drains once per consumer, alternating which goes first:

  bcc   open_ring_buffer + ring_buffer_consume(): libbpf calls a ctypes callback per
        record, which copies it with ctypes.string_at (what Probes did before)
  mmap  apptrace.capture.ringbuf.RingReader.drain(): the ring mapped into this process

Both hand each record's bytes to the same callback as the tracer's (append to a batch,
stop the drain at 4096 records, then the batch is taken), and both check that records
arrive complete and in order. Filling is not measured. Reports µs of user (and system)
CPU per record, the median over rounds, and bcc/mmap ratios.

With ``--tracer N``, also the whole capture process: ``apptrace trace --capture-only --raw``
on a worker doing N in-memory TLS exchanges (bench_probe_cost's worker, 4 SSL calls each),
once with each consumer, in rotating order: ``bcc`` (``apptrace.capture.ringbuf.SUPPORTED`` forced
off), ``mmap`` (our reader, one record at a time, as before runs) and ``runs`` (the tracer as
shipped: unflagged data records copied in runs, ``RingReader.drain_runs``); reports the
tracer's CPU (user+sys, /proc/PID/stat) over the load, per captured event.

    sudo .venv/bin/python bench/bench_ring_consume.py [--rounds 7] [--records 100000] [--size 256]
                                                      [--tracer 30000] [--json]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from apptrace.capture import ringbuf  # noqa: E402

BATCH = 4096  # apptrace.capture.tracer.MAX_BATCH: records taken per drain before they are processed

BPF_TEXT = r"""
#include <uapi/linux/ptrace.h>
#define SIZE __SIZE__
struct rec { u64 seq; u8 pad[SIZE - 8]; };
BPF_RINGBUF_OUTPUT(rb, __PAGES__);
BPF_ARRAY(target, u32, 1);
BPF_ARRAY(counts, u64, 2);  // [0] written, [1] dropped
BPF_PERCPU_ARRAY(scratch, struct rec, 1);

TRACEPOINT_PROBE(syscalls, sys_enter_getppid) {
    u32 zero = 0, one = 1;
    u32 *t = target.lookup(&zero);
    if (!t || *t != (bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct rec *r = scratch.lookup(&zero);
    u64 *written = counts.lookup(&zero), *dropped = counts.lookup(&one);
    if (!r || !written || !dropped)
        return 0;
    r->seq = *written;
    // No wake-ups: nobody waits while the ring fills, and wake-ups are not what is measured.
    if (rb.ringbuf_output(r, sizeof(*r), BPF_RB_NO_WAKEUP) == 0)
        *written += 1;
    else
        *dropped += 1;
    return 0;
}
"""


class Bench:
    def __init__(self, records: int, size: int) -> None:
        from bcc import BPF

        if size < 16 or size % 8:
            raise SystemExit("--size must be a multiple of 8, at least 16")
        need = records * (size + 8)
        pages = 1
        while pages * 4096 < need:
            pages *= 2
        self.records = records
        self.size = size
        self.bpf = BPF(text=BPF_TEXT.replace("__SIZE__", str(size)).replace("__PAGES__", str(pages)))
        self.ring_bytes = pages * 4096
        table = self.bpf["rb"]
        self.reader = ringbuf.RingReader(table.map_fd, self.ring_bytes)
        self._on_event: Callable[[bytes], bool] = lambda buf: False

        def on_ring(ctx, data, size):  # noqa: ARG001 - BCC's callback signature
            # The same wrapper Probes used around the tracer's callback.
            return -1 if self._on_event(ctypes.string_at(data, size)) else 0

        table.open_ring_buffer(on_ring)

    def fill(self) -> None:
        counts = self.bpf["counts"]
        for i in range(2):
            counts[ctypes.c_int(i)] = ctypes.c_uint64(0)
        code = f"import os, sys\nsys.stdin.readline()\nfor _ in range({self.records}):\n    os.getppid()\n"
        child = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE)
        self.bpf["target"][ctypes.c_int(0)] = ctypes.c_uint32(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"go\n")
        child.stdin.close()
        if child.wait() != 0:
            raise SystemExit("filler process failed")
        written, dropped = counts[ctypes.c_int(0)].value, counts[ctypes.c_int(1)].value
        if written != self.records or dropped:
            raise SystemExit(f"ring filled with {written} records, {dropped} dropped; expected {self.records}")

    def drain(self, mode: str) -> dict[str, float]:
        batch: list[bytes] = []
        received = 0

        def on_event(buf: bytes) -> bool:
            batch.append(buf)
            return len(batch) >= BATCH

        def take() -> None:
            nonlocal received, batch
            if not batch:
                return
            first = int.from_bytes(batch[0][:8], "little")
            last = int.from_bytes(batch[-1][:8], "little")
            if first != received or last != received + len(batch) - 1 or len(batch[-1]) != self.size:
                raise SystemExit(f"{mode}: records out of order or damaged near record {received}")
            received += len(batch)
            batch = []

        self._on_event = on_event
        gc.collect()
        r0 = resource.getrusage(resource.RUSAGE_THREAD)
        w0 = time.perf_counter()
        if mode == "bcc":
            while received < self.records:
                self.bpf.ring_buffer_consume()
                take()
        else:
            while received < self.records:
                self.reader.drain(on_event)
                take()
        w1 = time.perf_counter()
        r1 = resource.getrusage(resource.RUSAGE_THREAD)
        if self.reader.pending():
            raise SystemExit(f"{mode}: the ring is not empty after the drain")
        n = self.records
        return {
            "user_us": (r1.ru_utime - r0.ru_utime) * 1e6 / n,
            "sys_us": (r1.ru_stime - r0.ru_stime) * 1e6 / n,
            "wall_us": (w1 - w0) * 1e6 / n,
        }

    def close(self) -> None:
        self.reader.close()
        self.bpf.cleanup()


# Runs the CLI with the consumer chosen: Probes uses RingReader only when SUPPORTED, and
# drain_runs falls back to drain (every record through the per-record path) in mode mmap.
_TRACER = ("import sys; import apptrace.capture.ringbuf as r; mode = sys.argv.pop(1); r.SUPPORTED = mode != 'bcc'\n"
           "if mode == 'mmap':\n"
           "    r.RingReader.drain_runs = lambda self, _t, _f, _run, on_record, *a, **k: self.drain(on_record)\n"
           "from apptrace.cli import main; sys.exit(main())")
TRACER_MODES = ("bcc", "mmap", "runs")


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tracer_round(mode: str, worker, exchanges: int, tmp: str) -> float:
    """The capture process's CPU µs per event while it records ``exchanges`` exchanges."""
    raw = os.path.join(tmp, f"{mode}.raw")
    p = subprocess.Popen([sys.executable, "-c", _TRACER, mode, "trace", "--pid", str(worker.proc.pid), "--quiet",
                          "--capture-only", "--raw", raw], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert p.stderr is not None
    for line in p.stderr:
        if line.startswith("apptrace: tracing"):
            break
    else:
        raise SystemExit(f"tracer ({mode}) failed to start")
    time.sleep(0.5)  # start-up (BCC's compiler) is not what is measured
    c0 = _cpu_s(p.pid)
    worker.run(exchanges)
    time.sleep(0.5)  # let it drain what is left
    c1 = _cpu_s(p.pid)
    p.send_signal(2)
    err = p.communicate(timeout=60)[1]
    os.unlink(raw)
    events = exchanges * 4
    for line in err.splitlines():
        if line.startswith("apptrace: ") and " events, " in line:
            events = int(line.split()[1])
    return (c1 - c0) * 1e6 / events


def run_tracer(rounds: int, exchanges: int, verbose: bool) -> dict[str, list[float]]:
    from bench.bench_probe_cost import Worker

    out: dict[str, list[float]] = {mode: [] for mode in TRACER_MODES}
    with tempfile.TemporaryDirectory() as tmp:
        worker = Worker(tmp)
        try:
            for r in range(rounds):
                k = r % len(TRACER_MODES)
                for mode in TRACER_MODES[k:] + TRACER_MODES[:k]:
                    out[mode].append(tracer_round(mode, worker, exchanges, tmp))
                    if verbose:
                        print(f"tracer round {r + 1} {mode:4}: {out[mode][-1]:.2f} µs CPU/event", file=sys.stderr)
        finally:
            worker.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--records", type=int, default=100_000, help="records per drain")
    ap.add_argument("--size", type=int, default=256, help="bytes per record (multiple of 8)")
    ap.add_argument("--tracer", type=int, default=0, metavar="EXCHANGES",
                    help="also measure apptrace trace --capture-only under a TLS load of this many exchanges")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not ringbuf.SUPPORTED:
        raise SystemExit("apptrace.capture.ringbuf's consumer runs on x86-64 only")
    bench = Bench(args.records, args.size)
    runs: dict[str, list[dict[str, float]]] = {"bcc": [], "mmap": []}
    try:
        for r in range(args.rounds):
            for mode in ("bcc", "mmap") if r % 2 == 0 else ("mmap", "bcc"):
                bench.fill()
                runs[mode].append(bench.drain(mode))
                if not args.json:
                    m = runs[mode][-1]
                    print(f"round {r + 1} {mode:4}: user {m['user_us']:.3f} µs/record, sys {m['sys_us']:.3f}",
                          file=sys.stderr)
    finally:
        bench.close()

    def med(mode: str, key: str) -> float:
        return statistics.median(m[key] for m in runs[mode])

    summary = {mode: {key: med(mode, key) for key in ("user_us", "sys_us", "wall_us")} for mode in runs}
    ratios = [b["user_us"] / m["user_us"] for b, m in zip(runs["bcc"], runs["mmap"], strict=True)]
    out = {
        "benchmark": "ring_consume",
        "date": time.strftime("%Y-%m-%d"),
        "records": args.records,
        "record_bytes": args.size,
        "ring_bytes": bench.ring_bytes,
        "rounds": args.rounds,
        "median": summary,
        "user_ratio_bcc_over_mmap": statistics.median(ratios),
        "user_ratio_per_round": ratios,
        "total_ratio_bcc_over_mmap": (summary["bcc"]["user_us"] + summary["bcc"]["sys_us"])
        / (summary["mmap"]["user_us"] + summary["mmap"]["sys_us"]),
        "runs": runs,
    }
    tracer = run_tracer(args.rounds, args.tracer, not args.json) if args.tracer else None
    if tracer:
        out["tracer"] = {
            "exchanges": args.tracer,
            "cpu_us_per_event": tracer,
            "median": {m: statistics.median(v) for m, v in tracer.items()},
            "ratio_bcc_over_mmap": statistics.median(b / m for b, m in zip(tracer["bcc"], tracer["mmap"],
                                                                          strict=True)),
            "ratio_mmap_over_runs": statistics.median(m / r for m, r in zip(tracer["mmap"], tracer["runs"],
                                                                           strict=True)),
        }
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"\n{args.records} records of {args.size} bytes per drain, median of {args.rounds} alternated rounds")
    print(f"{'consumer':10} {'user µs/rec':>12} {'sys µs/rec':>11} {'wall µs/rec':>12}")
    for mode, label in (("bcc", "bcc"), ("mmap", "mmap")):
        s = summary[mode]
        print(f"{label:10} {s['user_us']:12.3f} {s['sys_us']:11.3f} {s['wall_us']:12.3f}")
    print(f"user CPU ratio bcc/mmap: {out['user_ratio_bcc_over_mmap']:.2f}× (median of per-round ratios); "
          f"user+sys: {out['total_ratio_bcc_over_mmap']:.2f}×")
    if tracer:
        t = out["tracer"]
        print(f"\napptrace trace --capture-only, {args.tracer} exchanges: CPU µs per event, median of {args.rounds}")
        print(f"bcc {t['median']['bcc']:.2f}, mmap {t['median']['mmap']:.2f}, runs {t['median']['runs']:.2f}; "
              f"ratio bcc/mmap {t['ratio_bcc_over_mmap']:.2f}×, mmap/runs {t['ratio_mmap_over_runs']:.2f}× "
              "(medians of per-round ratios)")


if __name__ == "__main__":
    main()
