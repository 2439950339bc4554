"""px DataFrame API: every operation is checked against the same computation in pandas on the same rows."""

from __future__ import annotations

import os
import random
import tempfile
import time

import duckdb
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import apptrace.query.px as px
from apptrace.store import schema
from apptrace.store.wire import LOCKED_DOWN
from apptrace.store.writer import Store

NOW = time.time_ns()
SERVICES = ["cart", "checkout", "db-proxy"]
PATHS = ["/", "/api/items", "/api/pay", "/health"]
STATUSES = [200, 201, 204, 301, 404, 499, 500, 503]


def make_http_rows(n: int, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        role = rnd.choice(["client", "server"])
        rows.append({
            "time_": NOW - rnd.randrange(0, 600 * 10**9), "pid": rnd.choice([10, 11, 12]), "comm": "python3",
            "service": rnd.choice(SERVICES), "trace_role": role, "local_addr": "10.0.0.1",
            "local_port": 8443 if role == "server" else 40000 + i, "remote_addr": "10.0.0.2",
            "remote_port": 40000 + i if role == "server" else 8443, "encrypted": True, "tls_lib": "openssl",
            "latency": rnd.randrange(1_000, 50_000_000), "conn_id": f"{i}:3:0", "http_version": "1.1",
            "req_method": rnd.choice(["GET", "POST"]), "req_path": rnd.choice(PATHS),
            "req_headers": '{"host":"x"}', "req_body": "", "req_body_size": rnd.randrange(0, 5000),
            "resp_status": rnd.choice(STATUSES), "resp_message": "", "resp_headers": "{}",
            "resp_body": "ok", "resp_body_size": rnd.randrange(0, 100000), "content_type": "application/json",
            "grpc_status": None, "grpc_message": None, "stream_id": None,
        })
    return rows


def build_db(path: str, http_rows: list[dict], **more: list[dict]) -> str:
    with Store(path) as s:
        if http_rows:
            s.add_events("http_events", http_rows)
        for table, rows in more.items():
            s.add_events(table, rows)
        s.flush()
    return path


def table_df(path: str, table: str = "http_events") -> pd.DataFrame:
    # The same configuration as px's own connection: DuckDB refuses a second, different one in a process.
    con = duckdb.connect(path, read_only=True, config=LOCKED_DOWN)
    try:
        return con.sql(f"SELECT * FROM {table}").to_arrow_table().to_pandas()
    finally:
        con.close()


def same(a: pd.DataFrame, b: pd.DataFrame, keys: list[str] | None = None) -> None:
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert list(a.columns) == list(b.columns)
    if keys:
        a = a.sort_values(keys).reset_index(drop=True)
        b = b.sort_values(keys).reset_index(drop=True)
    assert len(a) == len(b)
    for c in a.columns:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y) and not (
                pd.api.types.is_bool_dtype(x)):
            np.testing.assert_allclose(x.astype(float).to_numpy(), y.astype(float).to_numpy(), rtol=1e-9,
                                       equal_nan=True, err_msg=c)
        else:
            assert [None if pd.isna(v) else v for v in x] == [None if pd.isna(v) else v for v in y], c


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("px") / "t.duckdb")
    return build_db(path, make_http_rows(2000))


@pytest.fixture
def sess(db):
    with px.session(db=db) as s:
        yield s


def test_seed_script_verbatim(db, sess):
    """The seed article's script, as printed, runs and matches pandas."""
    px.display(px.DataFrame('http_events').groupby(['service', 'req_path']).agg(
        p99_latency=('latency', px.quantiles, 0.99), error_rate=('resp_status', px.fraction, px.gt, 499)))
    # (the line above is the seed's script; the rest checks it)
    (got,) = [df for _, df in sess.outputs] or [None]
    if got is None:  # default session prints; re-run to get the frame
        got = px.DataFrame('http_events').groupby(['service', 'req_path']).agg(
            p99_latency=('latency', px.quantiles, 0.99),
            error_rate=('resp_status', px.fraction, px.gt, 499)).to_pandas()
    pdf = table_df(db)
    want = pdf.groupby(["service", "req_path"], as_index=False).agg(
        p99_latency=("latency", lambda s: s.quantile(0.99)),
        error_rate=("resp_status", lambda s: (s > 499).mean()))
    same(got, want, ["service", "req_path"])


def test_filter_assign_arith(db, sess):
    df = px.DataFrame("http_events")
    df.latency_ms = df.latency / 1_000_000
    df.big = (df.resp_body_size + df.req_body_size) * 2 - 1
    df = df[(df.latency_ms > 10) & ~(df.resp_status == 404) | (df.req_path == "/health")]
    df = df[["service", "req_path", "latency_ms", "big", "resp_status"]]
    got = df.to_pandas()
    p = table_df(db)
    p["latency_ms"] = p.latency / 1_000_000
    p["big"] = (p.resp_body_size + p.req_body_size) * 2 - 1
    p = p[(p.latency_ms > 10) & ~(p.resp_status == 404) | (p.req_path == "/health")]
    want = p[["service", "req_path", "latency_ms", "big", "resp_status"]]
    same(got, want, ["service", "req_path", "latency_ms", "big"])


def test_replace_column_and_string_ops(db, sess):
    df = px.DataFrame("http_events", select=["service", "req_path", "latency"])
    df.latency = df.latency // 1000
    df.label = df.service + ":" + df.req_path
    df.api = px.contains(df.req_path, "api")
    df.re = px.regex_match("/api/.*", df.req_path)
    df.slow = px.select(df.latency > 25_000, "slow", "fast")
    df.starts = df.req_path.startswith("/he")
    got = df.to_pandas()
    p = table_df(db)[["service", "req_path", "latency"]].copy()
    p["latency"] = p.latency // 1000
    p["label"] = p.service + ":" + p.req_path
    p["api"] = p.req_path.str.contains("api")
    p["re"] = p.req_path.str.fullmatch("/api/.*")
    p["slow"] = np.where(p.latency > 25_000, "slow", "fast")
    p["starts"] = p.req_path.str.startswith("/he")
    same(got, p, ["label", "latency"])


def test_drop_head_sort(db, sess):
    df = px.DataFrame("http_events").drop(["req_headers", "resp_headers"])
    assert "req_headers" not in df.columns and "latency" in df.columns
    top = df.sort("latency", ascending=False).head(7)[["latency", "service"]].to_pandas()
    p = table_df(db).sort_values("latency", ascending=False).head(7)[["latency", "service"]]
    same(top, p)
    assert len(px.DataFrame("http_events").head(3).to_pandas()) == 3


def test_all_aggregates(db, sess):
    df = px.DataFrame("http_events").groupby("service").agg(
        n=("latency", px.count), total=("resp_body_size", px.sum), avg=("latency", px.mean),
        lo=("latency", px.min), hi=("latency", px.max), one=("pid", px.any),
        q=("latency", px.quantiles), p50=("latency", px.quantiles, 0.5),
        ok=("resp_status", px.fraction, px.lt, 300), nf=("resp_status", px.fraction, px.eq, 404))
    df.p99 = px.pluck_float64(df.q, "p99")
    df.p10 = px.pluck_float64(df.q, "p10")
    got = df.to_pandas()
    p = table_df(db)
    want = p.groupby("service", as_index=False).agg(
        n=("latency", "count"), total=("resp_body_size", "sum"), avg=("latency", "mean"),
        lo=("latency", "min"), hi=("latency", "max"))
    g = p.groupby("service")
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p10", 0.1)):
        want[name] = want.service.map(g.latency.quantile(q))
    want["ok"] = want.service.map(g.resp_status.apply(lambda s: (s < 300).mean()))
    want["nf"] = want.service.map(g.resp_status.apply(lambda s: (s == 404).mean()))
    cols = ["service", "n", "total", "avg", "lo", "hi", "p50", "ok", "nf", "p99", "p10"]
    same(got[cols], want[cols], ["service"])
    pids = g.pid.apply(set)
    assert all(row.one in pids[row.service] for row in got.itertuples())
    assert set(got.q.iloc[0]) == {"p01", "p10", "p50", "p90", "p99"}


def test_global_agg(db, sess):
    got = px.DataFrame("http_events").agg(n=("latency", px.count), m=("latency", px.max)).to_pandas()
    p = table_df(db)
    assert got.n.iloc[0] == len(p) and got.m.iloc[0] == p.latency.max()


def test_bin_time_and_int(db, sess):
    df = px.DataFrame("http_events", select=["time_", "latency"])
    df.t = px.bin(df.time_, px.seconds(10))
    df.l = px.bin(df.latency, 1_000_000)
    df.t7 = px.bin(df.time_, px.nanoseconds(7_777))
    got = df.groupby(["t", "l"]).agg(n=("latency", px.count)).to_pandas()
    p = table_df(db)
    p["t"] = p.time_.dt.floor("10s")
    p["l"] = (p.latency // 1_000_000) * 1_000_000
    want = p.groupby(["t", "l"], as_index=False).agg(n=("latency", "count"))
    got["t"] = pd.to_datetime(got.t).astype("datetime64[ns]")
    same(got, want, ["t", "l"])
    t7 = df.to_pandas().t7.astype("int64")
    assert (t7 % 7_777 == 0).all()


def test_time_arithmetic_and_start_time(db, sess):
    df = px.DataFrame("http_events", start_time="-5m")
    p = table_df(db)
    now_ns = time.time_ns()
    n = len(df.to_pandas())
    lo = (p.time_.astype("int64") >= now_ns - 300 * 10**9 - 60 * 10**9).sum()
    hi = (p.time_.astype("int64") >= now_ns - 300 * 10**9).sum()
    assert hi <= n <= lo  # bounded by "now" before and after the query ran
    df = px.DataFrame("http_events")
    df.age = px.now() - df.time_
    df.later = df.time_ + px.minutes(1)
    df = df[df.time_ > px.now() - px.minutes(5)]
    got = df[["age", "later", "time_"]].to_pandas()
    assert (got.age >= 0).all() and (got.age < 360 * 10**9).all()
    assert ((got.later - got.time_) == pd.Timedelta(minutes=1)).all()
    assert len(got) >= hi


def test_datetime_literals(db, sess):
    import datetime as dt

    cut = pd.Timestamp(NOW - 300 * 10**9, unit="ns")
    df = px.DataFrame("http_events")
    n1 = len(df[df.time_ >= cut].to_pandas())
    n2 = len(df[df.time_ >= cut.floor("us").to_pydatetime().replace(tzinfo=dt.UTC)].to_pandas())
    p = table_df(db)
    assert n1 == (p.time_ >= cut).sum()
    assert n2 == (p.time_ >= cut.floor("us")).sum()


def test_top_level_px_is_apptrace_px():
    import px as top

    assert top is px and top.DataFrame is px.DataFrame


def test_merge_like_pandas(db, sess):
    df = px.DataFrame("http_events")
    a = df.groupby(["service", "req_path"]).agg(n=("latency", px.count))
    b = df[df.resp_status >= 500].groupby(["service", "req_path"]).agg(errs=("latency", px.count), n=("pid", px.max))
    for how in ("inner", "left", "outer"):
        got = a.merge(b, how=how, left_on=["service", "req_path"], right_on=["service", "req_path"],
                      suffixes=["", "_err"]).to_pandas()
        p = table_df(db)
        pa_ = p.groupby(["service", "req_path"], as_index=False).agg(n=("latency", "count"))
        pb = p[p.resp_status >= 500].groupby(["service", "req_path"], as_index=False).agg(
            errs=("latency", "count"), n=("pid", "max"))
        want = pa_.merge(pb, how=how, left_on=["service", "req_path"], right_on=["service", "req_path"],
                         suffixes=("", "_err"))
        same(got, want, ["service", "req_path"])


def test_merge_different_key_names(db, sess):
    df = px.DataFrame("http_events")
    a = df.groupby("service").agg(n=("latency", px.count))
    b = df.groupby("req_path").agg(n=("latency", px.count))
    b.svc = px.select(b.req_path == "/", "cart", "checkout")
    got = a.merge(b, how="inner", left_on="service", right_on="svc").to_pandas()
    p = table_df(db)
    pa_ = p.groupby("service", as_index=False).agg(n=("latency", "count"))
    pb = p.groupby("req_path", as_index=False).agg(n=("latency", "count"))
    pb["svc"] = np.where(pb.req_path == "/", "cart", "checkout")
    want = pa_.merge(pb, how="inner", left_on="service", right_on="svc")
    same(got, want, ["service", "req_path"])


def test_append(db, sess):
    df = px.DataFrame("http_events", select=["service", "latency"])
    got = df[df.latency < 1_000_000].append(df[df.latency > 40_000_000]).to_pandas()
    p = table_df(db)[["service", "latency"]]
    want = pd.concat([p[p.latency < 1_000_000], p[p.latency > 40_000_000]])
    same(got, want, ["service", "latency"])


def test_normalize_sql():
    with px.session(db="/nonexistent/x.duckdb"):
        con = duckdb.connect()
        cases = {
            ("mysql", "SELECT * FROM t1 WHERE id = 42 AND name = 'bob' AND x IN (1, 2,3)"):
                "SELECT * FROM t1 WHERE id = ? AND name = ? AND x IN (?)",
            ("mysql", 'INSERT INTO t VALUES (1, "a"), (2, "b"),(3,"c")'): "INSERT INTO t VALUES (?)",
            ("mysql", "select  0x1F,\n 3.14e5 from  t"): "select ?, ? from t",
            ("pgsql", "SELECT * FROM users WHERE id = $1 AND note = 'it''s'"):
                "SELECT * FROM users WHERE id = ? AND note = ?",
            ("pgsql", 'SELECT "Col1" FROM t WHERE a in (1,2)'): 'SELECT "Col1" FROM t WHERE a in (?)',
        }
        from apptrace.query.px.compiler import ExprCompiler

        for (dialect, q), want in cases.items():
            fn = px.normalize_mysql if dialect == "mysql" else px.normalize_pgsql
            sql = ExprCompiler({})(fn(px.lit(q)))
            assert con.execute(f"SELECT {sql}").fetchone()[0] == want, q


def test_errors_name_what_exists(db, sess):
    with pytest.raises(px.PxError, match="available tables: .*http_events"):
        px.DataFrame("http_event")
    df = px.DataFrame("http_events")
    with pytest.raises(px.PxError, match="unknown column 'latncy'.*latency"):
        df.latncy  # noqa: B018
    with pytest.raises(px.PxError, match="unknown column 'nope'"):
        df.groupby("nope")
    with pytest.raises(px.PxError, match="unknown column 'x'"):
        df.agg(a=("x", px.mean))
    with pytest.raises(px.PxError, match="truth value"):
        bool(df.latency > 1)
    with pytest.raises(px.PxError, match="not an aggregate"):
        df.agg(a=("latency", max))
    with pytest.raises(px.PxError, match="bad time"):
        px.DataFrame("http_events", start_time="yesterday")


def test_other_tables_and_pluck_json(tmp_path):
    path = build_db(str(tmp_path / "t.duckdb"), make_http_rows(50), mysql_events=[
        {"time_": NOW, "service": "a", "req_body": "SELECT 1", "resp_status": "OK", "latency": 5},
        {"time_": NOW, "service": "a", "req_body": "SELECT 2", "resp_status": "ERR", "latency": 7}])
    with px.session(db=path):
        df = px.DataFrame("mysql_events")
        df.q = px.normalize_mysql(df.req_body)
        got = df.groupby("q").agg(n=("latency", px.count), err=("resp_status", px.fraction, px.eq, "ERR"))
        assert got.to_pandas().to_dict("records") == [{"q": "SELECT ?", "n": 2, "err": 0.5}]
        h = px.DataFrame("http_events")
        h.host = px.pluck(h.req_headers, "host")
        assert set(h.to_pandas().host) == {"x"}


rows_strategy = st.lists(
    st.fixed_dictionaries({
        "service": st.sampled_from(SERVICES), "req_path": st.sampled_from(PATHS),
        "latency": st.integers(0, 10**9), "resp_status": st.sampled_from(STATUSES),
        "req_body_size": st.integers(0, 10**6)}),
    min_size=1, max_size=60)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, threshold=st.integers(0, 10**9), q=st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.99, 1.0]))
def test_hypothesis_filter_groupby_agg(rows, threshold, q):
    full = [{**{c: None for c in schema.columns("http_events")}, "time_": NOW + i, **r} for i, r in enumerate(rows)]
    with tempfile.TemporaryDirectory() as d:
        path = build_db(os.path.join(d, "h.duckdb"), full)
        with px.session(db=path):
            df = px.DataFrame("http_events")
            df = df[df.latency >= threshold]
            df.kb = df.req_body_size / 1024
            got = df.groupby(["service"]).agg(
                n=("latency", px.count), s=("req_body_size", px.sum), m=("kb", px.mean),
                qq=("latency", px.quantiles, q), err=("resp_status", px.fraction, px.ge, 500)).to_pandas()
        p = pd.DataFrame(rows)
        p = p[p.latency >= threshold].copy()
        p["kb"] = p.req_body_size / 1024
        want = p.groupby("service", as_index=False).agg(
            n=("latency", "count"), s=("req_body_size", "sum"), m=("kb", "mean"),
            qq=("latency", lambda s: s.quantile(q)), err=("resp_status", lambda s: (s >= 500).mean()))
        same(got, want, ["service"])


class CountingBackend:
    """A real FileBackend that counts the queries it runs."""

    def __init__(self, path: str) -> None:
        from apptrace.query.backend import FileBackend

        self.inner = FileBackend(path)
        self.queries: list[str] = []
        self.description = "counting"

    def query_arrow(self, sql: str):
        self.queries.append(sql)
        return self.inner.query_arrow(sql)

    def close(self) -> None:
        self.inner.close()


def test_one_query_per_display(db):
    backend = CountingBackend(db)
    with px.session(backend=backend, collect=True) as s:
        df = px.DataFrame("http_events", start_time="-1h")
        df.ms = df.latency / 1e6
        a = df[df.resp_status >= 500].groupby("service").agg(errors=("ms", px.count))
        b = df.groupby("service").agg(n=("ms", px.count), q=("ms", px.quantiles))
        m = b.merge(a, how="left", left_on="service", right_on="service").append(
            b.merge(a, how="left", left_on="service", right_on="service"))
        m.p99 = px.pluck_float64(m.q, "p99")
        n_catalog = len(backend.queries)
        px.display(m.drop("q"), "m")
        assert len(backend.queries) - n_catalog == 1
        assert len(s.outputs[0][1]) == 2 * len(SERVICES)


def test_connect_to_an_open_connection(db):
    con = duckdb.connect(db, read_only=True)
    try:
        s = px.connect(con=con)
        assert len(px.DataFrame("http_events").head(2).to_pandas()) == 2
        assert s.backend is not None
    finally:
        import sys

        sys.modules["apptrace.query.px.session"]._stack.clear()  # connect() replaced the default session; drop it
        con.close()


def test_size_coalesce_and_time_as_int(tmp_path):
    """px.size counts every row (px.count only non-null values), px.coalesce fills nulls, px.int64 of a time is
    its ns since the epoch — checked against pandas on rows with nulls in service, trace_role and latency."""
    rows = [{**{c: None for c in schema.columns("http_events")}, "time_": NOW - i * 10**9,
             "service": None if i % 4 == 0 else SERVICES[i % 3], "trace_role": None if i % 5 == 0 else "server",
             "latency": None if i % 3 == 0 else 1000 * i} for i in range(40)]
    path = build_db(str(tmp_path / "n.duckdb"), rows)
    with px.session(db=path):
        df = px.DataFrame("http_events")
        df.service = px.coalesce(df.service, "?")
        df.role = px.coalesce(df.trace_role, df.comm, "?")
        df.label = df.service + "/" + df.role  # a str, so + is concatenation
        df.t = px.int64(df.time_)
        got = df.groupby(["service", "label"]).agg(
            rows=("latency", px.size), with_latency=("latency", px.count), first=("t", px.min)).to_pandas()
    p = table_df(path)
    p["service"] = p.service.fillna("?")
    p["label"] = p.service + "/" + p.trace_role.fillna("?")
    p["t"] = p.time_.astype("int64")
    want = p.groupby(["service", "label"], as_index=False).agg(
        rows=("latency", "size"), with_latency=("latency", "count"), first=("t", "min"))
    same(got, want, ["service", "label"])
    assert (got.rows > got.with_latency).any()  # the nulls are there, and size counts them


def test_builtin_schema_session_asks_the_database_nothing(db):
    backend = CountingBackend(db)
    with px.session(backend=backend, builtin_schema=True) as s:
        s.close = lambda: None  # the backend is closed below
        df = px.DataFrame("http_events", start_time="-1h")
        assert backend.queries == []
        assert len(df.head(3).to_pandas()) == 3 and len(backend.queries) == 1
    backend.close()


def test_quantiles_of_a_list(db, sess):
    """px.quantiles with a list of q: a struct of just those, each named like the default ones (0.5 → p50)."""
    df = px.DataFrame("http_events").groupby("service").agg(
        q=("latency", px.quantiles, [0.5, 0.99, 0.999]), one=("latency", px.quantiles, (0.25,)))
    df.p50 = px.pluck_float64(df.q, "p50")
    df.p99 = px.pluck_float64(df.q, "p99")
    df.p999 = px.pluck_float64(df.q, "p99.9")
    df.p25 = px.pluck_float64(df.one, "p25")
    got = df.to_pandas()
    assert set(got.q.iloc[0]) == {"p50", "p99", "p99.9"}
    g = table_df(db).groupby("service").latency
    want = pd.DataFrame({"service": sorted(got.service)})
    for name, q in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999), ("p25", 0.25)):
        want[name] = want.service.map(g.quantile(q))
    same(got[["service", "p50", "p99", "p999", "p25"]], want, ["service"])
    for bad in ([], [0.5, 0.5], [1.5], ["x"]):
        with pytest.raises(px.PxError, match="px.quantiles"):
            px.DataFrame("http_events").agg(q=("latency", px.quantiles, bad)).to_sql()


# -- type errors point at the script's line, in px's terms -------------------------------------------------------
@pytest.mark.parametrize("mistake, needle", [
    ("df.x = df.req_path + 1", "type error: cannot compute df.req_path (text) + 1 (a number)"),
    ("df = df[df.req_path > 5]", "type error: cannot compare df.req_path (text) with 5 (a number)"),
    ("df = df[df.latency]", "type error: a filter keeps the rows where a condition holds"),
    ("df = df[(df.latency > 1) & df.latency]", "type error: & joins conditions"),
    ("df = df.groupby('service').agg(m=('req_path', px.mean))", "px.mean needs numbers, and df.req_path is text"),
    # caught by the database, not by px: still its own line, and no SQL
    ("df.x = px.substring(df.latency, 0, 2)", "substring"),
])
def test_a_type_error_names_the_line_of_the_mistake_without_sql(db, tmp_path, mistake, needle):
    from apptrace.query.scripts import UserError, run_script

    path = str(tmp_path / "typo.pxl")
    with open(path, "w") as f:
        f.write("import px\n"
                "df = px.DataFrame('http_events', start_time='-1h')\n"
                f"{mistake}\n"
                "df = df.head(5)\n"
                "px.display(df, 'out')\n")
    with pytest.raises(UserError) as err:
        run_script(path, db)
    msg = str(err.value)
    assert msg.startswith(f"{path}:3: "), msg
    assert needle in msg, msg
    assert "SELECT" not in msg and "LINE 1" not in msg and "\n" not in msg, msg


def test_type_checks_leave_good_expressions_alone(db, sess):
    df = px.DataFrame("http_events")
    df.label = df.req_method + " " + df.req_path + px.string(df.resp_status)
    df.slow = (df.latency > 1000) & ~(df.resp_status >= 500) | df.req_path.contains("api")
    df.recent = df.time_ > "2020-01-01"
    df = df[df.slow & (df.time_ > px.now() - px.minutes(60))]
    df.ms = -df.latency / 1e6
    out = df.groupby("service").agg(n=("label", px.count), f=("slow", px.sum), m=("ms", px.mean)).to_pandas()
    assert len(out) > 0
