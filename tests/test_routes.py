"""req_route: the path without its query string, instance ids folded; and the rate every view computes alike."""

from __future__ import annotations

import json
import time

from hypothesis import given
from hypothesis import strategies as st

from apptrace.analysis.routes import FOLDED, Routes, route_of
from apptrace.cli import main as cli_main
from apptrace.query.backend import open_backend
from apptrace.query.report import collect
from tests.test_px import build_db

NOW = time.time_ns() - 120 * 10**9  # two minutes ago: inside a -1h window


def test_query_strings_go_and_ids_fold():
    cases = {
        "/sleep?ms=400": "/sleep",
        "/sleep?ms=50&x=1#frag": "/sleep",
        "/users/42": "/users/{id}",
        "/users/42/orders/7?page=2": "/users/{id}/orders/{id}",
        "/orders/550e8400-e29b-41d4-a716-446655440000/items": "/orders/{id}/items",
        "/blob/5f2b9c1e0a17": "/blob/{id}",
        "/t/01ARZ3NDEKTSV4RRFFQ69G5FAV": "/t/{id}",
        "/day/2026-12-05": "/day/{id}",
        "/price/-3.5": "/price/{id}",
        "http://example.com/users/9?q": "/users/{id}",
        "/apptrace.Echo/Unary": "/apptrace.Echo/Unary",  # gRPC methods are routes already
    }
    for path, route in cases.items():
        assert route_of(path) == route, path
    # fixed words stay, even with digits in them: versions, short names, hex-looking words without digits
    for path in ("/v2/api/healthz", "/api/v1/users/me", "/static/app.min.js", "/files/deadbeef", "/h2", "/", "*",
                 "example.com:443"):
        assert route_of(path) == path, path
    assert route_of(None) is None


@given(st.text())
def test_route_of_any_text_is_stable(path):
    route = route_of(path)
    assert route is not None and "?" not in route
    assert route_of(route) == route  # a route is its own route
    assert Routes()(path) == route


def test_routes_memory_is_bounded():
    routes = Routes()
    for i in range(10_000):
        assert routes(f"/users/{i}") == "/users/" + FOLDED
    assert len(routes._seen) <= 4096


def _http(t_s: float, path: str, service: str = "shop", role: str = "server") -> dict:
    return dict(time_=NOW + int(t_s * 1e9), service=service, trace_role=role, latency=10**6, req_method="GET",
                req_path=path, req_route=route_of(path), resp_status=200)


def test_report_and_scripts_agree_on_rates(tmp_path, capsys):
    # 59 requests over a minute to one endpoint, one request to another: the rare endpoint's rate is 1 per
    # 60 s, not 1/s (the span of its own rows), and the report and http_stats give the same service rate
    rows = [_http(i, f"/sleep?ms={i}") for i in range(59)] + [_http(60, "/users/7")]
    db = build_db(str(tmp_path / "r.duckdb"), rows)
    rc = cli_main(["run", "http_stats", "--db", db, "-o", "json", "--arg", "start_time=-1h"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0
    by_ep = {r["endpoint"]: r for r in out["by_endpoint"]}
    assert set(by_ep) == {"GET /sleep", "GET /users/{id}"}  # /sleep?ms=… is one endpoint
    assert by_ep["GET /sleep"]["requests"] == 59
    assert abs(by_ep["GET /users/{id}"]["rps"] - 1 / 60) < 1e-9
    assert abs(by_ep["GET /sleep"]["rps"] - 59 / 60) < 1e-9
    script_rps = out["by_service"][0]["rps"]
    assert abs(script_rps - 1.0) < 1e-9
    backend = open_backend(db)
    try:
        rep = collect(backend, "1h", db, charts=True)
    finally:
        backend.close()
    (row,) = rep.summary
    assert abs(row["rps"] - script_rps) < 1e-9
    assert {r["endpoint"] for r in rep.endpoints} == {"GET /sleep", "GET /users/{id}"}
