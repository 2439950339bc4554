"""Secrets, live: the real tracer, real clients sending every kind of secret, then every VARCHAR column of every
table, trace's printed rows and watch's output are searched for them. The raw file, plaintext by design (0600),
proves each secret was captured."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import sql_servers
from tests.conftest import APPTRACE, ROOT, free_port, nghttpd_command, require_tool, serving
from tests.test_redact import varchar_hits

pytestmark = pytest.mark.ebpf

CUT_SECRET = "ZQjsonCut1" + "A" * 200
#: what each client sends; every one of them must be nowhere in the DB or the printed output
SECRETS = {
    "header Authorization": "ZQbearer1",
    "header X-Api-Key": "ZQapikey1",
    "header Cookie": "ZQcookie1",
    "URL user:password@ (curl's command line)": "ZQuserinfo1",
    "URL ?token=": "ZQtoken1",
    "URL &api_key=": "ZQapikey2",
    "JSON body password": "ZQjson1",
    "JSON body nested client_secret": "ZQjson2",
    "JSON body token in a list": "ZQjson3",
    "JSON body cut at --max-body inside the value": "ZQjsonCut1",
    "form body password": "ZQform1",
    "MariaDB CREATE USER IDENTIFIED BY": "ZQmyCreate1",
    "MariaDB ALTER USER IDENTIFIED BY": "ZQmyAlter2",
    "MariaDB SET PASSWORD = PASSWORD()": "ZQmySet3",
    "mariadb -pSECRET (command line)": "ZQmySet3",
    "MariaDB prepared UPDATE SET password = ?": "ZQmyPrepared1",
    "PostgreSQL CREATE ROLE PASSWORD": "ZQpgCreate1",
    "PostgreSQL ALTER USER ENCRYPTED PASSWORD": "ZQpgAlter2",
    "PostgreSQL CREATE USER PASSWORD": "ZQpgCreate3",
    "PostgreSQL prepared UPDATE SET api_token = $1": "ZQpgPrepared1",
    "psql password= in the connection string (command line)": "ZQpgConn0",
    "--api-key=SECRET (command line)": "ZQcmdApiKey1",
    "HTTP/2 (HPACK) Authorization": "ZQh2bearer1",
    "HTTP/2 (HPACK) X-Goog-Api-Key": "ZQh2apikey1",
    "HTTP/2 ?access_token=": "ZQh2token1",
    "gRPC metadata authorization": "ZQgrpcmeta1",
    "gRPC metadata x-api-key": "ZQgrpcmeta2",
}
GRPC_CLIENT = """
import sys, grpc
port, ca = int(sys.argv[1]), sys.argv[2]
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
with grpc.secure_channel(f"127.0.0.1:{port}", creds) as ch:
    grpc.channel_ready_future(ch).result(timeout=20)
    unary = ch.unary_unary("/apptrace.Echo/Unary", request_serializer=lambda b: b, response_deserializer=lambda b: b)
    print(unary(b"ping", timeout=20, metadata=[("authorization", "Bearer ZQgrpcmeta1"),
                                                ("x-api-key", "ZQgrpcmeta2")]).decode())
"""
PEER_NAME = "zqsecretpeer"


class PrintingTracer:
    """``apptrace trace`` printing its live rows (no --quiet), with a raw file."""

    def __init__(self, tmp: Path, args: list[str]) -> None:
        self.db = str(tmp / "secrets.duckdb")
        self.raw = str(tmp / "secrets.raw")
        self.proc = subprocess.Popen([*APPTRACE, "trace", "--db", self.db, "--raw", self.raw, *args], cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        ready = threading.Event()

        def read_err() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.err.append(line)
                if line.startswith("apptrace: tracing"):
                    ready.set()
            ready.set()

        def read_out() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.out.append(line)

        self._threads = [threading.Thread(target=f, daemon=True) for f in (read_err, read_out)]
        for t in self._threads:
            t.start()
        assert ready.wait(60) and self.proc.poll() is None, "tracer did not attach:\n" + "".join(self.err)

    def stop(self) -> int:
        time.sleep(0.3)
        self.proc.send_signal(signal.SIGINT)
        rc = self.proc.wait(timeout=120)
        for t in self._threads:
            t.join(timeout=10)
        return rc


@pytest.fixture
def printing_tracer(ebpf, tmp_path: Path) -> Iterator[callable]:  # noqa: ARG001 - ebpf fails loudly
    running: list[PrintingTracer] = []

    def start(*args: str) -> PrintingTracer:
        t = PrintingTracer(tmp_path, list(args))
        running.append(t)
        return t

    yield start
    for t in running:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


@pytest.fixture(scope="module")
def nghttpd(certs, tmp_path_factory) -> Iterator[sql_servers.Proc]:
    docroot = tmp_path_factory.mktemp("docroot")
    (docroot / "index.html").write_bytes(b"<html>h2</html>\n")
    port = free_port()
    with serving(nghttpd_command(docroot, port, certs), port, stderr=subprocess.DEVNULL) as server:
        yield server


@pytest.fixture(scope="module")
def grpc_server(certs) -> Iterator[sql_servers.Proc]:
    port = free_port()
    with serving([sys.executable, "-m", "tests.peers.e2e_grpc_server", "--port", str(port), "--cert",
                  certs["server"], "--key", certs["server-key"]], port, cwd=ROOT) as server:
        yield server


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT, **kw)
    assert proc.returncode == 0, (cmd, proc.stdout, proc.stderr)
    return proc


def http_clients(port: int) -> None:
    curl = require_tool("curl")
    base = f"https://127.0.0.1:{port}"
    run([curl, "-sSk", "-o", "/dev/null", "-H", "Authorization: Bearer ZQbearer1", "-H", "X-Api-Key: ZQapikey1",
         "-H", "Cookie: sid=ZQcookie1", f"https://zquser:ZQuserinfo1@127.0.0.1:{port}/hello?token=ZQtoken1&page=2"
         "&api_key=ZQapikey2"])
    body = {"user": "bob", "password": "ZQjson1", "nested": {"client_secret": "ZQjson2"}, "list": [{"token": "ZQjson3"}]}
    run([curl, "-sSk", "-o", "/dev/null", "-H", "Content-Type: application/json", "--data", json.dumps(body),
         f"{base}/login"])
    # the value starts before the 1024-byte body cap and ends after it
    cut = json.dumps({"pad": "p" * 990, "password": CUT_SECRET})
    assert cut.index("ZQjsonCut1") < 1024 < cut.index("ZQjsonCut1") + len(CUT_SECRET)
    run([curl, "-sSk", "-o", "/dev/null", "-H", "Content-Type: application/json", "--data", cut, f"{base}/login"])
    run([curl, "-sSk", "-o", "/dev/null", "--data", "user=bob&password=ZQform1", f"{base}/login"])


def http2_clients(nghttpd: sql_servers.Proc, grpc_server: sql_servers.Proc, ca: str) -> None:
    run([require_tool("curl"), "-sSk", "--http2", "-o", "/dev/null", "-H", "Authorization: Bearer ZQh2bearer1",
         "-H", "X-Goog-Api-Key: ZQh2apikey1", f"https://127.0.0.1:{nghttpd.port}/index.html?access_token=ZQh2token1"])
    out = run([sys.executable, "-c", GRPC_CLIENT, str(grpc_server.port), ca]).stdout
    assert out.strip(), out


def mariadb_clients(db: sql_servers.Proc) -> None:
    client = require_tool("mariadb")
    common = [client, "--no-defaults", "--ssl", "-h127.0.0.1", f"-P{db.port}"]
    sql = ("CREATE USER 'zq'@'%' IDENTIFIED BY 'ZQmyCreate1'; CREATE USER 'zq'@'localhost' IDENTIFIED BY 'ZQmyCreate1';"
           "ALTER USER 'zq'@'%' IDENTIFIED BY 'ZQmyAlter2';"
           "SET PASSWORD FOR 'zq'@'localhost' = PASSWORD('ZQmySet3');")
    run([*common, "-uapp", "-psecret", "-e", sql])
    # a process whose command line holds the password
    out = run([*common, "-uzq", "-pZQmySet3", "-N", "-e", "SELECT CURRENT_USER()"]).stdout
    assert out.strip().startswith("zq@"), out


def postgres_clients(pg: sql_servers.Proc) -> None:
    dsn = f"host=127.0.0.1 port={pg.port} user=postgres dbname=postgres sslmode=require password=ZQpgConn0"
    run([require_tool("psql"), "-X", "-At", dsn, "-c", "CREATE ROLE zq1 LOGIN PASSWORD 'ZQpgCreate1'",
         "-c", "ALTER USER zq1 WITH ENCRYPTED PASSWORD 'ZQpgAlter2'", "-c", "CREATE USER zq2 PASSWORD 'ZQpgCreate3'"])


def test_secrets_found_nowhere(printing_tracer, https_server, mariadb, postgres, nghttpd, grpc_server, certs):
    server = https_server()
    scope = ["--pid", str(server.pid), "--pid", str(mariadb.pid), "--pid", str(nghttpd.pid), "--pid",
             str(grpc_server.pid), "--comm", "curl", "--comm", "mariadb", "--comm", "psql", "--comm", "postgres",
             "--comm", PEER_NAME]
    t = printing_tracer(*scope)
    http_clients(server.port)
    http2_clients(nghttpd, grpc_server, certs["ca"])
    mariadb_clients(mariadb)
    postgres_clients(postgres)
    out = run([sys.executable, "-m", "tests.peers.secrets_prepared", str(mariadb.port), str(postgres.port),
               PEER_NAME, "--api-key=ZQcmdApiKey1"]).stdout
    assert out.strip() == "ok"
    assert t.stop() == 0, "".join(t.err)

    # Captured: the raw file (plaintext by design, 0600) holds every secret sent on the wire.
    assert stat.S_IMODE(os.stat(t.raw).st_mode) == 0o600
    raw = Path(t.raw).read_bytes()
    on_the_wire = {k: v for k, v in SECRETS.items() if "command line" not in k and "user:password@" not in k}
    assert [k for k, v in on_the_wire.items() if v.encode() not in raw] == []

    values = sorted(set(SECRETS.values()))
    assert varchar_hits(t.db, values) == []
    printed = "".join(t.out)
    assert [v for v in values if v in printed] == []
    watch = run([*APPTRACE, "watch", "--db", t.db, "--since", "1h"]).stdout
    watch_json = run([*APPTRACE, "watch", "--db", t.db, "--since", "1h", "--json"]).stdout
    assert [v for v in values if v in watch or v in watch_json] == []

    # ... and the rows are there, redacted where the secrets were.
    def sql(q: str) -> list[dict]:
        return json.loads(run([*APPTRACE, "sql", "--db", t.db, "-o", "json", q]).stdout)["output"]

    paths = {r["req_path"] for r in sql("SELECT DISTINCT req_path FROM http_events")}
    assert "/hello?token=<redacted>&page=2&api_key=<redacted>" in paths, paths
    assert "/index.html?access_token=<redacted>" in paths, paths
    h2 = sql("SELECT json_extract_string(req_headers, '$.authorization') AS a, "
             "json_extract_string(req_headers, '$.\"x-api-key\"') AS k FROM http_events "
             "WHERE http_version = '2' AND req_headers LIKE '%authorization%'")
    assert {"a": "<redacted>", "k": None} in h2 and {"a": "<redacted>", "k": "<redacted>"} in h2, h2
    assert "token=<redacted>" in printed and "IDENTIFIED BY '<redacted>'" in printed
    my = [r["req_body"] for r in sql("SELECT req_body FROM mysql_events")]
    assert "CREATE USER 'zq'@'%' IDENTIFIED BY '<redacted>'" in my, my
    assert "UPDATE accounts SET password = '<redacted>' WHERE id = 1" in my, my
    pg = [r["req_body"] for r in sql("SELECT req_body FROM pgsql_events")]
    assert "CREATE ROLE zq1 LOGIN PASSWORD '<redacted>'" in pg, pg
    assert any(b.startswith("UPDATE accounts SET api_token = '<redacted>' WHERE id = ") for b in pg), pg
    cmdlines = [r["cmdline"] for r in sql("SELECT cmdline FROM processes")]
    assert any("-p<redacted>" in c for c in cmdlines), cmdlines
    assert any("Authorization: <redacted>" in c for c in cmdlines), cmdlines
    assert any("--api-key=<redacted>" in c for c in cmdlines), cmdlines
