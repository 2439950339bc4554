"""``apptrace demo``: trace real local TLS traffic for a few seconds, then show what was captured.

Starts a real HTTPS server (Python ssl), the tracer, and real clients (curl with
OpenSSL, node with its static OpenSSL), then prints the report and one shipped
script's output from the DuckDB file the tracer wrote.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from apptrace.demo.server import free_port, make_certs, wait_port


def _say(msg: str) -> None:
    print(f"demo: {msg}", file=sys.stderr, flush=True)


def _traffic(port: int, ca: str) -> int:
    base = f"https://127.0.0.1:{port}"
    n = 0
    curl = shutil.which("curl")
    if curl:
        paths = ["/hello"] * 20 + ["/sleep?ms=50"] * 10 + ["/status/500"] * 3 + ["/status/404"] * 2
        for path in paths:
            subprocess.run([curl, "-s", "-o", "/dev/null", "--cacert", ca, "-H", "Authorization: Bearer demo-secret",
                            base + path], check=False)
            n += 1
        subprocess.run([curl, "-s", "-o", "/dev/null", "--cacert", ca, "--data-binary", '{"order": 42}',
                        "-H", "Content-Type: application/json", base + "/echo"], check=False)
        n += 1
    node = shutil.which("node")
    if node:
        script = (
            "const https=require('https');let left=10;"
            f"const go=()=>https.get({{host:'127.0.0.1',port:{port},path:'/sleep?ms=20',rejectUnauthorized:false}},"
            "r=>{r.resume();r.on('end',()=>{if(--left>0)go();else process.exit(0)})});go();"
        )
        subprocess.run([node, "-e", script], check=False, timeout=60)
        n += 10
    return n


def run_demo(db: str) -> int:
    if os.geteuid() != 0:
        print("apptrace: the demo traces with eBPF and needs root; run it with sudo", file=sys.stderr)
        return 1
    for suffix in ("", ".wal"):
        if os.path.exists(db + suffix):
            os.unlink(db + suffix)
    apptrace = [sys.executable, "-m", "apptrace.cli"]
    with tempfile.TemporaryDirectory(prefix="apptrace-demo-") as tmp:
        certs = make_certs(tmp)
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "apptrace.demo.server", "--port", str(port),
                                   "--cert", certs["server"], "--key", certs["server-key"]],
                                  stdout=subprocess.DEVNULL)
        tracer = None
        try:
            wait_port(port)
            _say(f"HTTPS server (Python ssl) on 127.0.0.1:{port}, pid {server.pid}")
            # Only what the demo starts: its server by pid, its clients (started later) by name.
            tracer = subprocess.Popen([*apptrace, "trace", "--db", db, "--quiet", "--pid", str(server.pid),
                                       "--comm", "curl", "--comm", "node"], stderr=subprocess.PIPE, text=True)
            assert tracer.stderr is not None
            for line in tracer.stderr:
                print(line, end="", file=sys.stderr)
                if line.startswith("apptrace: tracing"):
                    break
            if tracer.poll() is not None:
                _say("the tracer failed to start; run 'apptrace doctor'")
                return 1
            _say("sending requests with curl (OpenSSL) and node (static OpenSSL)...")
            n = _traffic(port, certs["ca"])
            time.sleep(1.0)
            tracer.send_signal(signal.SIGINT)
            _, rest = tracer.communicate(timeout=60)
            print(rest or "", end="", file=sys.stderr)
            _say(f"sent {n} requests; the tracer stopped with exit code {tracer.returncode}")
        finally:
            server.terminate()
            server.wait(timeout=10)
            if tracer is not None and tracer.poll() is None:
                tracer.kill()
    if tracer is None or tracer.returncode != 0:
        return 1
    print(f"\n== apptrace report --db {db}", flush=True)
    rc = subprocess.run([*apptrace, "report", "--db", db]).returncode
    print(f"\n== apptrace run slow_requests --db {db}", flush=True)
    rc |= subprocess.run([*apptrace, "run", "slow_requests", "--db", db]).returncode
    print(f"\n== apptrace sql (the redacted Authorization header, as stored) --db {db}", flush=True)
    rc |= subprocess.run([*apptrace, "sql", "--db", db,
                          "SELECT service, trace_role, req_path, resp_status, "
                          "json_extract_string(req_headers, '$.authorization') AS authorization "
                          "FROM http_events WHERE req_path = '/hello' LIMIT 2"]).returncode
    print(f"\nDone. Query it yourself: .venv/bin/apptrace sql --db {db} \"SELECT * FROM http_events LIMIT 5\"")
    return rc
