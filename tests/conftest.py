"""Shared fixtures: real TLS peers, and a real tracer process.

eBPF tests never skip: if this machine cannot trace, they fail and say why (run
``apptrace doctor``). CI runs them as root after the README's setup command.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from apptrace.demo.gobuild import GoBuildError, go_build  # noqa: E402
from apptrace.demo.server import free_port, wait_port  # noqa: E402,F401 - re-exported for the tests
from tests import sql_servers

ROOT = Path(__file__).resolve().parent.parent
APPTRACE = [sys.executable, "-m", "apptrace.cli"]


_ebpf_problem: list[str] = []


@pytest.fixture(scope="session")
def ebpf() -> None:
    """Fail (never skip) when this machine cannot trace."""
    if _ebpf_problem:
        pytest.fail(_ebpf_problem[0], pytrace=False)
    problem = None
    if os.geteuid() != 0:
        problem = "eBPF tests need root: run the suite as root (see README)"
    else:
        try:
            from bcc import BPF

            BPF(text=b"int probe(void *ctx) { return 0; }")
        except Exception as exc:  # noqa: BLE001 - any failure here means no tracing
            problem = f"BCC cannot compile a BPF program here ({exc}); run 'apptrace doctor'"
    if problem is None and not os.path.exists("/sys/kernel/tracing/uprobe_events"):
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)
        if not os.path.exists("/sys/kernel/tracing/uprobe_events"):
            problem = "tracefs is not mounted and cannot be mounted"
    if problem:
        _ebpf_problem.append(f"CANNOT TRACE ON THIS MACHINE: {problem}")
        pytest.fail(_ebpf_problem[0], pytrace=False)


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from apptrace.demo.server import make_certs

    return make_certs(str(tmp_path_factory.mktemp("certs")))


@dataclass
class Server:
    proc: subprocess.Popen
    port: int

    @property
    def pid(self) -> int:
        return self.proc.pid


@pytest.fixture
def https_server(certs: dict[str, str]) -> Iterator[callable]:
    """Start real Python ssl HTTPS servers (apptrace.demo.server); mtls=True requires client certs."""
    started: list[subprocess.Popen] = []

    def start(mtls: bool = False) -> Server:
        port = free_port()
        cmd = [sys.executable, "-m", "apptrace.demo.server", "--port", str(port), "--cert", certs["server"],
               "--key", certs["server-key"]]
        if mtls:
            cmd += ["--client-ca", certs["ca"]]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
        started.append(proc)
        wait_port(port)
        return Server(proc, port)

    yield start
    for p in started:
        p.terminate()
        p.wait(timeout=10)


@dataclass
class StreamConn:
    pid: int
    fd: int
    role: str | None
    tls_lib: str
    local: tuple[str | None, int | None]
    remote: tuple[str | None, int | None]
    egress: bytearray = field(default_factory=bytearray)
    ingress: bytearray = field(default_factory=bytearray)
    gap_bytes: int = 0
    conn_id: str = ""


@dataclass
class Capture:
    """What a finished tracer run captured, read back from its raw file through the real pipeline."""

    conns: list[StreamConn]
    rows: dict[str, list[dict]]
    stderr: str
    returncode: int
    pipeline: object

    def for_pid(self, pid: int) -> list[StreamConn]:
        return [c for c in self.conns if c.pid == pid]


def read_capture(raw: str, stderr: str = "", returncode: int = 0) -> Capture:
    from apptrace.analysis.replay import replay_file
    from apptrace.analysis.sinks import ListSink

    seen: dict[int, object] = {}

    def tap(conn, egress, data, ts):  # noqa: ARG001
        seen[id(conn)] = conn
        buf = streams.setdefault(id(conn), (bytearray(), bytearray()))
        buf[0 if egress else 1].extend(data)

    streams: dict[int, tuple[bytearray, bytearray]] = {}
    sink = ListSink()
    pipeline, error = replay_file(raw, sink, tap=tap)
    assert error is None, error
    out = []
    for key, conn in seen.items():
        eg, ing = streams[key]
        out.append(StreamConn(conn.pid, conn.fd, conn.role or (conn.tracker.role if conn.tracker else None),
                              conn.tls_lib, (conn.local_addr, conn.local_port), (conn.remote_addr, conn.remote_port),
                              eg, ing, conn.gap_bytes, conn.conn_id))
    return Capture(out, sink.events, stderr, returncode, pipeline)


class Tracer:
    """``apptrace trace`` as a real subprocess, recording raw events."""

    def __init__(self, tmp: Path, args: list[str]) -> None:
        self.raw = str(tmp / f"capture-{time.monotonic_ns()}.raw")
        self.db = str(tmp / "trace.duckdb")
        cmd = [*APPTRACE, "trace", "--raw", self.raw, "--db", self.db, "--quiet", *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._ready.wait(60):
            self.proc.kill()
            raise AssertionError("tracer did not attach within 60 s:\n" + "".join(self.lines))
        if self.proc.poll() is not None:
            raise AssertionError("tracer exited before attaching:\n" + "".join(self.lines))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            if line.startswith("apptrace: tracing"):
                self._ready.set()
        self._ready.set()

    def stop(self, sig: int = signal.SIGINT) -> Capture:
        # Let the last records drain through the 20 ms poll before stopping.
        time.sleep(0.3)
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        stderr = "".join(self.lines)
        wait_for_uprobe_removal(stderr)
        return read_capture(self.raw, stderr, rc)


@pytest.fixture(scope="module")
def mariadb(certs: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[sql_servers.Proc]:
    """A real MariaDB with TLS (tests/sql_servers.py), one per test module that asks for it."""
    try:
        with sql_servers.mariadb(certs, str(tmp_path_factory.mktemp("mariadb"))) as server:
            yield server
    except FileNotFoundError as exc:  # a tool the README's setup installs is missing
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="module")
def postgres(certs: dict[str, str]) -> Iterator[sql_servers.Proc]:
    """A real PostgreSQL 15 with TLS (tests/sql_servers.py), one per test module that asks for it."""
    try:
        with sql_servers.postgres(certs) as server:
            yield server
    except FileNotFoundError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def tracer(ebpf, tmp_path: Path) -> Iterator[callable]:  # noqa: ARG001 - ebpf makes it fail loudly
    running: list[Tracer] = []

    def start(*args: str) -> Tracer:
        t = Tracer(tmp_path, list(args))
        running.append(t)
        return t

    yield start
    for t in running:
        if t.proc.poll() is None:
            t.proc.kill()
            t.proc.wait()


@dataclass
class GoPrograms:
    https_get: str  # tests/peers/go/https_get.go, built as is
    https_get_stripped: str  # the same, built with -ldflags="-s -w" (what container images ship)


@pytest.fixture(scope="session")
def go_programs(tmp_path_factory: pytest.TempPathFactory) -> GoPrograms:
    """Real Go programs, built offline from Debian's golang-go (the README's setup installs it)."""
    require_tool("go")
    out = tmp_path_factory.mktemp("go")
    src = ROOT / "tests/peers/go/https_get.go"
    try:
        return GoPrograms(go_build(src, out / "https_get", out), go_build(src, out / "https_get_stripped", out,
                                                                           ["-ldflags=-s -w"]))
    except GoBuildError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def boring_client(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A C HTTPS client built against Debian's BoringSSL (android-libboringssl-dev)."""
    out = str(tmp_path_factory.mktemp("boring") / "boring_client")
    libdir = "/usr/lib/x86_64-linux-gnu/android"
    subprocess.run(["gcc", "-O1", "-I/usr/include/android", "-o", out, str(ROOT / "tests/peers/boring_client.c"),
                    f"-L{libdir}", "-lssl", "-lcrypto", f"-Wl,-rpath,{libdir}"], check=True)
    return out


def wait_for_uprobe_removal(stderr: str) -> None:
    """Wait for the child a stopped tracer left removing its uprobes (the kernel takes ~150 ms each, one at a
    time machine-wide): until it is done, the next test's tracer would wait for it to attach, and its programs
    are still loaded."""
    m = re.search(r"removing \d+ uprobes in the background \(pid (\d+)", stderr)
    if m is None:
        return
    deadline = time.monotonic() + 300
    while os.path.exists(f"/proc/{m.group(1)}") and time.monotonic() < deadline:
        time.sleep(0.2)


@contextlib.contextmanager
def serving(cmd: list[str], port: int, **popen: object) -> Iterator[sql_servers.Proc]:
    """A server process started from ``cmd``: listening on ``port`` when the block starts, stopped at its end."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    proc = subprocess.Popen(cmd, **popen)  # type: ignore[call-overload]
    try:
        wait_port(port)
        yield sql_servers.Proc(proc, port, proc.pid, {})
    finally:
        sql_servers.stop(proc)


def nghttpd_command(docroot: Path, port: int, certs: dict[str, str] | None = None) -> list[str]:
    """nghttpd serving ``docroot`` on 127.0.0.1: over TLS with the test certificates, or h2c without them."""
    exe = require_tool("nghttpd")
    if certs is None:
        return [exe, "--no-tls", "-a", "127.0.0.1", "-d", str(docroot), str(port)]
    return [exe, "-a", "127.0.0.1", "-d", str(docroot), str(port), certs["server-key"], certs["server"]]


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: run the README's setup command", pytrace=False)
    return path


def read(path: str, sql: str) -> list[tuple]:
    """Rows from a DuckDB file no process holds, opened read-only and closed again."""
    con = duckdb.connect(path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()
