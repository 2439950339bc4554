"""Property tests: random rows, random parameters; px and pandas must agree on merge, bin, sort/head, append."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

import apptrace.query.px as px
from apptrace.store import schema
from tests.test_px import NOW, PATHS, SERVICES, STATUSES, build_db, same

rows_st = st.lists(
    st.fixed_dictionaries({
        "service": st.sampled_from(SERVICES), "req_path": st.sampled_from(PATHS),
        "latency": st.integers(0, 10**8), "resp_status": st.sampled_from(STATUSES),
        "offset": st.integers(0, 10**12)}),
    min_size=1, max_size=50)


def with_db(rows, fn):
    full = []
    for i, r in enumerate(rows):
        row = {c: None for c in schema.columns("http_events")}
        row.update(service=r["service"], req_path=r["req_path"], latency=r["latency"],
                   resp_status=r["resp_status"], time_=NOW - r["offset"] * 1000 + i, pid=i)
        full.append(row)
    with tempfile.TemporaryDirectory() as d:
        path = build_db(os.path.join(d, "h.duckdb"), full)
        with px.session(db=path):
            got = fn()
    p = pd.DataFrame(full)
    p["time_"] = pd.to_datetime(p.time_, unit="ns")
    return got, p


@settings(max_examples=12, deadline=None)
@given(rows=rows_st, cut=st.integers(0, 10**8), how=st.sampled_from(["inner", "left", "right", "outer"]))
def test_merge(rows, cut, how):
    def run():
        df = px.DataFrame("http_events")
        a = df[df.latency < cut].groupby("service").agg(n=("latency", px.count), m=("latency", px.max))
        b = df[df.latency >= cut].groupby("service").agg(n=("latency", px.count), lo=("latency", px.min))
        return a.merge(b, how=how, left_on="service", right_on="service").to_pandas()

    got, p = with_db(rows, run)
    a = p[p.latency < cut].groupby("service", as_index=False).agg(n=("latency", "count"), m=("latency", "max"))
    b = p[p.latency >= cut].groupby("service", as_index=False).agg(n=("latency", "count"), lo=("latency", "min"))
    want = a.merge(b, how=how, left_on="service", right_on="service")
    same(got, want, ["service"])


@settings(max_examples=12, deadline=None)
@given(rows=rows_st, size_ms=st.sampled_from([1, 10, 100, 1000, 60_000]), lat_bin=st.integers(1, 10**7))
def test_bin(rows, size_ms, lat_bin):
    def run():
        df = px.DataFrame("http_events", select=["time_", "latency"])
        df.t = px.bin(df.time_, px.milliseconds(size_ms))
        df.l = px.bin(df.latency, lat_bin)
        return df.groupby(["t", "l"]).agg(n=("latency", px.count)).to_pandas()

    got, p = with_db(rows, run)
    p["t"] = p.time_.dt.floor(f"{size_ms}ms")
    p["l"] = (p.latency // lat_bin) * lat_bin
    want = p.groupby(["t", "l"], as_index=False).agg(n=("latency", "count"))
    got["t"] = pd.to_datetime(got.t).astype("datetime64[ns]")
    same(got, want, ["t", "l"])


@settings(max_examples=12, deadline=None)
@given(rows=rows_st, n=st.integers(0, 60), asc=st.booleans())
def test_sort_head_append(rows, n, asc):
    def run():
        df = px.DataFrame("http_events", select=["pid", "latency", "service"])
        top = df.sort(["latency", "pid"], ascending=asc).head(n)
        both = top.append(df[df.service == "cart"])
        return top.to_pandas(), both.to_pandas()

    (top, both), p = with_db(rows, run)
    p = p[["pid", "latency", "service"]]
    want = p.sort_values(["latency", "pid"], ascending=asc).head(n)
    same(top, want)  # order matters here
    same(both, pd.concat([want, p[p.service == "cart"]]), ["pid", "service"])


@settings(max_examples=12, deadline=None)
@given(rows=rows_st, k=st.integers(-5, 5))
def test_select_and_predicates(rows, k):
    def run():
        df = px.DataFrame("http_events", select=["latency", "resp_status", "req_path"])
        df.v = px.select(df.resp_status >= 500, df.latency * k, df.latency % 7)
        df.f = px.ge(df.resp_status, 404) | px.eq(df.req_path, "/")
        df = df[px.ne(df.resp_status, 301)]
        return df.to_pandas()

    got, p = with_db(rows, run)
    p = p[["latency", "resp_status", "req_path"]].copy()
    p["v"] = np.where(p.resp_status >= 500, p.latency * k, p.latency % 7)
    p["f"] = (p.resp_status >= 404) | (p.req_path == "/")
    p = p[p.resp_status != 301]
    same(got, p, ["latency", "resp_status", "req_path", "v"])
