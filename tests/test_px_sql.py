"""SQL snapshot tests: the one query each px program compiles to (against the built-in schema, no DB)."""

from __future__ import annotations

import pytest

import apptrace.query.px as px


@pytest.fixture(autouse=True)
def offline():
    with px.session(db="/nonexistent/apptrace.duckdb") as s:
        yield s


SEED_SQL = """\
WITH t0 AS (
  SELECT * FROM "http_events"
),
t1 AS (
  SELECT "service", "req_path", quantile_cont("latency", 0.99) AS "p99_latency", \
avg(CASE WHEN ("resp_status" > 499) THEN 1.0 ELSE 0.0 END) AS "error_rate" FROM t0 GROUP BY "service", "req_path"
)
SELECT * FROM t1"""


def test_seed_sql():
    df = px.DataFrame('http_events').groupby(['service', 'req_path']).agg(
        p99_latency=('latency', px.quantiles, 0.99), error_rate=('resp_status', px.fraction, px.gt, 499))
    assert df.to_sql() == SEED_SQL


def test_pipeline_sql():
    df = px.DataFrame("http_events", select=["time_", "service", "latency"], start_time="-5m")
    df.t = px.bin(df.time_, px.seconds(10))
    df = df[df.latency > px.milliseconds(5)]
    df = df.groupby(["t", "service"]).agg(lat=("latency", px.quantiles))
    df.p99 = px.pluck_float64(df.lat, "p99")
    df = df.drop("lat").sort("p99", ascending=False).head(3)
    assert df.to_sql() == """\
WITH t0 AS (
  SELECT "time_", "service", "latency" FROM "http_events" WHERE time_ >= make_timestamp_ns(epoch_ns(now()) - 300000000000)
),
t1 AS (
  SELECT *, time_bucket(INTERVAL 10000000 MICROSECOND, "time_") AS "t" FROM t0
),
t2 AS (
  SELECT * FROM t1 WHERE ("latency" > 5000000)
),
t3 AS (
  SELECT "t", "service", {'p01': quantile_cont("latency", [0.01, 0.1, 0.5, 0.9, 0.99]::DOUBLE[])[1], \
'p10': quantile_cont("latency", [0.01, 0.1, 0.5, 0.9, 0.99]::DOUBLE[])[2], \
'p50': quantile_cont("latency", [0.01, 0.1, 0.5, 0.9, 0.99]::DOUBLE[])[3], \
'p90': quantile_cont("latency", [0.01, 0.1, 0.5, 0.9, 0.99]::DOUBLE[])[4], \
'p99': quantile_cont("latency", [0.01, 0.1, 0.5, 0.9, 0.99]::DOUBLE[])[5]} AS "lat" FROM t2 GROUP BY "t", "service"
),
t4 AS (
  SELECT *, CAST(struct_extract("lat", 'p99') AS DOUBLE) AS "p99" FROM t3
),
t5 AS (
  SELECT * EXCLUDE ("lat") FROM t4
),
t6 AS (
  SELECT * FROM t5 ORDER BY "p99" DESC NULLS LAST LIMIT 3
)
SELECT * FROM t6 ORDER BY "p99" DESC NULLS LAST"""


def test_merge_append_sql():
    a = px.DataFrame("http_events", select=["service", "latency"])
    b = px.DataFrame("mysql_events", select=["service", "latency"])
    u = a.append(b)
    m = u.groupby("service").agg(n=("latency", px.count)).merge(
        a.groupby("service").agg(n=("latency", px.count)), how="left", left_on="service", right_on="service")
    assert m.to_sql() == """\
WITH t0 AS (
  SELECT "service", "latency" FROM "http_events"
),
t1 AS (
  SELECT "service", "latency" FROM "mysql_events"
),
t2 AS (
  SELECT "service", "latency" FROM t0 UNION ALL BY NAME SELECT "service", "latency" FROM t1
),
t3 AS (
  SELECT "service", count("latency") AS "n" FROM t2 GROUP BY "service"
),
t4 AS (
  SELECT "service", count("latency") AS "n" FROM t0 GROUP BY "service"
),
t5 AS (
  SELECT l."service" AS "service", l."n" AS "n_x", r."n" AS "n_y" FROM t3 AS l LEFT JOIN t4 AS r ON l."service" = r."service"
)
SELECT * FROM t5"""


def test_functions_sql():
    df = px.DataFrame("http_events", select=["req_path", "resp_status", "time_"], end_time=1_700_000_000_000_000_000)
    df.ok = px.select(px.regex_match("/api/.*", df.req_path) & ~px.contains(df.req_path, "x"), 1, 0)
    df.age = px.now() - df.time_
    df.p = df.req_path + "!"
    assert df.to_sql() == """\
WITH t0 AS (
  SELECT "req_path", "resp_status", "time_" FROM "http_events" WHERE time_ < make_timestamp_ns(1700000000000000000)
),
t1 AS (
  SELECT *, (CASE WHEN (regexp_full_match("req_path", '/api/.*') AND (NOT contains("req_path", 'x'))) THEN 1 ELSE 0 END) AS "ok" FROM t0
),
t2 AS (
  SELECT *, (epoch_ns(make_timestamp_ns(epoch_ns(now()))) - epoch_ns("time_")) AS "age" FROM t1
),
t3 AS (
  SELECT *, ("req_path" || '!') AS "p" FROM t2
)
SELECT * FROM t3"""


def test_size_coalesce_int64_sql():
    df = px.DataFrame("mysql_events", select=["time_", "service", "latency"])
    df.service = px.coalesce(df.service, "?")
    df = df.groupby("service").agg(n=("latency", px.size), first=("time_", px.min))
    df.first_ns = px.int64(df.first)
    assert df.to_sql() == """\
WITH t0 AS (
  SELECT "time_", "service", "latency" FROM "mysql_events"
),
t1 AS (
  SELECT * REPLACE (coalesce("service", '?') AS "service") FROM t0
),
t2 AS (
  SELECT "service", count(*) AS "n", min("time_") AS "first" FROM t1 GROUP BY "service"
),
t3 AS (
  SELECT *, epoch_ns("first") AS "first_ns" FROM t2
)
SELECT * FROM t3"""


def test_types_of_the_additions():
    from apptrace.query.px.expr import infer

    schema = {"service": "str", "latency": "int", "time_": "time"}
    assert infer(px.coalesce(px.col("service"), "?"), schema) == "str"
    assert infer(px.coalesce(px.lit(None), px.col("latency")), schema) == "int"
    assert infer(px.int64(px.col("time_")), schema) == "int"
    df = px.DataFrame("http_events").groupby("service").agg(n=("latency", px.size))
    assert df._rel.schema == {"service": "str", "n": "int"}
    with pytest.raises(px.PxError, match="at least one value"):
        px.coalesce(px.col("service"))


@pytest.mark.parametrize(("start", "ns"), [("-0s", 0), (px.seconds(0), 0), ("-5m", 300 * 10**9),
                                           (px.minutes(5), 300 * 10**9), (-300 * 10**9, 300 * 10**9)])
def test_relative_start_times_are_windows_ending_now(start, ns):
    """A relative start is always "that long before now" (rules.since_sql) — including a window of zero, which
    must not turn into the epoch."""
    from apptrace.query.rules import since_sql

    sql = px.DataFrame("http_events", start_time=start).to_sql()
    assert f"WHERE time_ >= {since_sql(ns)}\n" in sql


def test_quantiles_list_sql():
    df = px.DataFrame("http_events", select=["service", "latency"]).groupby("service").agg(
        q=("latency", px.quantiles, [0.5, 0.99]))
    assert df._rel.schema["q"] == "struct"
    assert df.to_sql() == """\
WITH t0 AS (
  SELECT "service", "latency" FROM "http_events"
),
t1 AS (
  SELECT "service", {'p50': quantile_cont("latency", [0.5, 0.99]::DOUBLE[])[1], \
'p99': quantile_cont("latency", [0.5, 0.99]::DOUBLE[])[2]} AS "q" FROM t0 GROUP BY "service"
)
SELECT * FROM t1"""
