"""`apptrace trace --metrics`: scraped by a real Prometheus, its p99 agrees with DuckDB's over the same requests."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from bisect import bisect_left

import pytest

from apptrace.analysis.metrics import DURATION_BUCKETS, MAX_SERIES, OTHER, RequestMetrics, parse_listen
from apptrace.demo.server import free_port, wait_port
from tests.conftest import APPTRACE, ROOT, read, require_tool
from tests.test_capture import curl

pytestmark = pytest.mark.ebpf


def _prometheus(tmp_path, target_port: int) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n"
                   f"  - job_name: apptrace\n    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
    proc = subprocess.Popen([require_tool("prometheus"), f"--config.file={cfg}",
                             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, timeout=60)
    return proc, port


def _query(port: int, promql: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    assert body["status"] == "success", body
    return body["data"]["result"]


def _value(port: int, promql: str) -> float | None:
    result = _query(port, promql)
    return float(result[0]["value"][1]) if result else None


def test_prometheus_p99_agrees_with_duckdb_within_a_bucket(ebpf, https_server, tmp_path):  # noqa: ARG001
    srv = https_server()
    metrics_port = free_port()
    db = str(tmp_path / "m.duckdb")
    tracer = subprocess.Popen([*APPTRACE, "trace", "--pid", str(srv.pid), "--db", db, "--quiet",
                               "--metrics", f"127.0.0.1:{metrics_port}"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    prom = None
    try:
        for line in tracer.stderr:
            if line.startswith("apptrace: tracing"):
                break
        wait_port(metrics_port, timeout=30)
        prom, prom_port = _prometheus(tmp_path, metrics_port)
        # latencies spread over the buckets: 0, 5, 10 … 145 ms, twice, and 3 requests with a query string
        curl(srv.port, "/sleep?ms=[0-145:5]", "-o", "/dev/null")
        curl(srv.port, "/sleep?ms=[0-145:5]", "-o", "/dev/null")
        curl(srv.port, "/sleep?ms=[1-3]&token=x", "-o", "/dev/null")
        expected = 63
        selector = 'http_server_request_duration_seconds_count{http_route="/sleep",http_request_method="GET"}'
        # analysis runs under SCHED_IDLE: on a busy machine its rows come late, so the wait is long
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (_value(prom_port, selector) or 0) < expected:
            time.sleep(0.5)
        assert _value(prom_port, selector) == expected
        series = _query(prom_port, selector)
        assert len(series) == 1, series  # one route for every ?ms=…: the query string is no label
        labels = series[0]["metric"]
        assert labels["http_response_status_code"] == "200" and labels["service_name"] == "apptrace.demo.server"
        prom_p99 = _value(prom_port, "histogram_quantile(0.99, sum by (le) "
                                     '(http_server_request_duration_seconds_bucket{http_route="/sleep"}))')
        health = {name: _value(prom_port, name) for name in (
            "apptrace_lost_events_total", "apptrace_probes_attached", "apptrace_processes_traced",
            "sum(apptrace_bpf_runs_total)", "apptrace_spool_backlog_bytes", "apptrace_analysis_lag_seconds",
            "apptrace_ring_buffer_fill_ratio", "apptrace_parse_errors_total", "apptrace_gap_bytes_total")}
    finally:
        tracer.send_signal(signal.SIGINT)
        tracer.wait(timeout=60)
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=30)
    assert tracer.returncode == 0, tracer.stderr.read()
    (duck_p99_ns,) = read(db, "SELECT quantile_cont(latency, 0.99) FROM http_events "
                              f"WHERE trace_role = 'server' AND pid = {srv.pid}")[0]
    bucket = bisect_left(DURATION_BUCKETS, duck_p99_ns / 1e9)
    prom_bucket = bisect_left(DURATION_BUCKETS, prom_p99)
    assert abs(bucket - prom_bucket) <= 1, (duck_p99_ns / 1e9, prom_p99)
    assert health["apptrace_lost_events_total"] == 0 and health["apptrace_parse_errors_total"] == 0
    assert health["apptrace_probes_attached"] > 0 and health["apptrace_processes_traced"] >= 1
    assert health["sum(apptrace_bpf_runs_total)"] > 0  # run counts, with BPF statistics on while metrics are
    for name in ("apptrace_spool_backlog_bytes", "apptrace_analysis_lag_seconds", "apptrace_ring_buffer_fill_ratio",
                 "apptrace_gap_bytes_total"):
        assert health[name] is not None and health[name] >= 0, name


def test_bad_or_taken_metrics_address_is_refused_before_probes(ebpf, tmp_path):  # noqa: ARG001
    proc = subprocess.run([*APPTRACE, "trace", "--metrics", "nine", "--db", str(tmp_path / "a.duckdb")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("apptrace: --metrics: expected ADDR:PORT"), proc
    held = subprocess.Popen(["python3", "-c", "import socket, time; s = socket.socket(); "
                             "s.bind(('127.0.0.1', 0)); s.listen(); print(s.getsockname()[1], flush=True); "
                             "time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        port = int(held.stdout.readline())
        proc = subprocess.run([*APPTRACE, "trace", "--metrics", f"127.0.0.1:{port}", "--db",
                               str(tmp_path / "b.duckdb")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        held.kill()
        held.wait()
    assert proc.returncode != 0 and f"--metrics 127.0.0.1:{port}" in proc.stderr, proc.stderr
    assert "apptrace: tracing" not in proc.stderr
    with open("/sys/kernel/tracing/uprobe_events") as f:
        assert "apptrace" not in f.read()


def test_series_are_capped_and_the_cap_is_counted():
    m = RequestMetrics()
    rows = [dict(trace_role="server", latency=10**6, service="s", req_method="GET", req_route=f"/r{i}",
                 resp_status=200, req_body_size=0, resp_body_size=10) for i in range(MAX_SERIES + 50)]
    m.observe("http_events", rows)
    hist = m.http["server"]
    assert len(hist.series) == MAX_SERIES + 1  # the cap, and one _other series
    assert hist.series[("GET", "200", OTHER, "s")][-1] == 0 and sum(hist.series[("GET", "200", OTHER, "s")]) == 50
    assert hist.capped == 50
    capped = {s.labels["metric"]: s.value for s in m.capped().samples}
    assert capped["http_server_request_duration_seconds"] == 50


def test_listen_addresses():
    assert parse_listen("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_listen(":9464") == ("0.0.0.0", 9464)
    assert parse_listen("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:0", "host:70000", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)
