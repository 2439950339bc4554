"""OpenTelemetry export (`apptrace trace --otlp`): a span per request, and the request metrics, over OTLP/HTTP
or OTLP/gRPC.

Configured the standard way: ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``),
``OTEL_EXPORTER_OTLP_ENDPOINT`` (default ``http://localhost:4318``, traces to ``/v1/traces`` and metrics to
``/v1/metrics``; for gRPC ``http://localhost:4317``, ``https://`` meaning TLS), or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_METRICS_ENDPOINT`` as whole URLs,
``OTEL_EXPORTER_OTLP_HEADERS`` (``k=v,k2=v2``; gRPC metadata for gRPC), ``OTEL_EXPORTER_OTLP_TIMEOUT`` (ms) and
``OTEL_EXPORTER_OTLP_CERTIFICATE`` (a PEM file of the CA certificates to trust for ``https://``, instead of the
system's).

A span is made from each stored row: kind server or client from the traced side, start and end from the capture
(first request byte, last response byte), attributes by the semantic conventions for HTTP, RPC and databases, and
the row's service as ``service.name``. A request that carried a W3C ``traceparent`` header joins that trace as a
child of the caller's span. Spans wait in a bounded queue and go in batches from a thread of their own, retried
with backoff on 429/502/503/504 (gRPC: UNAVAILABLE, RESOURCE_EXHAUSTED and the other retryable codes) and on
connection errors: a slow or absent collector costs the analysis process a
queue append per row, never a wait, and every span that cannot be delivered is counted (``dropped``: the queue
was full; ``failed``: retries ran out).
"""

from __future__ import annotations

import json
import os
import random
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from apptrace.analysis.routes import db_operation

#: spans held while the collector is slow or away; past this, new spans are dropped and counted
QUEUE_SPANS = 20_000
BATCH_SPANS = 512
FLUSH_S = 1.0
METRICS_EVERY_S = 10.0
RETRY_STATUSES = {429, 502, 503, 504}
#: a batch is given up (and counted as failed) after this long of retries
RETRY_FOR_S = 30.0
DB_SYSTEM = {"mysql_events": "mysql", "pgsql_events": "postgresql"}
PROTOCOLS = ("http/protobuf", "grpc")
#: OTLP/gRPC's export methods, by signal; requests and replies go as the protobuf bytes we already make
GRPC_METHODS = {"traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"}
#: the codes OTLP's specification calls retryable
GRPC_RETRY_CODES = ("CANCELLED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "OUT_OF_RANGE",
                    "UNAVAILABLE", "DATA_LOSS")


@dataclass(frozen=True)
class OtlpConfig:
    traces_url: str
    metrics_url: str
    headers: dict[str, str] = field(default_factory=dict)
    timeout_s: float = 10.0
    protocol: str = "http/protobuf"
    certificate: str | None = None  # CA certificates (PEM) trusted for https:// instead of the system's


def config_from_env(env: dict[str, str] | None = None, endpoint: str | None = None) -> OtlpConfig:
    """The OTLP settings from the standard environment variables (``endpoint`` overrides the base one);
    ValueError, in the user's words, for what cannot work."""
    env = dict(os.environ if env is None else env)
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") \
        or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: expected one of {', '.join(PROTOCOLS)}")
    grpc_ = protocol == "grpc"
    default = "http://localhost:4317" if grpc_ else "http://localhost:4318"
    base = (endpoint or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or default).rstrip("/")
    traces = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") if endpoint is None else None
    metrics = env.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") if endpoint is None else None
    for url in (base, traces, metrics):
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError(f"OTLP endpoint {url!r}: expected an http:// or https:// URL")
    headers = {}
    for item in (env.get("OTEL_EXPORTER_OTLP_HEADERS") or "").split(","):
        if item.strip():
            key, sep, value = item.partition("=")
            if not sep:
                raise ValueError(f"OTEL_EXPORTER_OTLP_HEADERS: {item.strip()!r} is not key=value")
            headers[urllib.request.unquote(key.strip())] = urllib.request.unquote(value.strip())
    try:
        timeout_s = float(env.get("OTEL_EXPORTER_OTLP_TIMEOUT") or 10000) / 1000
    except ValueError:
        raise ValueError("OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds") from None
    certificate = env.get("OTEL_EXPORTER_OTLP_CERTIFICATE") or None
    if certificate is not None:
        try:
            ssl.create_default_context(cafile=certificate)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"OTEL_EXPORTER_OTLP_CERTIFICATE={certificate}: not a readable PEM file of "
                             f"certificates ({exc.strerror or exc})") from None
    if grpc_:  # a gRPC endpoint is a host and port; the service names the signal
        return OtlpConfig(traces or base, metrics or base, headers, timeout_s, protocol, certificate)
    return OtlpConfig(traces or base + "/v1/traces", metrics or base + "/v1/metrics", headers, timeout_s, protocol,
                      certificate)


def _traceparent(row: dict) -> tuple[bytes, bytes] | None:
    """(trace id, parent span id) from a W3C traceparent request header, if the request had a valid one."""
    raw = row.get("req_headers")
    if not raw or "traceparent" not in raw:
        return None
    try:
        headers = json.loads(raw)
    except ValueError:
        return None
    items = headers.items() if isinstance(headers, dict) else headers
    for name, value in items:
        if str(name).lower() == "traceparent" and isinstance(value, str):
            parts = value.strip().split("-")
            if len(parts) >= 4 and len(parts[1]) == 32 and len(parts[2]) == 16:
                try:
                    trace_id, parent = bytes.fromhex(parts[1]), bytes.fromhex(parts[2])
                except ValueError:
                    return None
                if any(trace_id) and any(parent):
                    return trace_id, parent
    return None


def span_of(table: str, row: dict) -> tuple[tuple[str, int], Any] | None:
    """((service, pid), the Span) for a row; None for a row with no time span (no response yet)."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
    from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

    latency = row.get("latency")
    end = row.get("time_")
    if latency is None or end is None:
        return None
    end_ns = end if isinstance(end, int) else int(end.timestamp() * 1e9)
    role = row.get("trace_role")
    attrs: list[tuple[str, Any]] = []
    error = False
    local = (row.get("local_addr"), row.get("local_port"))
    remote = (row.get("remote_addr"), row.get("remote_port"))
    server, client = (local, remote) if role == "server" else (remote, local)
    if server[0]:
        attrs += [("server.address", server[0]), ("server.port", server[1])]
    if client[0]:
        attrs += [("client.address", client[0]), ("client.port", client[1])]
    if table == "http_events":
        route = row.get("req_route") or ""
        grpc = row.get("grpc_status")
        if grpc is not None:
            service_method = route.lstrip("/")
            rpc_service, _, rpc_method = service_method.partition("/")
            name = service_method or "grpc"
            attrs += [("rpc.system", "grpc"), ("rpc.service", rpc_service), ("rpc.method", rpc_method),
                      ("rpc.grpc.status_code", int(grpc))]
            error = grpc != 0
        else:
            method = row.get("req_method") or "_OTHER"
            name = f"{method} {route}" if route else method
            status = row.get("resp_status")
            attrs += [("http.request.method", method), ("http.route", route),
                      ("url.path", (row.get("req_path") or "").split("?", 1)[0]),
                      ("network.protocol.version", row.get("http_version") or "")]
            if status is not None:
                attrs.append(("http.response.status_code", int(status)))
                error = status >= 500 or (role == "client" and status >= 400)
            for key, col in (("http.request.body.size", "req_body_size"), ("http.response.body.size",
                                                                             "resp_body_size")):
                if row.get(col) is not None:
                    attrs.append((key, int(row[col])))
    elif table in DB_SYSTEM:
        operation = db_operation(row)
        name = f"{operation} {DB_SYSTEM[table]}".strip()
        attrs += [("db.system", DB_SYSTEM[table]), ("db.operation.name", operation)]
        error = row.get("resp_status") == "ERR"
        if row.get("error_code") is not None:
            attrs.append(("db.response.status_code", str(row["error_code"])))
    else:
        return None

    def kv(key: str, value: Any) -> KeyValue:
        if isinstance(value, bool):
            return KeyValue(key=key, value=AnyValue(bool_value=value))
        if isinstance(value, int):
            return KeyValue(key=key, value=AnyValue(int_value=value))
        return KeyValue(key=key, value=AnyValue(string_value=str(value)))

    parent = _traceparent(row) if table == "http_events" and role == "server" else None
    span = Span(
        trace_id=parent[0] if parent else random.randbytes(16),
        span_id=random.randbytes(8),
        parent_span_id=parent[1] if parent else b"",
        name=name,
        kind=Span.SPAN_KIND_SERVER if role == "server" else Span.SPAN_KIND_CLIENT,
        start_time_unix_nano=end_ns - int(latency),
        end_time_unix_nano=end_ns,
        attributes=[kv(k, v) for k, v in attrs if v is not None],
        status=Status(code=Status.STATUS_CODE_ERROR if error else Status.STATUS_CODE_UNSET),
    )
    return (row.get("service") or "unknown_service", int(row.get("pid") or 0)), span


class OtlpExporter:
    """Rows in (from the pipeline, never blocking); OTLP batches out from a thread; everything counted."""

    def __init__(self, config: OtlpConfig, metrics: Any = None) -> None:
        self.config = config
        self.metrics = metrics  # apptrace.analysis.metrics.RequestMetrics, pushed every METRICS_EVERY_S
        self.queue: deque[tuple[tuple[str, int], Any]] = deque()
        self.exported = self.dropped = self.failed = 0
        self.host = os.uname().nodename
        self.started_ns = time.time_ns()
        self._wake = threading.Event()
        self._stop = False
        self._close_deadline: float | None = None  # set by close(): retries end there
        self._in_flight = 0  # spans of the batch being posted
        self._tls = ssl.create_default_context(cafile=config.certificate) if config.certificate else None
        self._channels: dict[str, Any] = {}  # gRPC channels by endpoint, made and used by the exporting thread
        self._grpc_exports: dict[str, Any] = {}  # each signal's Export call on its channel
        self._thread = threading.Thread(target=self._run, name="otlp", daemon=True)
        self._thread.start()

    # ---- the pipeline's side: never waits ----
    def observe(self, table: str, rows: list[dict]) -> None:
        queue = self.queue
        for row in rows:
            if len(queue) >= QUEUE_SPANS:
                self.dropped += 1
                continue
            made = span_of(table, row)
            if made is not None:
                queue.append(made)
        if len(queue) >= BATCH_SPANS:
            self._wake.set()

    # ---- the exporting thread ----
    def _run(self) -> None:
        next_metrics = time.monotonic() + METRICS_EVERY_S
        while not self._stop:
            self._wake.wait(FLUSH_S)
            self._wake.clear()
            self._send_spans()
            if self.metrics is not None and time.monotonic() >= next_metrics:
                self._send_metrics()
                next_metrics = time.monotonic() + METRICS_EVERY_S
        # closing: what is queued gets until the close deadline, the metrics one last push
        self._send_spans(self._close_deadline)
        if self.metrics is not None:
            self._send_metrics(self._close_deadline)

    def _send_spans(self, deadline: float | None = None) -> None:
        while self.queue and (deadline is None or time.monotonic() < deadline):
            batch = []
            while self.queue and len(batch) < BATCH_SPANS:
                batch.append(self.queue.popleft())
            self._in_flight = len(batch)
            if self._post("traces", self._traces_request(batch).SerializeToString(), deadline):
                self.exported += len(batch)
            else:
                self.failed += len(batch)
            self._in_flight = 0

    def _resource(self, service: str, pid: int) -> Any:
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
        from opentelemetry.proto.resource.v1.resource_pb2 import Resource

        attrs = [("service.name", service), ("host.name", self.host), ("telemetry.sdk.name", "apptrace")]
        kvs = [KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in attrs]
        if pid:
            kvs.append(KeyValue(key="process.pid", value=AnyValue(int_value=pid)))
        return Resource(attributes=kvs)

    def _traces_request(self, batch: list[tuple[tuple[str, int], Any]]) -> Any:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
        from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans

        by_resource: dict[tuple[str, int], list[Any]] = {}
        for key, span in batch:
            by_resource.setdefault(key, []).append(span)
        scope = InstrumentationScope(name="apptrace")
        return ExportTraceServiceRequest(resource_spans=[
            ResourceSpans(resource=self._resource(*key), scope_spans=[ScopeSpans(scope=scope, spans=spans)])
            for key, spans in by_resource.items()])

    def metrics_request(self) -> Any:
        """The request histograms as one OTLP metrics request: cumulative, one data point per label set."""
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
        from opentelemetry.proto.metrics.v1.metrics_pb2 import (
            AggregationTemporality,
            Histogram,
            HistogramDataPoint,
            Metric,
            ResourceMetrics,
            ScopeMetrics,
        )

        now = time.time_ns()
        metrics = []
        with self.metrics.lock:
            for hist in self.metrics.histograms():
                points = []
                for key, counts in list(hist.series.items()):
                    attrs = [KeyValue(key=_otel_name(label), value=AnyValue(string_value=v))
                             for label, v in zip(hist.labels, key, strict=True)]
                    points.append(HistogramDataPoint(
                        attributes=attrs, start_time_unix_nano=self.started_ns, time_unix_nano=now,
                        count=sum(counts), sum=hist.sums[key], bucket_counts=list(counts),
                        explicit_bounds=[float(b) for b in hist.bounds]))
                if points:
                    unit = "s" if hist.name.endswith("_seconds") else "By"
                    metrics.append(Metric(name=_otel_metric_name(hist.name), unit=unit, description=hist.help,
                                          histogram=Histogram(data_points=points, aggregation_temporality=(
                                              AggregationTemporality.AGGREGATION_TEMPORALITY_CUMULATIVE))))
        return ExportMetricsServiceRequest(resource_metrics=[ResourceMetrics(
            resource=self._resource("apptrace", os.getpid()),
            scope_metrics=[ScopeMetrics(scope=InstrumentationScope(name="apptrace"), metrics=metrics)])])

    def _send_metrics(self, deadline: float | None = None) -> None:
        self._post("metrics", self.metrics_request().SerializeToString(), deadline)

    def _post(self, signal: str, body: bytes, deadline: float | None) -> bool:
        """Send with retries and exponential backoff (honouring Retry-After); True once the collector took it."""
        give_up = time.monotonic() + RETRY_FOR_S
        for limit in (deadline, self._close_deadline):
            if limit is not None:
                give_up = min(give_up, limit)
        delay = 0.5
        attempt = self._grpc_attempt if self.config.protocol == "grpc" else self._http_attempt
        while True:
            taken, retry_after = attempt(signal, body)
            if taken is not None:
                return taken
            wait = delay
            if retry_after and retry_after.isdigit():
                wait = float(retry_after)
            wait *= random.uniform(0.8, 1.2)
            if self._close_deadline is not None:  # closing began while this batch was being retried
                give_up = min(give_up, self._close_deadline)
            if time.monotonic() + wait > give_up:
                return False
            time.sleep(wait)
            delay = min(delay * 2, 8.0)

    def _http_attempt(self, signal: str, body: bytes) -> tuple[bool | None, str | None]:
        """One POST: (True, _) taken, (False, _) refused for good, (None, Retry-After) to be retried."""
        url = self.config.traces_url if signal == "traces" else self.config.metrics_url
        headers = {"Content-Type": "application/x-protobuf", **self.config.headers}
        try:
            req = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(req, timeout=self.config.timeout_s, context=self._tls) as resp:
                resp.read()
            return True, None
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUSES:
                return False, None  # the collector refused this batch for good (400: malformed, 413: too big)
            return None, exc.headers.get("Retry-After")
        except (urllib.error.URLError, OSError, TimeoutError):
            return None, None  # not reachable (yet): retried

    def _grpc_attempt(self, signal: str, body: bytes) -> tuple[bool | None, str | None]:
        """One unary Export call, as _http_attempt answers."""
        import grpc

        export = self._grpc_exports.get(signal)
        if export is None:
            url = self.config.traces_url if signal == "traces" else self.config.metrics_url
            channel = self._channels.get(url)
            if channel is None:
                target = url.split("://", 1)[1].split("/", 1)[0]
                if url.startswith("https://"):
                    roots = None
                    if self.config.certificate:
                        with open(self.config.certificate, "rb") as f:
                            roots = f.read()
                    channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=roots))
                else:
                    channel = grpc.insecure_channel(target)
                self._channels[url] = channel
            # No serializers: the request is already the protobuf's bytes, and the empty reply is not needed.
            export = self._grpc_exports[signal] = channel.unary_unary(GRPC_METHODS[signal])
        try:
            export(body, timeout=self.config.timeout_s,
                   metadata=[(key.lower(), value) for key, value in self.config.headers.items()])
            return True, None
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNAVAILABLE
            return (None, None) if code.name in GRPC_RETRY_CODES else (False, None)

    def close(self, flush_s: float = 5.0) -> dict[str, int]:
        """Give the thread ``flush_s`` more to send what is queued (retries included), then return the counts."""
        self._close_deadline = time.monotonic() + flush_s
        self._stop = True
        self._wake.set()
        self._thread.join(timeout=flush_s + self.config.timeout_s + 1)
        # still queued, or still being posted when the time was up: the collector did not take them in time
        self.failed += len(self.queue) + (self._in_flight if self._thread.is_alive() else 0)
        self.queue.clear()
        if not self._thread.is_alive():
            for channel in self._channels.values():
                channel.close()
        return {"exported": self.exported, "dropped": self.dropped, "failed": self.failed}


def _otel_name(label: str) -> str:
    """A Prometheus-style label back to its OpenTelemetry attribute name: http_route → http.route."""
    return {"http_request_method": "http.request.method", "http_response_status_code": "http.response.status_code",
            "http_route": "http.route", "service_name": "service.name", "rpc_system": "rpc.system",
            "rpc_method": "rpc.method", "rpc_grpc_status_code": "rpc.grpc.status_code", "db_system": "db.system",
            "db_operation": "db.operation.name"}.get(label, label)


def _otel_metric_name(name: str) -> str:
    """http_server_request_duration_seconds → http.server.request.duration (the unit goes in the unit field)."""
    for suffix in ("_seconds", "_bytes"):
        name = name.removesuffix(suffix)
    return name.replace("_body_size", ".body.size").replace("_", ".")
