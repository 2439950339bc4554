"""apptrace report: numbers match pandas on the same rows; HTML is self-contained and has the charts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser

import duckdb
import numpy as np
import pytest

from apptrace.cli import main as cli_main
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
