"""Redaction (apptrace.store.redact): every rule, its properties (hypothesis), the columnar path of the store,
and the printed output of watch and of trace's live rows — on real DuckDB files and the real CLI."""

from __future__ import annotations

import json
import time

import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apptrace.analysis.loop import RowPrinter, row_line
from apptrace.cli import main as cli_main
from apptrace.store.redact import KINDS, REDACTED, SECRET_HEADERS, SECRET_PARAMS, Redactor
from apptrace.store.writer import Store, arrow_table

R = Redactor()


# -- headers and gRPC metadata ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*SECRET_HEADERS, "X-Amz-Security-Token", "x-client-secret", "db-password",
                                  "x-goog-api-key", "AUTHORIZATION"])
def test_secret_headers(name):
    out = json.loads(R.headers(json.dumps({name: "ZQ-value-1", "host": "example"})))
    assert out == {name: REDACTED, "host": "example"}


def test_header_lists_and_grpc_metadata():
    h2 = {"content-type": "application/grpc", "authorization": "Bearer ZQgrpc", "x-api-key": ["ZQa", "ZQb"],
          "grpc-timeout": "1S", "te": "trailers"}
    out = json.loads(R.headers(json.dumps(h2)))
    assert out["authorization"] == REDACTED and out["x-api-key"] == [REDACTED, REDACTED]
    assert out["grpc-timeout"] == "1S" and out["te"] == "trailers"


def test_urls_inside_other_headers():
    out = json.loads(R.headers(json.dumps({
        "referer": "https://app.example/cb?state=1&access_token=ZQtok#x",
        "location": "https://bob:ZQpw@files.example/f?x=1",
        "accept": "*/*"})))
    assert out == {"referer": f"https://app.example/cb?state=1&access_token={REDACTED}#x",
                   "location": f"https://bob:{REDACTED}@files.example/f?x=1", "accept": "*/*"}


def test_half_parsed_header_block():
    assert "ZQ" not in R.headers("Authorization: Bearer ZQ1\nHost: a\nX-Auth-Token: ZQ2")
    assert R.headers("Host: a") == "Host: a"


# -- URLs and query strings ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["token", "access_token", "api_key", "key", "secret", "password", "signature",
                                  "sig", "X-Amz-Signature", "X-Amz-Credential", "client_secret", "apiKey", "pwd",
                                  "refresh_token", "user[password]"])
def test_query_parameters(name):
    path = f"/v1/items?page=2&{name}=ZQ-1.2_3%2F4&sort=asc"
    assert R.text(path) == f"/v1/items?page=2&{name}={REDACTED}&sort=asc"


def test_userinfo_and_ordinary_urls():
    assert R.text("http://alice:ZQpw@proxy.example:8080/x") == f"http://alice:{REDACTED}@proxy.example:8080/x"
    for plain in ("/users/42?page=3&sort=name", "/hello", "/search?q=monkey+keys", "https://a.example/x#frag",
                  "/a?x=1&y=2"):
        assert R.text(plain) == plain
    assert R.text("/p?keyboard=us") == "/p?keyboard=us"


# -- bodies --------------------------------------------------------------------------------------------------------
def test_json_bodies_nested_arrays_numbers_and_escaped():
    body = json.dumps({"user": "bob", "password": "ZQ1", "profile": {"api_key": "ZQ2", "tags": ["a", "b"]},
                       "items": [{"token": 12345}, {"secret": {"k": "ZQ3"}}], "note": "fine"})
    out = R.text(body)
    assert "ZQ" not in out and "12345" not in out
    obj = json.loads(out)
    assert obj["user"] == "bob" and obj["note"] == "fine" and obj["profile"]["tags"] == ["a", "b"]
    assert obj["password"] == REDACTED and obj["items"][1]["secret"] == REDACTED
    # JSON inside a JSON string, and JSON in the middle of other text
    inner = json.dumps({"payload": json.dumps({"password": "ZQ4", "n": 1})})
    assert "ZQ4" not in R.text(inner)
    assert "ZQ5" not in R.text('log line: {"Authorization": "Bearer ZQ5"} done')


def test_json_body_cut_anywhere_never_leaks_a_started_value():
    """A body cut at the size cap: every prefix of the secret that made it into the body is redacted."""
    secret = "ZQXJ9876"
    body = json.dumps({"user": "bob", "password": secret, "meta": {"refresh_token": secret}, "n": 1})
    for cut in range(len(body) + 1):
        out = R.text(body[:cut])
        for start in [i for i in range(len(body)) if body.startswith(secret, i)]:
            seen = body[start:cut]
            if seen:
                assert seen not in out.replace(REDACTED, ""), (cut, out)


def test_form_and_multipart_bodies():
    assert R.text("user=bob&password=ZQ1&remember=on") == f"user=bob&password={REDACTED}&remember=on"
    assert R.text("grant_type=refresh_token&refresh_token=ZQ2&client_secret=ZQ3") == (
        f"grant_type=refresh_token&refresh_token={REDACTED}&client_secret={REDACTED}")
    multipart = ('--b\r\nContent-Disposition: form-data; name="user"\r\n\r\nbob\r\n--b\r\n'
                 'Content-Disposition: form-data; name="password"\r\n\r\nZQ4\r\n--b--\r\n')
    out = R.text(multipart)
    assert "ZQ4" not in out and "bob" in out


def test_name_value_lines():
    out = R.text("host: a\npassword: ZQ1\nAPI_KEY: ZQ2\nurl: https://x.example/\n")
    assert out == f"host: a\npassword: {REDACTED}\nAPI_KEY: {REDACTED}\nurl: https://x.example/\n"


# -- SQL -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sql", [
    "CREATE USER 'app'@'%' IDENTIFIED BY 'ZQ1'",
    "create user app identified by 'ZQ1' PASSWORD EXPIRE NEVER",
    "ALTER USER 'app'@'localhost' IDENTIFIED WITH mysql_native_password BY 'ZQ1'",
    "ALTER USER app IDENTIFIED BY 'ZQ1' REPLACE 'ZQ2'",
    "CREATE USER u IDENTIFIED VIA ed25519 USING PASSWORD('ZQ1')",
    "CREATE USER u IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD(\"ZQ1\")",
    "GRANT ALL ON *.* TO 'u'@'%' IDENTIFIED BY PASSWORD '*ZQ1'",
    "SET PASSWORD FOR 'app'@'%' = PASSWORD('ZQ1')",
    "SET PASSWORD FOR app@localhost = 'ZQ1'",
    "SET PASSWORD = 'ZQ1'",
    "CREATE ROLE app WITH LOGIN PASSWORD 'ZQ1' VALID UNTIL '2030-01-01'",
    "ALTER ROLE app ENCRYPTED PASSWORD 'SCRAM-SHA-256$4096:ZQ1'",
    "CREATE USER app PASSWORD E'ZQ1\\'x'",
    "ALTER USER app PASSWORD $$ZQ1$$",
    "ALTER USER app PASSWORD $pw$ZQ1$pw$",
    "UPDATE accounts SET api_token = 'ZQ1', name = 'bob' WHERE id = 7",
    "SELECT * FROM users WHERE password = 'ZQ1'",
    "INSERT INTO t (doc) VALUES ('{\"password\": \"ZQ1\"}')",
    "CREATE USER app IDENTIFIED BY 'ZQ1",  # cut at the body cap inside the literal
])
def test_sql_password_literals(sql):
    out = R.sql(sql)
    assert "ZQ" not in out, out
    assert REDACTED in out


def test_sql_left_alone():
    for sql in ("SELECT password, name FROM users", "CREATE USER u PASSWORD EXPIRE", "SELECT * FROM items WHERE id = 1",
                "SELECT 'passage' AS p", "SELECT key, value FROM kv WHERE key = 'a'",
                "ALTER TABLE t ADD COLUMN token_count INT"):
        assert R.sql(sql) == sql


def test_prepared_statement_values_rendered_into_sql():
    # What the MySQL and PostgreSQL parsers store for an execute: the SQL with its bound values in place.
    assert "ZQ" not in R.sql("UPDATE users SET password = 'ZQprep', updated = 1 WHERE id = 3")
    assert "ZQ" not in R.sql("ALTER USER app WITH PASSWORD 'ZQprep'")


# -- command lines -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cmd", [
    "curl -sS -H Authorization: Bearer ZQ1 ZQ1b https://api.example/x",
    "curl -H X-Api-Key:ZQ1 https://api.example/x",
    "curl --header=Cookie: sid=ZQ1 https://api.example/x",
    "curl -u bob:ZQ1 https://api.example/x",
    "curl https://bob:ZQ1@api.example/x?token=ZQ2",
    "mysql -uroot -pZQ1 -h db shop",
    "/usr/bin/mariadb --ssl -h127.0.0.1 -P3306 -uapp -pZQ1",
    "mysqldump --password=ZQ1 shop",
    "app --password ZQ1 --verbose",
    "app --api-key=ZQ1",
    "app --client-secret ZQ1",
    "psql host=db port=5432 user=app password=ZQ1 sslmode=require",
    "psql postgresql://app:ZQ1@db:5432/shop",
    "env TOKEN=ZQ1 worker",
    "mariadb -uapp -e CREATE USER 'u'@'%' IDENTIFIED BY 'ZQ1'; SET PASSWORD FOR 'u'@'%' = PASSWORD('ZQ2');",
    "psql -c CREATE ROLE r LOGIN PASSWORD 'ZQ1' -c ALTER USER r PASSWORD 'ZQ2'",
])
def test_command_lines(cmd):
    out = R.cmdline(cmd)
    assert "ZQ" not in out, out
    assert out.split()[0] == cmd.split()[0]


def test_command_lines_left_alone():
    for cmd in ("nghttpd -v 8443 /tmp/key.pem /tmp/cert.pem", "ssh -p 2222 host", "curl --key client-key.pem "
                "--cert client.pem https://a.example/", "python3 -m apptrace.demo.server --port 8443",
                "psql -U postgres -p 5432", "mariadb -uroot -p"):
        assert R.cmdline(cmd) == cmd


# -- names added by options --------------------------------------------------------------------------------------
def test_extra_header_and_param_names():
    r = Redactor(["X-Tenant"], ["otp"])
    assert json.loads(r.headers('{"x-tenant":"ZQ1","host":"h"}')) == {"x-tenant": REDACTED, "host": "h"}
    assert r.text("/login?otp=ZQ2&next=/") == f"/login?otp={REDACTED}&next=/"
    assert "ZQ3" not in r.text('{"OTP": "ZQ3"}')
    assert R.text("/login?otp=1") == "/login?otp=1"  # not a secret without the option


# -- properties ----------------------------------------------------------------------------------------------------
NAMES = [*SECRET_HEADERS, *SECRET_PARAMS, "token", "access_token", "api_key", "password", "passwd", "secret",
         "signature", "x-api-key", "client_secret", "db_password", "X-Auth-Token"]
# values with a marker no rule or name contains, so "did it leak" is a substring test
VALUE = st.text(alphabet="ABCDEFGHJKLMNOPQRSTUVWXYZ0123456789_.~-", min_size=1, max_size=20).map(lambda v: "ZQ" + v)
ANY_TEXT = st.one_of(
    st.text(max_size=200),
    st.text(alphabet="\"'{}[]:=&?#@/\\ \n\r\t,;$()-_.<>abkeystokenpasswordidentifiedbyZQ", max_size=200),
)


def _cased(name: str, flags: list[bool]) -> str:
    return "".join(c.upper() if i < len(flags) and flags[i] else c for i, c in enumerate(name))


@settings(max_examples=400, deadline=None)
@given(kind=st.sampled_from(KINDS), text=ANY_TEXT)
def test_never_raises_and_is_idempotent(kind, text):
    once = R.value(kind, text)
    assert isinstance(once, str)
    assert R.value(kind, once) == once


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(NAMES), flags=st.lists(st.booleans(), max_size=30), value=VALUE,
       where=st.sampled_from(["query", "form", "json", "json-nested", "json-cut", "header", "line", "cmd"]))
def test_a_listed_name_never_keeps_its_value(name, flags, value, where):
    name = _cased(name, flags)
    if where == "query":
        out = R.text(f"/a/b?x=1&{name}={value}&y=2")
    elif where == "form":
        out = R.text(f"a=1&{name}={value}")
    elif where == "json":
        out = R.text(json.dumps({"a": 1, name: value}))
    elif where == "json-nested":
        out = R.text(json.dumps({"a": [{"b": {name: {"v": value}}}]}))
    elif where == "json-cut":
        body = json.dumps({"a": 1, name: value + "tail"})
        out = R.text(body[: body.index(value) + len(value)])
    elif where == "header":
        out = R.headers(json.dumps({name: value, "host": "h"}) if name.lower() in SECRET_HEADERS
                        else json.dumps({"referer": f"https://h/?{name}={value}"}))
    elif where == "line":
        out = R.text(f"first: 1\n{name}: {value}\nlast: 2")
    else:
        out = R.cmdline(f"tool --{name}={value} https://h/")
    assert value not in out, out


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.one_of(st.none(), ANY_TEXT, st.sampled_from([
    '{"authorization":"Bearer ZQ1","host":"h"}', "/x?token=ZQ2", "CREATE USER u IDENTIFIED BY 'ZQ3'",
    "mysql -pZQ4", '{"password":"ZQ5"}'])), min_size=1, max_size=12))
def test_columnar_prefilter_equals_the_rules_on_every_value(values):
    """The store's Arrow prefilter picks every value the rules would change (so its result is theirs)."""
    rows = [{"time_": 1, "req_path": v, "req_headers": v, "req_body": v} for v in values]
    got = arrow_table("http_events", rows, [], R)
    for col, kind in (("req_path", "text"), ("req_headers", "headers"), ("req_body", "text")):
        assert got.column(col).to_pylist() == [R.value(kind, v) for v in values]
    sql_rows = [{"time_": 1, "req_body": v} for v in values]
    got = arrow_table("mysql_events", sql_rows, [], R)
    assert got.column("req_body").to_pylist() == [R.value("sql", v) for v in values]
    proc_rows = [{"pid": i, "cmdline": v} for i, v in enumerate(values)]
    got = arrow_table("processes", proc_rows, [], R)
    assert got.column("cmdline").to_pylist() == [R.value("cmdline", v) for v in values]


# -- the store, the DB file, and printed output ------------------------------------------------------------------
SECRETS = ["ZQbearer", "ZQpath", "ZQjson", "ZQform", "ZQsql", "ZQpg", "ZQcmd", "ZQresp", "ZQuser"]
NOW = time.time_ns()


def secret_rows() -> dict[str, list[dict]]:
    base = dict(time_=NOW, pid=7, comm="curl", service="curl", trace_role="client", latency=1000)
    return {
        "http_events": [dict(base, req_method="POST", req_path="/login?next=/&token=ZQpath",
                             req_headers='{"authorization":"Bearer ZQbearer","content-type":"application/json"}',
                             req_body='{"user":"bob","password":"ZQjson"}', resp_status=200,
                             resp_headers='{"set-cookie":"sid=ZQresp; Path=/"}', resp_body="token=ZQform")],
        "mysql_events": [dict(base, req_cmd="COM_QUERY", req_body="CREATE USER 'u'@'%' IDENTIFIED BY 'ZQsql'",
                              resp_status="OK")],
        "pgsql_events": [dict(base, req_cmd="QUERY", req_body="ALTER ROLE app PASSWORD 'ZQpg'", resp_status="OK")],
    }


def varchar_hits(db: str, secrets: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, secret) for every VARCHAR column of every table that holds one of ``secrets``."""
    con = duckdb.connect(db, read_only=True)
    try:
        cols = con.execute("SELECT table_name, column_name FROM information_schema.columns "
                           "WHERE data_type = 'VARCHAR' AND table_schema = 'main'").fetchall()
        hits = []
        for table, col in cols:
            for s in secrets:
                n = con.execute(f'SELECT count(*) FROM "{table}" WHERE strpos("{col}", ?) > 0', [s]).fetchall()[0][0]
                if n:
                    hits.append((table, col, s))
        return hits
    finally:
        con.close()


def test_store_redacts_every_column_and_processes(tmp_path):
    db = str(tmp_path / "s.duckdb")
    with Store(db) as s:
        for table, rows in secret_rows().items():
            s.add_events(table, rows)
        s.upsert_processes([{"pid": 7, "comm": "curl", "start_time": NOW,
                             "cmdline": "curl -u bob:ZQuser -H Authorization: Bearer ZQcmd https://h/"}])
        s.flush()
    assert varchar_hits(db, SECRETS) == []
    raw = open(db, "rb").read()
    assert not any(sec.encode() in raw for sec in SECRETS)
    con = duckdb.connect(db, read_only=True)
    assert con.execute("SELECT req_path FROM http_events").fetchall() == [(f"/login?next=/&token={REDACTED}",)]
    con.close()


def test_no_redact_stores_as_captured(tmp_path):
    db = str(tmp_path / "s.duckdb")
    with Store(db, redact=False) as s:
        for table, rows in secret_rows().items():
            s.add_events(table, rows)
        s.flush()
    assert {h[2] for h in varchar_hits(db, SECRETS)} == {"ZQbearer", "ZQpath", "ZQjson", "ZQform", "ZQsql",
                                                           "ZQpg", "ZQresp"}


def test_watch_redacts_what_it_prints_even_from_a_no_redact_db(tmp_path, capsys):
    db = str(tmp_path / "s.duckdb")
    with Store(db, redact=False) as s:
        for table, rows in secret_rows().items():
            s.add_events(table, rows)
        s.flush()
    for flags in ([], ["--json"]):
        assert cli_main(["watch", "--db", db, "--since", "1h", *flags]) == 0
        out = capsys.readouterr().out
        assert "POST /login" in out or '"req_method": "POST"' in out
        assert not [sec for sec in SECRETS if sec in out], out
    assert cli_main(["watch", "--db", db, "--since", "1h", "--json", "--no-redact"]) == 0
    assert "ZQjson" in capsys.readouterr().out


def test_trace_live_rows_are_printed_redacted(capsys):
    rows = secret_rows()
    printer = RowPrinter(Redactor())
    for table, rs in rows.items():
        printer(table, rs)
    out = capsys.readouterr().out
    assert "token=<redacted>" in out and "IDENTIFIED BY '<redacted>'" in out
    assert not [sec for sec in SECRETS if sec in out], out
    # the rows themselves are untouched: the store redacts its own copy
    assert rows["http_events"][0]["req_path"].endswith("ZQpath")
    assert "ZQpath" in row_line("http_events", rows["http_events"][0])


def test_every_secret_name_holds_a_trigger_word():
    """The fast path and the store's prefilter look for trigger words: a name without one would be skipped."""
    from apptrace.store.redact import SECRET_NAME_PARTS

    for name in (*SECRET_HEADERS, *SECRET_PARAMS, *SECRET_NAME_PARTS):
        for kind in KINDS:
            assert R.triggered(kind, f"{name}=x"), (kind, name)
