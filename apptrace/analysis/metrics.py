"""Prometheus metrics (`apptrace trace --metrics ADDR:PORT`): request histograms and the tracer's own health.

Request metrics are named as OpenTelemetry's semantic conventions, exported to Prometheus the way OpenTelemetry's
eBPF instrumentation exports them, so dashboards built for those work unchanged:

    http_server_request_duration_seconds / http_client_request_duration_seconds
        (http_request_method, http_response_status_code, http_route, service_name)
    http_{server,client}_{request,response}_body_size_bytes   (the same labels)
    rpc_server_call_duration_seconds / rpc_client_call_duration_seconds
        (rpc_system="grpc", rpc_method, rpc_grpc_status_code, service_name)
    db_client_operation_duration_seconds   (db_system, db_operation, service_name)

Routes, not paths, are labels (apptrace.analysis.routes), and each family holds at most ``MAX_SERIES`` label sets:
past that, the route/method/operation label reads ``_other`` and ``apptrace_metrics_series_capped_total`` counts
the observations folded so. Histograms are kept here as plain bucket counts (an observation is a bisect and
three additions); prometheus_client only writes them out when Prometheus scrapes.

The health metrics come from the analysis process's own counters and from what capture writes to the spool's
health file once a second (ring-buffer fill, probes, processes, kernel losses, BPF run time per program).
"""

from __future__ import annotations

import json
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from apptrace.analysis.routes import db_operation
from apptrace.contract.spool import HEALTH

#: seconds: OpenTelemetry's recommended boundaries for http.server.request.duration
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: bytes
SIZE_BUCKETS = (0, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 65536, 1 << 20)
MAX_SERIES = 2000
OTHER = "_other"

HTTP_LABELS = ("http_request_method", "http_response_status_code", "http_route", "service_name")
RPC_LABELS = ("rpc_system", "rpc_method", "rpc_grpc_status_code", "service_name")
DB_LABELS = ("db_system", "db_operation", "service_name")
DB_SYSTEM = {"mysql_events": "mysql", "pgsql_events": "postgresql"}


def parse_listen(text: str) -> tuple[str, int]:
    """'ADDR:PORT' or ':PORT' (all addresses) → (addr, port); ValueError in the user's words."""
    addr, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDR:PORT, e.g. 127.0.0.1:9464 or :9464, not {text!r}")
    return addr.strip("[]") or "0.0.0.0", int(port)


class Histogram:
    """One metric family: label values → [bucket counts…, +Inf count], sum."""

    __slots__ = ("name", "help", "labels", "bounds", "series", "sums", "capped", "cap_label")

    def __init__(self, name: str, help_: str, labels: tuple[str, ...], bounds: tuple[float, ...],
                 cap_label: int) -> None:
        self.name, self.help, self.labels, self.bounds = name, help_, labels, bounds
        self.series: dict[tuple[str, ...], list[int]] = {}
        self.sums: dict[tuple[str, ...], float] = {}
        self.capped = 0
        self.cap_label = cap_label  # the label folded to _other past MAX_SERIES

    def observe(self, key: tuple[str, ...], value: float) -> None:
        counts = self.series.get(key)
        if counts is None:
            if len(self.series) >= MAX_SERIES:
                self.capped += 1
                key = (*key[:self.cap_label], OTHER, *key[self.cap_label + 1:])
                counts = self.series.get(key)
            if counts is None:
                counts = self.series[key] = [0] * (len(self.bounds) + 1)
                self.sums[key] = 0.0
        counts[bisect_left(self.bounds, value)] += 1
        self.sums[key] += value

    def family(self) -> HistogramMetricFamily:
        fam = HistogramMetricFamily(self.name, self.help, labels=list(self.labels))
        for key, counts in list(self.series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip((*map(_le, self.bounds), "+Inf"), counts, strict=True):
                cumulative += n
                buckets.append((bound, cumulative))
            fam.add_metric(list(key), buckets, self.sums[key])
        return fam


def _le(bound: float) -> str:
    return repr(float(bound))


class RequestMetrics:
    """Rows in, histograms out."""

    def __init__(self) -> None:
        def h(name: str, help_: str, labels: tuple[str, ...], bounds: tuple[float, ...], cap: int) -> Histogram:
            return Histogram(name, help_, labels, bounds, cap)

        self.http = {role: h(f"http_{role}_request_duration_seconds",
                             f"Duration of HTTP {role} requests, first request byte to last response byte.",
                             HTTP_LABELS, DURATION_BUCKETS, 2) for role in ("server", "client")}
        self.http_req_size = {role: h(f"http_{role}_request_body_size_bytes", f"Size of HTTP {role} request bodies.",
                                      HTTP_LABELS, SIZE_BUCKETS, 2) for role in ("server", "client")}
        self.http_resp_size = {role: h(f"http_{role}_response_body_size_bytes",
                                       f"Size of HTTP {role} response bodies.", HTTP_LABELS, SIZE_BUCKETS, 2)
                               for role in ("server", "client")}
        self.rpc = {role: h(f"rpc_{role}_call_duration_seconds", f"Duration of gRPC {role} calls.", RPC_LABELS,
                            DURATION_BUCKETS, 1) for role in ("server", "client")}
        self.db = h("db_client_operation_duration_seconds", "Duration of database client operations.", DB_LABELS,
                    DURATION_BUCKETS, 1)
        self.lock = threading.Lock()  # the scrape runs in the HTTP server's thread

    def histograms(self) -> Iterator[Histogram]:
        for group in (self.http, self.http_req_size, self.http_resp_size, self.rpc):
            yield from group.values()
        yield self.db

    def observe(self, table: str, rows: list[dict]) -> None:
        with self.lock:
            if table == "http_events":
                self._http(rows)
            elif table in DB_SYSTEM:
                self._db(DB_SYSTEM[table], rows)

    def _http(self, rows: list[dict]) -> None:
        for r in rows:
            role = r.get("trace_role")
            latency = r.get("latency")
            if role not in ("server", "client") or latency is None:
                continue  # no response (yet): no duration to count
            service = r.get("service") or ""
            route = r.get("req_route") or ""
            grpc = r.get("grpc_status")
            if grpc is not None:
                self.rpc[role].observe(("grpc", route, str(grpc), service), latency / 1e9)
                continue
            status = r.get("resp_status")
            key = (r.get("req_method") or "", "" if status is None else str(status), route, service)
            self.http[role].observe(key, latency / 1e9)
            self.http_req_size[role].observe(key, r.get("req_body_size") or 0)
            self.http_resp_size[role].observe(key, r.get("resp_body_size") or 0)

    def _db(self, system: str, rows: list[dict]) -> None:
        for r in rows:
            latency = r.get("latency")
            if r.get("trace_role") != "client" or latency is None:
                continue
            self.db.observe((system, db_operation(r), r.get("service") or ""), latency / 1e9)

    def capped(self) -> CounterMetricFamily:
        fam = CounterMetricFamily("apptrace_metrics_series_capped", "Observations whose route, method or "
                                  f"operation label was folded to {OTHER}: the family had {MAX_SERIES} series.",
                                  labels=["metric"])
        for hist in self.histograms():
            fam.add_metric([hist.name], hist.capped)
        return fam


class Health:
    """The tracer's own state, read at scrape time: analysis's counters and capture's health file."""

    def __init__(self, health_file: str, analysis: Callable[[], dict[str, Any]]) -> None:
        self.health_file = health_file
        self.analysis = analysis

    def capture(self) -> dict[str, Any]:
        try:
            with open(self.health_file) as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}

    def families(self) -> Iterator[Any]:
        cap = self.capture()
        ana = self.analysis()
        losses = cap.get("losses", {})

        singles = (
            (CounterMetricFamily, "apptrace_lost_events", "Ring-buffer records the kernel dropped (ring full).",
             losses.get("lost_events", 0)),
            (CounterMetricFamily, "apptrace_spool_dropped_events", "Records capture kept out of the spool "
             "(--spool-max).", cap.get("backlog_dropped_events", 0)),
            (CounterMetricFamily, "apptrace_captured_events", "Records captured from the ring buffer.",
             cap.get("events", 0)),
            (CounterMetricFamily, "apptrace_gap_bytes", "Plaintext bytes known missing from connections' streams.",
             ana.get("gap_bytes", 0)),
            (CounterMetricFamily, "apptrace_parse_errors", "Protocol parse errors.", ana.get("parse_errors", 0)),
            (CounterMetricFamily, "apptrace_records", "Requests and responses paired into rows.",
             ana.get("records", 0)),
            (GaugeMetricFamily, "apptrace_spool_backlog_bytes", "Spool bytes captured and not yet analysed.",
             ana.get("backlog_bytes", 0)),
            (GaugeMetricFamily, "apptrace_analysis_lag_seconds", "Age of the newest analysed event while a "
             "backlog remains.", ana.get("lag_s", 0.0)),
            (GaugeMetricFamily, "apptrace_ring_buffer_fill_ratio", "Largest ring-buffer fill seen in the last "
             "second (0-1).", cap.get("ring_fill", 0.0)),
            (GaugeMetricFamily, "apptrace_probes_attached", "Uprobes attached.", cap.get("probes", 0)),
            (GaugeMetricFamily, "apptrace_processes_traced", "Processes that made TLS calls since the tracer "
             "started.", cap.get("processes", 0)),
        )
        for family, name, help_, value in singles:
            yield family(name, help_, value=value)
        run_time = CounterMetricFamily("apptrace_bpf_run_time_seconds", "Time the kernel spent in each BPF "
                                       "program (kernel.bpf_stats, on while --metrics is).", labels=["program"])
        run_count = CounterMetricFamily("apptrace_bpf_runs", "Runs of each BPF program.", labels=["program"])
        for name, (ns, count) in sorted(cap.get("bpf", {}).items()):
            run_time.add_metric([name], ns / 1e9)
            run_count.add_metric([name], count)
        yield run_time
        yield run_count


class Exporter:
    """A registry with both collectors, served over HTTP from a thread of the analysis process."""

    def __init__(self, listen: str, health_file: str, analysis: Callable[[], dict[str, Any]]) -> None:
        self.requests = RequestMetrics()
        self.health = Health(health_file, analysis)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type] - a collector is anything with collect()
        addr, port = parse_listen(listen)
        self.server, self.thread = start_http_server(port, addr=addr, registry=self.registry)
        self.started = time.time()

    def collect(self) -> Iterator[Any]:
        with self.requests.lock:
            families = [h.family() for h in self.requests.histograms()] + [self.requests.capped()]
        yield from families
        yield from self.health.families()

    def observe(self, table: str, rows: list[dict]) -> None:
        self.requests.observe(table, rows)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def health_path(spool: str) -> str:
    return os.path.join(spool, HEALTH)
