"""Go's crypto/tls (issue 14): real Go programs, built in the test from Debian's go offline, plain and stripped.

The first tests read the binaries (no root): .gopclntab against the symbol table and objdump, the struct
layout from DWARF and from the version table, and the binaries apptrace cannot probe, named with the reason.
The others trace a Go net/http server and client (HTTP/1.1 and Go's built-in HTTP/2), a grpc-go server and
client (Debian's grpc-go, unary and streaming), and lib/pq and go-sql-driver/mysql clients, with the real
tracer, and check every column of the rows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from apptrace.capture.elfsyms import TlsObject, Unprobeable, inspect, vaddr_to_offset
from apptrace.capture.gosyms import READ, WRITE, GoLayout, find_go_tls, pclntab_functions
from apptrace.demo.gobuild import GoBuildError, go_build
from tests.conftest import ROOT, require_tool
from tests.sql_servers import stop

PEERS = ROOT / "tests" / "peers" / "go"
UA = "apptrace-go-e2e"
HELLO = "hello from go\n"
GO_LAYOUT_1_19 = GoLayout(conn_iface=0, netconn_fd=0, netfd_sysfd=16)  # read from go1.19.8's DWARF


@dataclass(frozen=True)
class GoBuild:
    client: str
    server: str
    sql_client: str
    grpc_peer: str
    stripped: bool


@pytest.fixture(scope="module")
def go_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, GoBuild]:
    """The client and server, each built plain and with -ldflags='-s -w' (no symbols, no DWARF)."""
    require_tool("go")
    out = tmp_path_factory.mktemp("gobuild")
    needs = {"sql_client.go": "golang-github-lib-pq-dev and golang-github-go-sql-driver-mysql-dev",
             "grpc_peer.go": "golang-google-grpc-dev"}  # Debian's packaged sources, built offline

    def build(src: str, exe: str, flags: list[str]) -> str:
        try:
            return go_build(PEERS / src, out / exe, out, flags)
        except GoBuildError as exc:
            hint = f" ({needs[src]} installed?)" if src in needs else ""
            pytest.fail(f"{exc}{hint}", pytrace=False)

    builds = {}
    for variant, flags in (("plain", []), ("stripped", ["-ldflags=-s -w"])):
        builds[variant] = GoBuild(*(build(src, f"{Path(src).stem}_{variant}", flags) for src in
                                    ("https_get.go", "https_server.go", "sql_client.go", "grpc_peer.go")),
                                  variant == "stripped")
    return builds


# ---- reading the binaries -------------------------------------------------------------------------------


def test_pclntab_finds_what_the_symbol_table_says(go_builds) -> None:
    with open(go_builds["plain"].client, "rb") as f:
        elf = ELFFile(f)
        symtab = elf.get_section_by_name(".symtab")
        symbols = {s.name: s for s in symtab.iter_symbols() if s.name in (READ, WRITE)}
        functions = pclntab_functions(elf, {READ, WRITE})
    assert set(functions) == set(symbols) == {READ, WRITE}
    for name, fn in functions.items():
        sym = symbols[name]
        assert fn.entry == sym["st_value"], name
        # pclntab's bound is the next function's entry: the symbol's size plus alignment padding
        assert sym["st_value"] + sym["st_size"] <= fn.end < sym["st_value"] + sym["st_size"] + 32, name
    with open(go_builds["stripped"].client, "rb") as f:
        elf = ELFFile(f)
        assert elf.get_section_by_name(".symtab") is None and not elf.has_dwarf_info()
        stripped = pclntab_functions(elf, {READ, WRITE})
    # -s -w drops symbols and DWARF only: the same code at the same addresses, found without them
    assert {n: (f.entry, f.end) for n, f in stripped.items()} == {n: (f.entry, f.end) for n, f in functions.items()}


@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_every_ret_of_read_and_write_is_probed(go_builds, variant: str) -> None:
    """The RETs found with capstone are the ones binutils' objdump decodes, and nothing else."""
    path = go_builds[variant].client
    found = inspect(path)
    assert isinstance(found, TlsObject), found
    assert found.tls_lib == "go" and found.version.startswith("go1.19")
    with open(path, "rb") as f:
        elf = ELFFile(f)
        functions = pclntab_functions(elf, {READ, WRITE})
        base = functions[READ].entry - vaddr_to_offset(elf, functions[READ].entry)
    for name, fn in functions.items():
        assert found.offsets[name] == fn.entry - base
        dump = subprocess.run([require_tool("objdump"), "-d", "--no-show-raw-insn", f"--start-address={fn.entry:#x}",
                               f"--stop-address={fn.end:#x}", path], check=True, capture_output=True, text=True).stdout
        rets = [int(m.group(1), 16) for m in re.finditer(r"^\s*([0-9a-f]+):\s+ret\s*$", dump, flags=re.M)]
        assert len(rets) >= 2, dump[-2000:]  # Read and Write return from several places
        assert found.returns[name] == tuple(r - base for r in rets), name


def test_layout_from_dwarf_or_from_the_version_table(go_builds) -> None:
    sources = {}
    for variant, build in go_builds.items():
        version = inspect(build.client).version
        with open(build.client, "rb") as f:
            found = find_go_tls(f, version, vaddr_to_offset)
        sources[variant] = found.layout_source
        assert found.layout == GO_LAYOUT_1_19, variant
    assert sources == {"plain": "dwarf", "stripped": "version table"}


def test_dwarf_without_types_falls_back_to_the_version_table(go_builds, tmp_path: Path) -> None:
    """A binary with an .eh_frame (cgo links one in) but no .debug_info: pyelftools says it has DWARF, with no
    types in it. Reading it crashed capture's rescan; the layout now comes from the version table."""
    exe = str(tmp_path / "no_debug_info")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    subprocess.run(["objcopy", "--remove-section=.debug_info", f"--add-section=.eh_frame={empty}",
                    go_builds["plain"].client, exe], check=True)
    with open(exe, "rb") as f:
        found = find_go_tls(f, inspect(go_builds["plain"].client).version, vaddr_to_offset)
    assert (found.layout, found.layout_source) == (GO_LAYOUT_1_19, "version table")


def _patched(src: str, dst: Path, old: bytes, new: bytes, after: bytes = b"") -> str:
    data = bytearray(Path(src).read_bytes())
    at = data.find(old, data.find(after) if after else 0)
    assert at >= 0 and len(old) == len(new)
    data[at:at + len(old)] = new
    dst.write_bytes(bytes(data))
    dst.chmod(0o755)
    return str(dst)


def test_binaries_apptrace_cannot_probe_are_named_with_the_reason(go_builds, tmp_path: Path) -> None:
    stripped = go_builds["stripped"].client
    with open(stripped, "rb") as f:
        sec = ELFFile(f).get_section_by_name(".gopclntab")
        pclntab_at = sec["sh_offset"]
    data = bytearray(Path(stripped).read_bytes())
    # Go 1.16/1.17's .gopclntab magic: a header layout this reader does not know
    data[pclntab_at:pclntab_at + 4] = struct.pack("<I", 0xFFFFFFFA)
    old = tmp_path / "old_pclntab"
    old.write_bytes(bytes(data))
    found = inspect(str(old))
    assert isinstance(found, Unprobeable), found
    assert found.reason.startswith("Go go1.19") and "before Go 1.18" in found.reason, found.reason
    # A stripped binary of a Go release whose struct layout nobody checked: no DWARF to read it from
    future = _patched(stripped, tmp_path / "future_go", b"go1.19.8", b"go1.99.8", after=b"\xff Go buildinf:")
    found = inspect(future)
    assert isinstance(found, Unprobeable), found
    assert found.reason == ("Go go1.99.8 crypto/tls: no DWARF, and the struct layout of go1.99.8 is not known "
                            "(tested: go1.19)"), found.reason
    # ... while the same binary with its DWARF says it
    plain = _patched(go_builds["plain"].client, tmp_path / "future_go_dwarf", b"go1.19.8", b"go1.99.8",
                     after=b"\xff Go buildinf:")
    found = inspect(plain)
    assert isinstance(found, TlsObject) and found.version == "go1.99.8" and found.go_layout == GO_LAYOUT_1_19


# ---- tracing ------------------------------------------------------------------------------------------------


@dataclass
class GoServer:
    proc: subprocess.Popen
    port: int
    exe: str

    @property
    def pid(self) -> int:
        return self.proc.pid


def _go_servers(certs, program: Callable[[str], list[str]]) -> Iterator[Callable[[str], GoServer]]:
    """Starts ``program(variant)`` (argv before the TLS options) on a free port once it says "ready"; stops them all."""
    started: list[subprocess.Popen] = []

    def start(variant: str) -> GoServer:
        from apptrace.demo.server import free_port

        port = free_port()
        argv = program(variant)
        proc = subprocess.Popen([*argv, "--port", str(port), "--cert", certs["server"], "--key", certs["server-key"]],
                                stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline().strip() == "ready"
        return GoServer(proc, port, os.path.basename(argv[0]))

    yield start
    for p in started:
        stop(p)


@pytest.fixture
def go_server(go_builds, certs) -> Iterator[Callable[[str], GoServer]]:
    yield from _go_servers(certs, lambda variant: [go_builds[variant].server])


def _headers(raw: str | None) -> dict:
    assert raw is not None
    data = json.loads(raw)
    return {k.lower(): v for k, v in (data.items() if isinstance(data, dict) else data)}


def _brief(row: dict) -> str:
    keys = ("pid", "comm", "trace_role", "local_port", "remote_port", "tls_lib", "http_version", "req_headers",
            "stream_id", "conn_id")
    return repr({k: row.get(k) for k in keys})


def _check_row(row: dict, *, pid: int, exe: str, role: str, port: int, http2: bool, ua: str) -> None:
    """One GET /hello as either side stores it: every column."""
    msg = _brief(row)
    # the kernel cuts comm at 15 characters; the service is named after the executable
    assert row["pid"] == pid and row["comm"] == exe[:15] and row["service"] == exe, msg
    assert row["trace_role"] == role and row["encrypted"] is True and row["tls_lib"] == "go", msg
    assert row["local_addr"] == "127.0.0.1" and row["remote_addr"] == "127.0.0.1", msg
    assert (row["local_port"] if role == "server" else row["remote_port"]) == port, msg
    assert isinstance(row["local_port"], int) and isinstance(row["remote_port"], int), msg
    assert row["latency"] is not None and row["latency"] > 0, msg
    assert row["time_"] is not None and row["conn_id"], msg
    assert row["http_version"] == ("2" if http2 else "1.1"), msg
    assert row["req_method"] == "GET" and row["req_path"] == "/hello" and row["req_route"] == "/hello", msg
    req = _headers(row["req_headers"])
    assert req["user-agent"] == ua and req["accept-encoding"] == "gzip", msg
    if http2:
        assert (req[":method"], req[":path"], req[":scheme"]) == ("GET", "/hello", "https"), msg
        assert req[":authority"] == f"127.0.0.1:{port}", msg
    else:
        assert req["host"] == f"127.0.0.1:{port}", msg
    assert row["req_body"] in ("", None) and row["req_body_size"] == 0, msg
    assert row["resp_status"] == 200 and row["resp_message"] == (None if http2 else "OK"), msg
    resp = _headers(row["resp_headers"])
    assert resp["content-type"] == "text/plain" and resp["content-length"] == str(len(HELLO)), msg
    assert resp["x-proto"] == ("HTTP/2.0" if http2 else "HTTP/1.1") and "date" in resp, msg
    assert row["resp_body"] == HELLO and row["resp_body_size"] == len(HELLO), msg
    assert row["content_type"] == "text/plain", msg
    assert row["grpc_status"] is None and row["grpc_message"] is None, msg
    assert row["stream_id"] == (1 if http2 else None), msg
    assert row["req_messages"] is None and row["resp_messages"] is None and row["headers_partial"] is False, msg


@pytest.mark.ebpf
@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_go_client_and_server_both_sides(go_builds, go_server, tracer, tmp_path: Path, variant: str,
                                         http2: bool) -> None:
    """A Go server running before the tracer (--pid) and a Go client started after it (--comm), each request
    once per side. The client is a fresh copy (an inode the tracer never saw) run twice, each run a process
    of a few ms: the first makes the tracer probe the file, the second is captured from its first call on."""
    server = go_server(variant)
    client = str(tmp_path / f"goget_{variant[:2]}{int(http2)}")
    shutil.copy(go_builds[variant].client, client)
    comm = os.path.basename(client)
    url = f"https://127.0.0.1:{server.port}/hello"
    args = ["--http2"] if http2 else []
    t = tracer("--pid", str(server.pid), "--comm", comm)
    # Usually gone before the tracer has read the new binary (see the README): whatever it captured of this
    # run is not asserted. The tracer finds the file by the path the kernel kept, for the next run.
    first = subprocess.run([client, *args, url], capture_output=True, text=True, timeout=30)
    assert first.returncode == 0, first.stdout + first.stderr
    time.sleep(1.0)  # for the tracer to read and probe the binary: a wait, not an assertion
    started = time.monotonic()
    proc = subprocess.Popen([client, "--ua", UA, *args, url], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    lifetime_ms = (time.monotonic() - started) * 1000
    print(f"{comm}: the traced client process lived {lifetime_ms:.0f} ms")
    assert proc.returncode == 0 and out.splitlines() == [f"200 {len(HELLO)} {'HTTP/2.0' if http2 else 'HTTP/1.1'}",
                                                        "done"], out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    rows = cap.rows.get("http_events", [])
    clients = [r for r in rows if r["pid"] == proc.pid]
    assert len(clients) == 1, [_brief(r) for r in rows]
    ours = clients[0]
    _check_row(ours, pid=proc.pid, exe=comm, role="client", port=server.port, http2=http2, ua=UA)
    # The server answered the first run too (the tracer saw all of that one): one row per request
    served = [r for r in rows if r["pid"] == server.pid]
    assert sorted(_headers(r["req_headers"])["user-agent"] for r in served) == ["apptrace-go", UA], \
        [_brief(r) for r in served]
    theirs = next(r for r in served if _headers(r["req_headers"])["user-agent"] == UA)
    _check_row(theirs, pid=server.pid, exe=server.exe, role="server", port=server.port, http2=http2, ua=UA)
    assert ours["local_port"] == theirs["remote_port"] and ours["remote_port"] == theirs["local_port"]
    assert f"{client} (go)" in cap.stderr and f"{go_builds[variant].server} (go)" in cap.stderr, cap.stderr
    assert "lost_events=0" in cap.stderr and "gap_bytes=0" in cap.stderr, cap.stderr


# ---- SQL drivers over TLS ------------------------------------------------------------------------------------


def _sql_session(go_builds, tracer, tmp_path: Path, variant: str, driver: str, dsn: str,
                 queries: list[str]) -> tuple[object, subprocess.Popen, str, str]:
    """The Go SQL client, traced alone (--comm), run once to have its fresh binary probed, then again."""
    client = str(tmp_path / f"gosql_{driver[:2]}_{variant[:2]}")
    shutil.copy(go_builds[variant].sql_client, client)
    t = tracer("--comm", os.path.basename(client))
    assert subprocess.run([client, driver, dsn, "SELECT 1"], capture_output=True, timeout=60).returncode == 0
    time.sleep(1.0)  # for the tracer to read and probe the binary: a wait, not an assertion
    proc = subprocess.Popen([client, driver, dsn, *queries], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    return cap, proc, out, os.path.basename(client)


def _client_rows(cap, table: str, pid: int, exe: str, port: int) -> list[dict]:
    rows = sorted((r for r in cap.rows.get(table, []) if r["pid"] == pid), key=lambda r: r["time_"])
    assert rows, f"no {table} rows for pid {pid}: {[(r['pid'], r['comm']) for r in cap.rows.get(table, [])]}"
    for r in rows:
        msg = repr({k: r.get(k) for k in ("pid", "comm", "trace_role", "local_port", "remote_port", "conn_id")})
        assert r["comm"] == exe[:15] and r["service"] == exe and r["trace_role"] == "client", msg
        assert r["encrypted"] is True and r["tls_lib"] == "go", msg
        assert (r["remote_addr"], r["remote_port"]) == ("127.0.0.1", port) and r["local_addr"] == "127.0.0.1", msg
        assert isinstance(r["local_port"], int) and r["time_"] > 0, msg
    assert len({r["conn_id"] for r in rows}) == 1, {r["conn_id"] for r in rows}
    return rows


def _outcome(r: dict) -> tuple:
    return (r["req_cmd"], r["req_body"], r["resp_status"], r["resp_body"], r["error_code"], r["rows"])


@pytest.mark.ebpf
@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_lib_pq_over_tls(go_builds, postgres, tracer, tmp_path: Path, variant: str) -> None:
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres sslmode=require"
    queries = ["SELECT id, name, price FROM items ORDER BY id", "SELECT * FROM no_such_table",
               "SELECT pg_sleep(0.05)"]
    cap, proc, out, exe = _sql_session(go_builds, tracer, tmp_path, variant, "postgres", dsn, queries)
    assert out.splitlines()[:4] == ["1|apple|0.5", "2|pear|0.75", "3|plum|1.25", "rows: 3"], out
    rows = _client_rows(cap, "pgsql_events", proc.pid, exe, postgres.port)
    assert [_outcome(r) for r in rows] == [
        ("QUERY", queries[0], "OK", "SELECT 3", None, 3),
        ("QUERY", queries[1], "ERR", 'ERROR: relation "no_such_table" does not exist', "42P01", None),
        ("QUERY", queries[2], "OK", "SELECT 1", None, 1),
    ]
    assert all(r["latency"] > 0 for r in rows) and rows[2]["latency"] >= 50_000_000


@pytest.mark.ebpf
@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_go_sql_driver_mysql_over_tls(go_builds, mariadb, tracer, tmp_path: Path, variant: str) -> None:
    dsn = f"app:secret@tcp(127.0.0.1:{mariadb.port})/shop?tls=skip-verify"
    queries = ["SELECT id, name, price FROM shop.items ORDER BY id", "SELECT * FROM shop.no_such_table",
               "SELECT SLEEP(0.05)"]
    cap, proc, out, exe = _sql_session(go_builds, tracer, tmp_path, variant, "mysql", dsn, queries)
    assert out.splitlines()[:4] == ["1|apple|0.5", "2|pear|0.75", "3|plum|1.25", "rows: 3"], out
    rows = _client_rows(cap, "mysql_events", proc.pid, exe, mariadb.port)
    assert [_outcome(r) for r in rows] == [
        ("COM_QUERY", queries[0], "OK", "3 rows", None, 3),
        ("COM_QUERY", queries[1], "ERR", "Table 'shop.no_such_table' doesn't exist", 1146, None),
        ("COM_QUERY", queries[2], "OK", "1 row", None, 1),
        ("COM_QUIT", "", "NONE", None, None, None),  # db.Close()
    ]
    assert all(r["latency"] > 0 for r in rows[:3]) and rows[2]["latency"] >= 50_000_000
    assert rows[3]["latency"] is None  # COM_QUIT expects no answer


# ---- grpc-go over TLS ----------------------------------------------------------------------------------------


@pytest.fixture
def grpc_go_server(go_builds, certs) -> Iterator[Callable[[str], GoServer]]:
    yield from _go_servers(certs, lambda variant: [go_builds[variant].grpc_peer, "server"])


# Each call of grpc_peer's client, in order on one connection: (path, request body, response body,
# messages each way, grpc-status, grpc-message). Bodies are shown without the 5-byte message prefixes;
# sizes are the DATA bytes on the wire.
GRPC_CALLS = [
    ("/apptrace.Echo/Unary", "ping", "echo:ping", 1, 1, 0, None),
    ("/apptrace.Echo/Fail", "x", "", 1, 0, 5, "no such thing"),  # NOT_FOUND, trailers-only
    ("/apptrace.Echo/Stream", "go", "item 0item 1item 2", 1, 3, 0, None),  # server-streaming
    ("/apptrace.Echo/Collect", "abbccc", "a+bb+ccc", 3, 1, 0, None),  # client-streaming
]
GRPC_GO_VERSION = "1.33.3"  # Debian's golang-google-grpc-dev


def _grpc_brief(row: dict) -> str:
    keys = ("pid", "comm", "trace_role", "local_port", "remote_port", "req_path", "grpc_status", "stream_id",
            "conn_id", "headers_partial")
    return repr({k: row.get(k) for k in keys})


def _check_grpc_rows(rows: list[dict], *, pid: int, exe: str, role: str, port: int, ua: str) -> None:
    """One side's rows of one grpc_peer client run: every column of each call, each call once."""
    rows = sorted(rows, key=lambda r: r["stream_id"])
    assert [r["req_path"] for r in rows] == [c[0] for c in GRPC_CALLS], [_grpc_brief(r) for r in rows]
    assert len({r["conn_id"] for r in rows}) == 1 and len({r["local_port"] for r in rows}) == 1  # one channel
    for row, (path, req, resp, req_msgs, resp_msgs, code, message) in zip(rows, GRPC_CALLS, strict=True):
        msg = _grpc_brief(row)
        assert row["pid"] == pid and row["comm"] == exe[:15] and row["service"] == exe, msg
        assert row["trace_role"] == role and row["encrypted"] is True and row["tls_lib"] == "go", msg
        assert row["local_addr"] == "127.0.0.1" and row["remote_addr"] == "127.0.0.1", msg
        assert (row["local_port"] if role == "server" else row["remote_port"]) == port, msg
        assert isinstance(row["local_port"], int) and isinstance(row["remote_port"], int), msg
        assert row["time_"] is not None and row["conn_id"] and row["container_id"] is None, msg
        assert row["latency"] is not None and row["latency"] > 0, msg
        assert row["http_version"] == "2" and row["req_method"] == "POST", msg
        assert row["req_path"] == path and row["req_route"] == path, msg
        assert _headers(row["req_headers"]) == {
            ":method": "POST", ":scheme": "https", ":path": path, ":authority": f"127.0.0.1:{port}",
            "content-type": "application/grpc", "user-agent": f"{ua} grpc-go/{GRPC_GO_VERSION}", "te": "trailers",
        }, msg
        assert (row["req_body"], row["req_body_size"], row["req_messages"]) == (req, 5 * req_msgs + len(req),
                                                                                req_msgs), msg
        assert (row["resp_body"], row["resp_body_size"], row["resp_messages"]) == (resp, 5 * resp_msgs + len(resp),
                                                                                   resp_msgs), msg
        assert row["resp_status"] == 200 and row["resp_message"] is None, msg
        # grpc-go sends grpc-message even when it is empty; the column then says there is none
        assert _headers(row["resp_headers"]) == {":status": "200", "content-type": "application/grpc",
                                                 "grpc-status": str(code), "grpc-message": message or ""}, msg
        assert (row["grpc_status"], row["grpc_message"]) == (code, message), msg
        assert row["content_type"] == "application/grpc", msg
        assert row["headers_partial"] is False and row["body_incomplete"] is False, msg
    # the calls were made one after another on one connection: stream ids 1, 3, 5, 7 in call order
    assert [r["stream_id"] for r in rows] == [1, 3, 5, 7]
    assert [r["time_"] for r in rows] == sorted(r["time_"] for r in rows)
    assert rows[0]["latency"] >= 50_000_000  # the server's Unary handler sleeps 50 ms


@pytest.mark.ebpf
@pytest.mark.parametrize("variant", ["plain", "stripped"])
def test_grpc_go_client_and_server_both_sides(go_builds, grpc_go_server, tracer, tmp_path: Path,
                                              variant: str) -> None:
    """A grpc-go server running before the tracer (--pid) and a grpc-go client started after it (--comm):
    unary, a failing unary, server- and client-streaming calls, each once per side with every column."""
    server = grpc_go_server(variant)
    client = str(tmp_path / f"grpcgo_{variant[:2]}")
    shutil.copy(go_builds[variant].grpc_peer, client)
    comm = os.path.basename(client)
    target = f"127.0.0.1:{server.port}"
    t = tracer("--pid", str(server.pid), "--comm", comm)
    # As in the net/http test: the first run makes the tracer probe the fresh binary and is not asserted
    # on the client's side; the server's side of it is.
    first = subprocess.run([client, "client", target], capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stdout + first.stderr
    time.sleep(1.0)  # for the tracer to read and probe the binary: a wait, not an assertion
    proc = subprocess.Popen([client, "client", "--ua", UA, target], stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out.splitlines() == [
        "unary echo:ping", "fail NotFound no such thing", "stream item 0,item 1,item 2", "collect a+bb+ccc", "done",
    ], out
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    rows = cap.rows.get("http_events", [])
    clients = [r for r in rows if r["pid"] == proc.pid]
    _check_grpc_rows(clients, pid=proc.pid, exe=comm, role="client", port=server.port, ua=UA)
    served = [r for r in rows if r["pid"] == server.pid]
    by_ua: dict[str, list[dict]] = {}
    for r in served:
        by_ua.setdefault(_headers(r["req_headers"] or "{}").get("user-agent"), []).append(r)
    assert sorted(by_ua, key=str) == [f"apptrace-go grpc-go/{GRPC_GO_VERSION}", f"{UA} grpc-go/{GRPC_GO_VERSION}"], \
        [_grpc_brief(r) for r in served]
    _check_grpc_rows(by_ua[f"apptrace-go grpc-go/{GRPC_GO_VERSION}"], pid=server.pid, exe=server.exe,
                     role="server", port=server.port, ua="apptrace-go")
    theirs = by_ua[f"{UA} grpc-go/{GRPC_GO_VERSION}"]
    _check_grpc_rows(theirs, pid=server.pid, exe=server.exe, role="server", port=server.port, ua=UA)
    assert clients[0]["local_port"] == theirs[0]["remote_port"] and clients[0]["remote_port"] == theirs[0]["local_port"]
    assert f"{client} (go)" in cap.stderr and f"{go_builds[variant].grpc_peer} (go)" in cap.stderr, cap.stderr
    assert "lost_events=0" in cap.stderr and "gap_bytes=0" in cap.stderr, cap.stderr


def test_a_write_returning_after_its_sockets_close_stays_in_its_session(tmp_path: Path) -> None:
    """Recorded by the test above (plain build), in a run where it happened: the server's last Write (the
    Collect response) returned after the reader goroutine had seen EOF and closed the socket, so its
    record came after the EV_CLOSE, with the kernel's stream position restarted at 0. It belongs to that
    session: not a new connection with half-parsed headers, nor a Collect row without its response."""
    from apptrace.analysis.replay import replay_file
    from apptrace.analysis.sinks import ListSink

    sink = ListSink()
    _, error = replay_file(str(ROOT / "tests/fixtures/go/grpc_late_write.raw"), sink)
    assert error is None
    rows = sink.events["http_events"]
    assert len(sink.connections) == 3, list(sink.connections)  # the server's two, the second client's one
    server, client = 32657, 32687  # the pids of the recording
    served = [r for r in rows if r["pid"] == server]
    assert len(served) == 8 and len({r["conn_id"] for r in served}) == 2, [_grpc_brief(r) for r in served]
    assert all(r["headers_partial"] is False and r["local_port"] == 38291 for r in served)
    last = [r for r in served if r["remote_port"] == 51664]
    called = [r for r in rows if r["pid"] == client]
    for side in (last, called):
        side.sort(key=lambda r: r["stream_id"])
        assert [(r["req_path"], r["req_body"], r["resp_body"], r["grpc_status"]) for r in side] == \
            [(path, req, resp, code) for path, req, resp, _, _, code, _ in GRPC_CALLS]
