"""apptrace report: numbers match pandas on the same rows; HTML is self-contained and has the charts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser

import duckdb
import numpy as np
import pytest

from apptrace.cli import main as cli_main
from apptrace.store.writer import Store
from tests.test_queries import sample_db

APPTRACE = os.path.join(os.path.dirname(sys.executable), "apptrace")


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    return sample_db(str(tmp_path_factory.mktemp("r") / "r.duckdb"))


def test_report_json_matches_pandas(db, capsys):
    assert cli_main(["report", "--db", db, "--since", "1h", "-o", "json"]) == 0
    got = {(r["service"], r["protocol"], r["role"]): r for r in json.loads(capsys.readouterr().out)["services"]}
    con = duckdb.connect(db, read_only=True)
    http = con.sql("SELECT * FROM http_events").to_arrow_table().to_pandas()
    my = con.sql("SELECT * FROM mysql_events").to_arrow_table().to_pandas()
    con.close()
    for (svc, role), g in http.groupby(["service", "trace_role"]):
        r = got[(svc, "http", role)]
        assert r["requests"] == len(g)
        assert r["errors"] == int((g.resp_status >= 500).sum())
        np.testing.assert_allclose(r["p99_ms"], g.latency.quantile(0.99) / 1e6)
        np.testing.assert_allclose(r["p50_ms"], g.latency.quantile(0.5) / 1e6)
    r = got[("checkout", "mysql", "client")]
    assert r["requests"] == len(my) and r["errors"] == int((my.resp_status == "ERR").sum())


def test_report_terminal(db, capsys):
    assert cli_main(["report", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "apptrace report" in out and "checkout" in out and "mysql" in out and "p99" in out
    assert "capture:" in out


def test_report_filters_and_sql(db, capsys):
    assert cli_main(["report", "--db", db, "--protocol", "mysql", "-o", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("service,protocol,role") and len(lines) == 2 and ",mysql," in lines[1]
    assert cli_main(["report", "--db", db, "--print-sql"]) == 0
    assert "quantile_cont" in capsys.readouterr().out


class _Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_html_is_self_contained(db, tmp_path):
    out = tmp_path / "r.html"
    r = subprocess.run([APPTRACE, "report", "--db", db, "--since", "1h", "--html", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    p = _Collect()
    p.feed(page)
    tags = [t for t, _ in p.tags]
    assert tags.count("svg") >= 5  # percentiles per service, histogram, error rate, throughput, sparklines
    assert tags.count("polyline") >= 5 and "polygon" in tags
    for tag, attrs in p.tags:  # nothing loaded from elsewhere
        for k in ("src", "href"):
            assert not attrs.get(k), (tag, attrs)
        assert tag not in ("script", "link", "img", "iframe")
    assert not re.search(r"url\(|@import|https?://(?!www\.w3\.org)", page)
    for svc in ("cart", "checkout", "db-proxy"):
        assert svc in page
    assert "Slowest endpoints" in page and "Where the errors are" in page
    assert "SELECT * FROM t WHERE id = ?" in page  # SQL statements are normalised into shapes


def test_report_empty_and_bad_input(tmp_path, capsys):
    from apptrace.store.writer import Store

    db = str(tmp_path / "e.duckdb")
    Store(db).close()
    assert cli_main(["report", "--db", db, "--html", str(tmp_path / "e.html")]) == 0
    assert "No HTTP" in capsys.readouterr().out
    assert (tmp_path / "e.html").read_text().count("no data") >= 0
    assert cli_main(["report", "--db", db, "--since", "soon"]) == 2
    err = capsys.readouterr().err
    assert "bad duration" in err and len(err.strip().splitlines()) == 1
    assert cli_main(["report", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert "no database" in capsys.readouterr().err


def test_chart_helpers():
    from apptrace.query.report import _nice_ticks, bucket_seconds, fmt_ms

    t = _nice_ticks(0, 13.7)
    assert t[0] == 0 and t[-1] >= 13.7 and len(t) <= 8
    assert bucket_seconds(3600) == 60 and bucket_seconds(60) == 1
    assert fmt_ms(0.25) == "250µs" and fmt_ms(1500) == "1.50s" and fmt_ms(None) == "–"


@pytest.fixture(scope="module")
def nulls_db(tmp_path_factory):
    """Rows the sample lacks: NULL service, role and latency, a latency of 0, gRPC calls, NULL method and path."""
    from apptrace.store.writer import Store
    NOW = time.time_ns()  # noqa: N806 - stamped when built: the report's default window is the last 15 minutes

    path = str(tmp_path_factory.mktemp("n") / "n.duckdb")
    http = [dict(time_=NOW - i * 10**9, service=None if i % 5 == 0 else "api", trace_role=None if i % 7 == 0 else
                 "server", latency=None if i % 6 == 0 else (0 if i % 11 == 0 else 10**4 * (i + 1)),
                 req_method=None if i % 9 == 0 else "POST", req_path=None if i % 8 == 0 else "/pkg.Svc/Call",
                 resp_status=None if i % 4 == 0 else 200, grpc_status=None if i % 3 == 0 else (14 if i % 10 == 0
                                                                                                else 0))
            for i in range(40)]
    my = [dict(time_=NOW - i * 10**9, service="db" if i % 4 else None, trace_role="client",
               req_body=f"SELECT {i}", resp_status=None if i % 6 == 0 else ("ERR" if i % 2 else "OK"),
               latency=None if i % 7 == 0 else 1000 * i) for i in range(25)]
    with Store(path) as s:
        s.add_events("http_events", http)
        s.add_events("mysql_events", my)
        s.flush()
    return path


def _expected(path: str):
    """The summary computed in pandas from the raw rows, by the rules the report documents."""
    import pandas as pd

    con = duckdb.connect(path, read_only=True)
    http = con.sql("SELECT * FROM http_events").to_arrow_table().to_pandas()
    my = con.sql("SELECT * FROM mysql_events").to_arrow_table().to_pandas()
    con.close()
    http["protocol"] = np.where(http.grpc_status.notna(), "grpc", "http")
    http["failure"] = (http.resp_status.fillna(0) >= 500) | (http.grpc_status.fillna(0) != 0)
    my["protocol"] = "mysql"
    my["failure"] = my.resp_status == "ERR"
    ev = pd.concat([http, my])
    ev["service"] = ev.service.fillna("?")
    ev["role"] = ev.trace_role.fillna("?")
    return ev


def test_report_counts_requests_without_latency_and_names_the_unknown(nulls_db):
    from apptrace.query.backend import FileBackend
    from apptrace.query.report import collect

    backend = FileBackend(nulls_db)
    try:
        rep = collect(backend, "1h", nulls_db, charts=True)
    finally:
        backend.close()
    ev = _expected(nulls_db)
    got = {(r["service"], r["protocol"], r["role"]): r for r in rep.summary}
    assert {k[0] for k in got} == {"api", "db", "?"} and {k[1] for k in got} == {"http", "grpc", "mysql"}
    for (svc, proto, role), g in ev.groupby(["service", "protocol", "role"]):
        r = got.pop((svc, proto, role))
        assert r["requests"] == len(g)  # a request whose latency is NULL is still a request
        assert r["errors"] == int(g.failure.sum())
        lat = g.latency.dropna()
        for name, q in (("p50_ms", 0.5), ("p90_ms", 0.9), ("p99_ms", 0.99)):
            if lat.empty:
                assert r[name] is None
            else:
                np.testing.assert_allclose(r[name], lat.quantile(q) / 1e6)
    assert not got
    # the charts' data adds up to the same requests
    for key, r in {(r["service"], r["protocol"], r["role"]): r for r in rep.summary}.items():
        mine = [s for s in rep.series if (s["service"], s["protocol"], s["role"]) == key]
        assert sum(s["n"] for s in mine) == r["requests"]
        assert sum(e["requests"] for e in rep.endpoints if (e["service"], e["protocol"], e["role"]) == key) \
            == r["requests"]
    assert sum(h["n"] for h in rep.hist) == int((ev.latency > 0).sum())
    labels = {e["endpoint"] for e in rep.endpoints if e["protocol"] in ("http", "grpc")}
    assert labels == {"POST /pkg.Svc/Call", "? /pkg.Svc/Call", "POST ", "? "}
    assert {e["endpoint"] for e in rep.endpoints if e["protocol"] == "mysql"} == {"SELECT ?"}


def test_report_sql_is_built_by_px_from_the_rules(db, capsys):
    from apptrace.query import rules

    # no database is needed to print the SQL: the queries are built against apptrace's own schema
    assert cli_main(["report", "--db", "/nonexistent/x.duckdb", "--since", "15m", "--print-sql"]) == 0
    sql = capsys.readouterr().out
    assert sql.startswith("WITH t0 AS (")  # px's compiler, one CTE per step
    assert rules.HTTP_ERROR_SQL in sql and rules.SQL_ERROR_SQL in sql
    assert sql.count(f"time_ >= {rules.since_sql(15 * 60 * 10**9)}") == 3
    assert cli_main(["report", "--db", db, "--service", "cart", "--protocol", "pgsql", "--print-sql"]) == 0
    sql = capsys.readouterr().out
    assert "pgsql_events" in sql and "http_events" not in sql and "(\"service\" IN ('cart'))" in sql


def test_report_zero_window_is_empty(db, capsys):
    assert cli_main(["report", "--db", db, "--since", "0s", "-o", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["services"] == []


def test_since_takes_the_px_form_too(tmp_path, capsys):
    db = str(tmp_path / "e.duckdb")
    Store(db).close()
    assert cli_main(["report", "--db", db, "--since", "-5m"]) == 0
    assert "in the last 5m" in capsys.readouterr().out
    assert cli_main(["watch", "--db", db, "--since", "-5m"]) == 0


# -- readable HTML, the header ------------------------------------------------------------------------------------
def _svgs(page: str) -> dict[str, str]:
    """Each chart's SVG by its title."""
    out = {}
    for m in re.finditer(r'<svg class="chart".*?</svg>', page, re.S):
        t = re.search(r'class="ct">([^<]*)<', m.group(0))
        if t:
            out[html_unescape(t.group(1))] = m.group(0)
    return out


def html_unescape(s: str) -> str:
    import html

    return html.unescape(s)


def _points(svg: str) -> list[list[tuple[float, float]]]:
    return [[tuple(map(float, p.split(","))) for p in m.group(1).split()]
            for m in re.finditer(r'<polyline points="([^"]*)"', svg)]


@pytest.fixture(scope="module")
def steady_db(tmp_path_factory):
    """Ten minutes of a steady 5 requests/s, ending a few seconds ago, from a client and the server it calls; latency spread
    over three decades (1 ms to 1 s)."""
    import time

    path = str(tmp_path_factory.mktemp("s") / "s.duckdb")
    # the data ends 3 s into a 10 s chart bucket (the report's bucket for ten minutes), some seconds ago
    end = (time.time_ns() // 10**10 - 1) * 10**10 + 3 * 10**9
    rows = []
    for i in range(3000):
        t = end - (2999 - i) * 200_000_000
        lat = 10**6 if i % 100 else 10**9
        for role, svc in (("client", "frontend"), ("server", "backend")):
            rows.append(dict(time_=t, service=svc, trace_role=role, latency=lat, req_method="GET", req_path="/x",
                             resp_status=500 if i % 50 == 0 else 200))
    with Store(path) as s:
        s.add_events("http_events", rows)
        s.flush()
    return path


def test_html_latency_on_a_log_scale_and_the_last_bucket_is_not_a_drop(steady_db, tmp_path):
    out = tmp_path / "s.html"
    assert cli_main(["report", "--db", steady_db, "--since", "15m", "--html", str(out)]) == 0
    charts = _svgs(out.read_text())
    lat = charts["backend · http server (log scale)"]
    ticks = {label: float(y) for y, label in re.findall(r'y="([\d.]+)" class="yl">([^<]*)<', lat)}
    assert {"1.00ms", "10.0ms", "100ms", "1.00s"} <= set(ticks), ticks
    # a decade is the same height wherever it is: 1 to 10 ms as tall as 10 to 100 ms
    low, high = ticks["1.00ms"] - ticks["10.0ms"], ticks["10.0ms"] - ticks["100ms"]
    assert low > 0 and abs(low - high) < 1, ticks
    rps_svg = charts["throughput (requests/s)"]
    bottom = float(re.search(r'y1="([\d.]+)" y2="\1" class="axis"', rps_svg).group(1))
    rps = _points(rps_svg)
    assert len(rps) == 2
    for line in rps:
        heights = [bottom - y for _, y in line]
        middle = sorted(heights[1:-1])[len(heights[1:-1]) // 2]
        # the last bucket holds 3 s of data: counted over those 3 s, not 10, it is as high as the rest
        assert 0.8 < heights[-1] / middle < 1.25, heights


def test_html_tells_client_from_server_and_errors_have_their_own_colour(steady_db, tmp_path):
    from apptrace.query.report.html import ERROR_COLOR, PALETTE

    out = tmp_path / "s.html"
    assert cli_main(["report", "--db", steady_db, "--since", "15m", "--html", str(out)]) == 0
    page = out.read_text()
    err = _svgs(page)["error rate"]
    lines = re.findall(r"<polyline[^>]*>\s*<title>([^<]*)</title>", err)
    assert sorted(lines) == ["backend · http server", "frontend · http client"], lines
    client = re.search(r'<polyline[^>]*stroke-dasharray="([^"]*)"[^>]*><title>frontend · http client', err)
    server = re.search(r'<polyline (?:(?!stroke-dasharray)[^>])*><title>backend · http server', err)
    assert client and server, err

    def hue(c: str) -> tuple[float, float]:
        import colorsys

        r, g, b = (int(c[i:i + 2], 16) / 255 for i in (1, 3, 5))
        h, _, s = colorsys.rgb_to_hls(r, g, b)
        return h * 360, s

    eh, _ = hue(ERROR_COLOR)
    for c in PALETTE:
        h, s = hue(c)
        assert s < 0.25 or min(abs(h - eh), 360 - abs(h - eh)) > 25, f"{c} reads as the error colour"
    dots = set(re.findall(r"class=dot style='background:(#[0-9a-f]{6})'", page))
    assert dots and ERROR_COLOR not in dots


def test_report_header_says_when_rows_end_and_limits_rows(steady_db, tmp_path, capsys):
    import time

    db = str(tmp_path / "old.duckdb")
    now = time.time_ns()
    with Store(db) as s:
        s.add_events("http_events", [dict(time_=now - 60 * 10**9, service=f"s{i:02d}", trace_role="server",
                                          latency=10**6, resp_status=200) for i in range(12)])
        s.flush()
    assert cli_main(["report", "--db", db, "--limit", "5"]) == 0
    out = capsys.readouterr().out
    m = re.search(r"rows end (\d+) s ago", out)
    assert m and int(m.group(1)) >= 60 and "no tracer running" in out, out
    assert "s04" in out and "s05" not in out and "7 more rows (--limit" in out, out
    assert cli_main(["report", "--db", db, "-o", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["rows_end_age_s"] >= 60 and got["tracer_live"] is False and len(got["services"]) == 12
    assert cli_main(["report", "--db", db, "--since", "30s"]) == 0
    out = capsys.readouterr().out
    assert "No HTTP, gRPC, MySQL or PostgreSQL events in the last 30s" in out and "rows end" in out
