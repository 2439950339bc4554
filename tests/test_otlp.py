"""`apptrace trace --otlp`: spans and metrics received by OTLP/HTTP and OTLP/gRPC receivers built on the official
opentelemetry-proto messages, checked against the DB's rows; a collector that fails, then one that is away."""

from __future__ import annotations

import http.server
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from apptrace.analysis.otlp import config_from_env
from apptrace.demo.server import free_port
from tests.conftest import APPTRACE, ROOT, read
from tests.test_capture import curl

pytestmark = pytest.mark.ebpf

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


class Receiver:
    """An OTLP/HTTP receiver: decodes every request; answers 503 to the first ``fail_first`` trace posts."""

    def __init__(self, fail_first: int = 0, tls: tuple[str, str] | None = None) -> None:
        self.spans: list[tuple[dict, Span]] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.refused = 0
        self.fail_first = fail_first
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                assert self.headers["Content-Type"] == "application/x-protobuf"
                if self.path == "/v1/traces":
                    if receiver.refused < receiver.fail_first:
                        receiver.refused += 1
                        self.send_response(503)
                        self.send_header("Retry-After", "1")
                        self.end_headers()
                        return
                    req = ExportTraceServiceRequest.FromString(body)
                    for rs in req.resource_spans:
                        res = {a.key: a.value for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            receiver.spans.extend((res, s) for s in ss.spans)
                elif self.path == "/v1/metrics":
                    receiver.metrics.append(ExportMetricsServiceRequest.FromString(body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:  # (certificate, key): an https:// collector
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class GrpcReceiver:
    """An OTLP/gRPC receiver on grpcio: the two Export services, decoding with the official messages; answers
    UNAVAILABLE to the first ``fail_first`` trace exports and records each call's metadata."""

    def __init__(self, fail_first: int = 0) -> None:
        self.spans: list[tuple[dict, Span]] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.metadata: list[dict] = []
        self.refused = 0
        self.fail_first = fail_first

        def export_traces(req: ExportTraceServiceRequest, ctx: grpc.ServicerContext) -> bytes:
            self.metadata.append(dict(ctx.invocation_metadata()))
            if self.refused < self.fail_first:
                self.refused += 1
                ctx.abort(grpc.StatusCode.UNAVAILABLE, "collector busy")
            for rs in req.resource_spans:
                res = {a.key: a.value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    self.spans.extend((res, s) for s in ss.spans)
            return b""  # an empty ExportTraceServiceResponse

        def export_metrics(req: ExportMetricsServiceRequest, ctx: grpc.ServicerContext) -> bytes:
            self.metrics.append(req)
            return b""

        from concurrent.futures import ThreadPoolExecutor

        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        self.server.add_generic_rpc_handlers([
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService", {
                "Export": grpc.unary_unary_rpc_method_handler(
                    export_traces, request_deserializer=ExportTraceServiceRequest.FromString)}),
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.metrics.v1.MetricsService", {
                "Export": grpc.unary_unary_rpc_method_handler(
                    export_metrics, request_deserializer=ExportMetricsServiceRequest.FromString)}),
        ])
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def close(self) -> None:
        self.server.stop(grace=None)


@contextmanager
def traced(srv, db: str, *args: str, env: dict[str, str] | None = None,
           scoped: bool = True) -> Iterator[subprocess.Popen]:
    scope = ["--pid", str(srv.pid)] if scoped else []
    p = subprocess.Popen([*APPTRACE, "trace", *scope, "--db", db, "--quiet", *args], cwd=ROOT,
                         stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})})
    try:
        for line in p.stderr:
            if line.startswith("apptrace: tracing"):
                break
        yield p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        p.wait(timeout=120)


def _attrs(span: Span) -> dict:
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.int_value if v.HasField("int_value") else v.string_value
    return out


def _spans_match_server_rows(db: str, srv, received: list[tuple[dict, Span]], count: int) -> list:
    """Asserts ``count`` server rows in the DB and one span per row, field by field; returns the spans in time order."""
    rows = read(db, "SELECT epoch_ns(time_), latency, req_method, req_route, resp_status, service, remote_port "
                    f"FROM http_events WHERE pid = {srv.pid} AND trace_role = 'server' ORDER BY time_")
    assert len(rows) == count
    spans = sorted(received, key=lambda rs: rs[1].end_time_unix_nano)
    assert len(spans) == len(rows)
    for (end, latency, method, route, status, service, peer_port), (res, span) in zip(rows, spans, strict=True):
        a = _attrs(span)
        assert span.kind == Span.SPAN_KIND_SERVER
        assert (span.end_time_unix_nano, span.end_time_unix_nano - span.start_time_unix_nano) == (end, latency)
        assert span.name == f"{method} {route}"
        assert a["http.request.method"] == method and a["http.route"] == route
        assert a["http.response.status_code"] == status
        assert a["server.port"] == srv.port and a["client.port"] == peer_port
        assert res["service.name"].string_value == service and res["process.pid"].int_value == srv.pid
        assert span.status.code == (Status.STATUS_CODE_ERROR if status >= 500 else Status.STATUS_CODE_UNSET)
        assert "token" not in a.get("url.path", "")
    return spans


def test_spans_and_metrics_match_the_rows(ebpf, https_server, tmp_path):  # noqa: ARG001
    srv = https_server()
    rx = Receiver(fail_first=2)  # the first two batches are refused, then taken: retried, never lost
    db = str(tmp_path / "o.duckdb")
    try:
        with traced(srv, db, "--otlp", f"http://127.0.0.1:{rx.port}") as p:
            curl(srv.port, "/hello?i=[1-5]", "-o", "/dev/null")
            curl(srv.port, "/sleep?ms=[20-22]", "-o", "/dev/null")
            curl(srv.port, "/status/503", "-o", "/dev/null")
            curl(srv.port, "/users/42", "-o", "/dev/null", "-H", f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01")
        err = p.stderr.read()
    finally:
        rx.close()
    assert p.returncode == 0, err
    assert "OpenTelemetry: 10 spans exported, 0 dropped (queue full), 0 failed" in err, err
    assert rx.refused == 2
    spans = _spans_match_server_rows(db, srv, rx.spans, 10)
    joined = [s for _, s in spans if _attrs(s)["http.route"] == "/users/{id}"]
    assert joined[0].trace_id.hex() == TRACE_ID and joined[0].parent_span_id.hex() == PARENT_ID
    assert len({s.trace_id for _, s in spans}) == 10  # the others start traces of their own
    # metrics: the final push holds every request in the duration histogram
    last = rx.metrics[-1]
    hist = {m.name: m for rm in last.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    duration = hist["http.server.request.duration"]
    assert duration.unit == "s" and sum(dp.count for dp in duration.histogram.data_points) == 10
    routes = {kv.value.string_value for dp in duration.histogram.data_points for kv in dp.attributes
              if kv.key == "http.route"}
    assert routes == {"/hello", "/sleep", "/status/{id}", "/users/{id}"}


def test_grpc_spans_match_the_rows(ebpf, https_server, tmp_path):  # noqa: ARG001
    """OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the same spans over OTLP/gRPC, headers as metadata, UNAVAILABLE retried."""
    srv = https_server()
    rx = GrpcReceiver(fail_first=1)
    db = str(tmp_path / "g.duckdb")
    env = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{rx.port}",
           "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret"}
    try:
        with traced(srv, db, "--otlp", env=env) as p:
            curl(srv.port, "/hello?i=[1-4]", "-o", "/dev/null")
            curl(srv.port, "/status/404", "-o", "/dev/null")
            curl(srv.port, "/orders/7", "-o", "/dev/null", "-H", f"traceparent: 00-{TRACE_ID}-{PARENT_ID}-01")
        err = p.stderr.read()
    finally:
        rx.close()
    assert p.returncode == 0, err
    assert "OpenTelemetry: 6 spans exported, 0 dropped (queue full), 0 failed" in err, err
    assert rx.refused == 1 and all(md.get("api-key") == "s=cret" for md in rx.metadata)
    spans = _spans_match_server_rows(db, srv, rx.spans, 6)  # the refused batch came again, once
    joined = [s for _, s in spans if _attrs(s)["http.route"] == "/orders/{id}"]
    assert joined[0].trace_id.hex() == TRACE_ID and joined[0].parent_span_id.hex() == PARENT_ID
    hist = {m.name: m for rm in rx.metrics[-1].resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert sum(dp.count for dp in hist["http.server.request.duration"].histogram.data_points) == 6


@pytest.mark.parametrize("collector", ["http", "https", "grpc"])
def test_apptrace_never_traces_its_own_exports(ebpf, https_server, certs, tmp_path, collector):  # noqa: ARG001
    """Tracing everything, with --otlp to a collector on this host (this test's process): neither the exports nor
    the collector's side of them make rows (each batch would describe the one before it, for good), over plain
    HTTP, TLS (apptrace's own SSL calls and the collector's) and gRPC; the traffic around them still does."""
    srv = https_server()
    rx = GrpcReceiver() if collector == "grpc" else \
        Receiver(tls=(certs["server"], certs["server-key"]) if collector == "https" else None)
    scheme = "https" if collector == "https" else "http"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"{scheme}://127.0.0.1:{rx.port}",
           "OTEL_EXPORTER_OTLP_CERTIFICATE": certs["ca"]}
    if collector == "grpc":
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    db = str(tmp_path / "self.duckdb")
    try:
        with traced(srv, db, "--otlp", env=env, scoped=False) as p:
            curl(srv.port, "/hello", "-o", "/dev/null")
            deadline = time.monotonic() + 60
            while {s.kind for _, s in rx.spans if _attrs(s).get("url.path") == "/hello"} != \
                    {Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT}:  # curl's span and the server's
                assert time.monotonic() < deadline and p.poll() is None, "the /hello spans never came"
                time.sleep(0.1)
            posts = len(rx.spans)
            time.sleep(4)  # a few export rounds: were apptrace's own posts traced, each would bring another span
            later = rx.spans[posts:]
        err = p.stderr.read()
    finally:
        rx.close()
    assert p.returncode == 0, err
    assert later == [], [(_attrs(s), s.name) for _, s in later]
    own = read(db, "SELECT pid, trace_role, req_path FROM http_events WHERE req_path LIKE '/v1/%' "
                   "OR req_path LIKE '/opentelemetry.proto.collector.%'")
    assert own == [], own
    assert read(db, "SELECT trace_role, count(*) FROM http_events WHERE req_path = '/hello' GROUP BY 1 ORDER BY 1") \
        == [("client", 1), ("server", 1)]


def test_an_absent_collector_costs_nothing_but_is_counted(ebpf, https_server, tmp_path):  # noqa: ARG001
    srv = https_server()
    db = str(tmp_path / "a.duckdb")
    nobody = free_port()
    with traced(srv, db, "--otlp", f"http://127.0.0.1:{nobody}") as p:
        curl(srv.port, "/hello?i=[1-20]", "-o", "/dev/null")
    err = p.stderr.read()
    assert p.returncode == 0, err
    assert read(db, f"SELECT count(*) FROM http_events WHERE pid = {srv.pid}") == [(20,)]  # stored regardless
    assert "OpenTelemetry: 0 spans exported, 0 dropped (queue full), 20 failed" in err, err


def test_otlp_settings_come_from_the_standard_variables():
    c = config_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/",
                         "OTEL_EXPORTER_OTLP_HEADERS": "api-key=s%3Dcret, tenant=a", "OTEL_EXPORTER_OTLP_TIMEOUT": "2500"})
    assert (c.traces_url, c.metrics_url) == ("http://collector:4318/v1/traces", "http://collector:4318/v1/metrics")
    assert c.headers == {"api-key": "s=cret", "tenant": "a"} and c.timeout_s == 2.5
    c = config_from_env({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://x/t"})
    assert c.traces_url == "https://x/t" and c.metrics_url == "http://localhost:4318/v1/metrics"
    assert config_from_env({}, endpoint="http://h:1").traces_url == "http://h:1/v1/traces"
    c = config_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert (c.protocol, c.traces_url, c.metrics_url) == ("grpc", "http://localhost:4317", "http://localhost:4317")
    for bad in ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, {"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"},
                {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4317"},
                {"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, {"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"},
                {"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}):
        with pytest.raises(ValueError):
            config_from_env(bad)
