"""End-to-end capture through the real tracer: real TLS libraries, real clients and servers, as root.

Each test asserts the exact plaintext each way, the pid, the role and the 4-tuple.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import APPTRACE, ROOT, require_tool

pytestmark = pytest.mark.ebpf

UA = "apptrace-test"


def expected_get(port: int, path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: {UA}\r\nAccept: */*\r\n{extra}\r\n".encode()


def expected_response(code: int, reason: str, body: bytes) -> bytes:
    head = (f"HTTP/1.1 {code} {reason}\r\nServer: apptrace-demo\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def curl(port: int, path: str, *extra: str, certs: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [require_tool("curl"), "-sS", "--http1.1", "-A", UA, "--cacert", certs["ca"] if certs else "/dev/null",
           *extra, f"https://127.0.0.1:{port}{path}"]
    if certs is None:
        cmd.insert(1, "-k")
    return subprocess.run(cmd, capture_output=True, check=True)


def one(conns: list, what: str):
    assert len(conns) == 1, f"expected one {what} connection, got {[(c.conn_id, bytes(c.egress[:40])) for c in conns]}"
    return conns[0]


def assert_pair(client, server, server_port: int) -> None:
    """Both ends of one TCP connection, each seen from its own process."""
    assert client.role == "client"
    assert server.role == "server"
    assert client.remote == ("127.0.0.1", server_port)
    assert server.local == ("127.0.0.1", server_port)
    assert server.remote == client.local
    assert client.local[0] == "127.0.0.1" and client.local[1] not in (None, server_port)
    assert bytes(client.egress) == bytes(server.ingress)
    assert bytes(server.egress) == bytes(client.ingress)
    assert client.gap_bytes == 0 and server.gap_bytes == 0


@pytest.mark.parametrize("mtls", [False, True], ids=["tls", "mtls"])
def test_curl_and_python_server(tracer, https_server, certs, mtls):
    server = https_server(mtls=mtls)
    t = tracer()
    extra = ["--cert", certs["client"], "--key", certs["client-key"]] if mtls else []
    proc = subprocess.Popen([require_tool("curl"), "-sS", "--http1.1", "-A", UA, "--cacert", certs["ca"], *extra,
                             f"https://127.0.0.1:{server.port}/hello"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out == b"hello from apptrace-demo\n"
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr

    client = one(cap.for_pid(proc.pid), "curl")
    srv = one(cap.for_pid(server.pid), "server")
    assert client.tls_lib == "openssl" and srv.tls_lib == "openssl"  # curl: SSL_read/write; Python: the _ex pair
    assert bytes(client.egress) == expected_get(server.port, "/hello")
    assert bytes(client.ingress) == expected_response(200, "OK", b"hello from apptrace-demo\n")
    assert_pair(client, srv, server.port)
    # The parsers saw the same thing: one stitched request each side.
    rows = {(r["pid"], r["trace_role"]): r for r in cap.rows["http_events"]}
    assert rows[(proc.pid, "client")]["req_path"] == "/hello"
    assert rows[(server.pid, "server")]["resp_status"] == 200
    assert "apptrace: traced" in cap.stderr and "losses: lost_events=0" in cap.stderr


def test_node_client_static_openssl(tracer, https_server):
    node = require_tool("node")
    server = https_server()
    t = tracer()  # node starts after the tracer: its executable is probed when it execs
    script = (
        "const https=require('https');"
        f"https.get({{host:'127.0.0.1',port:{server.port},path:'/hello',rejectUnauthorized:false,"
        f"headers:{{'User-Agent':'{UA}'}}}},"
        "r=>{let b='';r.on('data',d=>b+=d);r.on('end',()=>{process.stdout.write(b);process.exit(0)})});"
    )
    proc = subprocess.Popen([node, "-e", script], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out == b"hello from apptrace-demo\n"
    cap = t.stop()
    client = one(cap.for_pid(proc.pid), "node")
    srv = one(cap.for_pid(server.pid), "server")
    assert client.tls_lib == "openssl"
    assert client.fd >= 0, "node's memory-BIO connection was never tied to its socket"
    req = bytes(client.egress)
    assert req.startswith(b"GET /hello HTTP/1.1\r\n") and f"User-Agent: {UA}\r\n".encode() in req
    assert bytes(client.ingress) == expected_response(200, "OK", b"hello from apptrace-demo\n")
    assert_pair(client, srv, server.port)
    assert any("/usr/bin/node" in line or "node (openssl)" in line for line in cap.stderr.splitlines()
               if "probed" in line), cap.stderr


def test_boringssl_c_client(tracer, https_server, boring_client):
    server = https_server()
    t = tracer()
    proc = subprocess.Popen([boring_client, "127.0.0.1", str(server.port), "/hello"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out.endswith(b"hello from apptrace-demo\n")
    cap = t.stop()
    client = one(cap.for_pid(proc.pid), "boringssl client")
    srv = one(cap.for_pid(server.pid), "server")
    assert client.tls_lib == "boringssl"
    assert bytes(client.egress) == (f"GET /hello HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                                    "User-Agent: boring-client\r\nConnection: close\r\n\r\n").encode()
    assert bytes(client.ingress) == expected_response(200, "OK", b"hello from apptrace-demo\n")
    assert_pair(client, srv, server.port)


def test_one_mib_request_body(tracer, https_server, tmp_path):
    server = https_server()
    body = os.urandom(1 << 20)
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    t = tracer()
    proc = subprocess.Popen([require_tool("curl"), "-sSk", "--http1.1", "-A", UA, "--data-binary", f"@{path}",
                             "-H", "Content-Type: application/octet-stream",
                             f"https://127.0.0.1:{server.port}/echo"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=60)
    assert out == f"{len(body)} {hashlib.sha256(body).hexdigest()}\n".encode()
    cap = t.stop()
    srv = one(cap.for_pid(server.pid), "server")
    client = one(cap.for_pid(proc.pid), "curl")
    for side, stream in (("server ingress", srv.ingress), ("client egress", client.egress)):
        head, sep, got = bytes(stream).partition(b"\r\n\r\n")
        assert sep, side
        # Byte-exact, or the missing bytes are counted as a gap: never silently short.
        conn = srv if side.startswith("server") else client
        assert len(got) + conn.gap_bytes == len(body), side
        if conn.gap_bytes == 0:
            assert got == body, side
    assert srv.gap_bytes == 0 and srv.ingress.endswith(body[-4096:])
    row = next(r for r in cap.rows["http_events"] if r["pid"] == server.pid)
    assert row["req_body_size"] == len(body) and len(row["req_body"] or "") <= 1024 * 4
    # Capture copied the data in runs, unread: the kernel announced both processes (EV_TGID)
    # and knew both sockets, so no data record needed a look.
    records_in_runs, single_data = data_records_by_frame(t.raw, {server.pid, proc.pid})
    assert records_in_runs > len(body) >> 14 and single_data == 0


def data_records_by_frame(raw: str, pids: set[int] | None = None) -> tuple[int, int]:
    """Data records in a raw file that came in runs (kind 2 frames), and one at a time (kind 0) — of ``pids`` only,
    if given (a tracer of everything also copies other processes' plaintext sockets, whose first record may be
    looked at)."""
    from apptrace.contract.events import EV_DATA, decode
    from apptrace.contract.rawfile import FRAME, KIND_EVENT, KIND_RING, split_records

    data = open(raw, "rb").read()
    pos = data.index(b"\n", data.index(b"\n") + 1) + 1
    in_runs = single = 0
    while pos < len(data):
        kind, n = FRAME.unpack_from(data, pos)
        payload = data[pos + FRAME.size:pos + FRAME.size + n]
        if kind == KIND_RING:
            records = split_records(payload)
            assert all(r[0] == EV_DATA for r in records)
            in_runs += sum(1 for r in records if pids is None or decode(r).pid in pids)
        elif kind == KIND_EVENT and payload[0] == EV_DATA and (pids is None or decode(payload).pid in pids):
            single += 1
        pos += FRAME.size + n
    return in_runs, single


def test_many_short_lived_clients(tracer, https_server, tmp_path):
    server = https_server()
    t = tracer()
    bystanders = []
    for _ in range(3):  # processes that never touch TLS
        p = subprocess.Popen(["true"])
        p.wait()
        bystanders.append(p.pid)
    pids = []
    for i in range(20):
        proc = subprocess.Popen([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                                 f"https://127.0.0.1:{server.port}/status/{200 + i}"], stdout=subprocess.DEVNULL)
        proc.wait(timeout=30)
        pids.append(proc.pid)
    cap = t.stop()
    for i, pid in enumerate(pids):
        client = one(cap.for_pid(pid), f"curl #{i}")
        assert client.role == "client" and client.remote == ("127.0.0.1", server.port)
        assert bytes(client.egress) == expected_get(server.port, f"/status/{200 + i}")
        assert bytes(client.ingress).startswith(f"HTTP/1.1 {200 + i} ".encode())
    described = cap.pipeline.sink.processes
    assert all(described[pid]["comm"] == "curl" for pid in pids), "every client is described, gone or not"
    assert not described.keys() & set(bystanders), "processes that did no TLS are not"
    server_conns = cap.for_pid(server.pid)
    assert len(server_conns) == 20
    assert {bytes(c.ingress) for c in server_conns} == {expected_get(server.port, f"/status/{200 + i}")
                                                         for i in range(20)}
    assert_damaged_raw_file_keeps_what_came_before(t.raw, tmp_path, len(cap.rows["http_events"]))


def assert_damaged_raw_file_keeps_what_came_before(raw: str, tmp_path, full_rows: int) -> None:
    """A raw file cut mid-frame (a killed tracer) replays up to the damage, then exits 1 with one line."""
    from apptrace.contract.rawfile import FRAME, MAGIC

    data = open(raw, "rb").read()
    # Cut inside the frame that spans two thirds of the file, never on a boundary.
    pos = data.index(b"\n", len(MAGIC)) + 1
    while True:
        _kind, n = FRAME.unpack_from(data, pos)
        if pos + FRAME.size + n >= len(data) * 2 // 3:
            break
        pos += FRAME.size + n
    cut = tmp_path / "cut.raw"
    cut.write_bytes(data[: pos + FRAME.size + n // 2])
    db = tmp_path / "cut.duckdb"
    proc = subprocess.run([*APPTRACE, "replay", str(cut), "--db", str(db)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1
    assert "truncated" in proc.stderr.strip().splitlines()[-1], proc.stderr
    proc = subprocess.run([*APPTRACE, "sql", "--db", str(db), "--format", "json",
                           "SELECT count(*) AS n FROM http_events"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    n = json.loads(proc.stdout)["output"][0]["n"]
    assert 0 < n < full_rows
    bad = tmp_path / "bad.raw"
    bad.write_bytes(b"not a capture")
    proc = subprocess.run([*APPTRACE, "replay", str(bad), "--db", str(tmp_path / "bad.duckdb")], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_pid_filter_traces_only_that_process(tracer, https_server):
    server = https_server()
    t = tracer("--pid", str(server.pid), "--drain-ms", "5")
    proc = subprocess.run([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                           f"https://127.0.0.1:{server.port}/hello"], capture_output=True, check=True)
    assert proc.returncode == 0
    cap = t.stop()
    assert {c.pid for c in cap.conns} == {server.pid}
    assert set(cap.pipeline.sink.processes) == {server.pid}, "other processes' execs are not recorded"
    srv = one(cap.conns, "server")
    assert bytes(srv.ingress) == expected_get(server.port, "/hello")


def _prog_ids_held_by(pid: int) -> set[int]:
    """BPF program ids the process holds open (from /proc/PID/fdinfo)."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def _uprobe_multi_links_held_by(pid: int) -> dict[int, int]:
    """link id → uprobes in it, for each uprobe_multi link (uretprobe_multi for returns) the process holds."""
    links = {}
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                info = dict(line.split(":", 1) for line in f if ":" in line)
        except (OSError, ValueError):
            continue
        if info.get("link_type", "").strip() in ("uprobe_multi", "uretprobe_multi"):
            links[int(info["link_id"])] = int(info["uprobe_cnt"])
    return links


def _loaded_link_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "link", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"bpftool link show failed: {out.stderr}", pytrace=False)
    return {link["id"] for link in json.loads(out.stdout or "[]")}


def _loaded_prog_ids() -> set[int]:
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"bpftool prog show failed: {out.stderr}", pytrace=False)
    return {p["id"] for p in json.loads(out.stdout or "[]")}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stops_cleanly_and_leaves_nothing_attached(tracer, https_server, sig):
    server = https_server()
    t = tracer()
    held = _prog_ids_held_by(t.proc.pid)
    assert len(held) >= 10 and held <= _loaded_prog_ids(), "while tracing, our programs are loaded"
    # This kernel (6.6+) has uprobe_multi links: one per program and file, all closed together at stop
    # instead of one perf-event uprobe at a time (~150 ms each, machine-wide).
    links = _uprobe_multi_links_held_by(t.proc.pid)
    uprobes = int(re.search(r"tracing .*?: (\d+) uprobes on", "".join(t.lines)).group(1))
    assert links and sum(links.values()) == uprobes, (links, uprobes)
    curl(server.port, "/hello")
    cap = t.stop(sig)
    assert cap.returncode == 0, cap.stderr
    assert "apptrace: traced" in cap.stderr and "apptrace: losses:" in cap.stderr
    assert "in the background" not in cap.stderr, "links need no background removal"
    with open("/sys/kernel/tracing/uprobe_events") as f:
        assert "apptrace" not in f.read()
    assert not held & _loaded_prog_ids(), "programs of the stopped tracer are still loaded"
    assert not set(links) & _loaded_link_ids(), "uprobe links of the stopped tracer are still there"
    assert len(cap.for_pid(server.pid)) == 1


def test_perf_event_uprobes_where_the_kernel_has_no_links(tracer, https_server, monkeypatch):
    """Kernels before 6.6 have no uprobe_multi links: the tracer falls back to BCC's perf-event uprobes
    (APPTRACE_UPROBES=perf runs that path here). It captures, holds no link, and leaves nothing attached."""
    monkeypatch.setenv("APPTRACE_UPROBES", "perf")
    server = https_server()
    t = tracer("--pid", str(server.pid))
    held = _prog_ids_held_by(t.proc.pid)
    assert not _uprobe_multi_links_held_by(t.proc.pid), "perf-event uprobes, not links"
    perf_fds = sum(1 for fd in os.listdir(f"/proc/{t.proc.pid}/fd")
                   if os.readlink(f"/proc/{t.proc.pid}/fd/{fd}") == "anon_inode:[perf_event]")
    uprobes = int(re.search(r"tracing .*?: (\d+) uprobes on", "".join(t.lines)).group(1))
    assert perf_fds >= uprobes > 0, (perf_fds, uprobes)
    curl(server.port, "/hello")
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    rows = [r for r in cap.rows.get("http_events", []) if r["pid"] == server.pid]
    assert [r["req_path"] for r in rows] == ["/hello"] and rows[0]["resp_status"] == 200, rows
    assert not held & _loaded_prog_ids(), "programs of the stopped tracer are still loaded"


def test_a_closed_terminal_stops_it_like_sigterm(ebpf, https_server, tmp_path):
    """SIGHUP to the whole session (what closing its terminal does): both processes stop in order, the
    rows are stored, the summary is written, exit 0."""
    server = https_server()
    db = tmp_path / "hup.duckdb"
    log = open(tmp_path / "stderr", "w+")
    proc = subprocess.Popen([*APPTRACE, "trace", "--db", str(db), "--pid", str(server.pid)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    for _ in range(600):
        log.seek(0)
        if "apptrace: tracing" in log.read() or proc.poll() is not None:
            break
        time.sleep(0.1)
    proc_curl = subprocess.run([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                                f"https://127.0.0.1:{server.port}/hello"], capture_output=True, timeout=30)
    assert proc_curl.returncode == 0
    os.killpg(proc.pid, signal.SIGHUP)
    assert proc.wait(timeout=120) == 0
    log.seek(0)
    err = log.read()
    assert "apptrace: traced" in err and "1 records" in err, err
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM http_events WHERE req_path = '/hello'").fetchall() == [(1,)]
    finally:
        con.close()


def test_duration_stops_by_itself(ebpf, tmp_path):
    proc = subprocess.run([*APPTRACE, "trace", "--duration", "1", "--no-store", "--quiet"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "apptrace: tracing" in proc.stderr and "apptrace: traced" in proc.stderr


def test_refuses_without_root(tmp_path):
    # Import first (root's Python install is not readable by nobody), then drop to nobody.
    code = ("import os, sys, argparse, apptrace.cli, apptrace.capture.loader, apptrace.capture.tracer, apptrace.analysis.pipeline, "
            "apptrace.analysis.replay, apptrace.store.writer, apptrace.protocols, apptrace.cli.trace, apptrace.analysis.config, apptrace.analysis.process, apptrace.contract.rawfile, apptrace.contract.spool, apptrace.common.units; os.setgid(65534); os.setuid(65534); "
            "sys.exit(apptrace.cli.main(sys.argv[1:]))")
    proc = subprocess.run([sys.executable, "-c", code, "trace", "--db", str(tmp_path / "x.duckdb")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "root" in lines[0], proc.stderr


def test_an_empty_read_does_not_lend_its_fd_the_next_sockets_port(tracer, https_server):
    """A read that copies nothing must not leave its fd to take another socket's address.

    The client reads its second connection during the handshake before the server answered
    (EAGAIN), then reads a response on its first, known connection: that read's
    tcp_rcv_space_adjust once named the first connection's port as the second's.
    """
    server = https_server()
    t = tracer()
    proc = subprocess.Popen(["python3", str(ROOT / "tests" / "peers" / "stale_client.py"), str(server.port)],
                            stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    y_port, x_port = (int(p) for p in out.split())
    cap = t.stop()
    clients = {c.local[1] for c in cap.for_pid(proc.pid)}
    servers = {c.remote[1] for c in cap.for_pid(server.pid)}
    assert clients == servers == {y_port, x_port}, (clients, servers, y_port, x_port)


def test_sockets_the_kernel_never_saw_open_are_looked_at_one_record_at_a_time(tracer, certs):
    """TLS over a socketpair: no connect() or accept(), so the kernel has no connection for the fds.

    Their data records come flagged, one at a time, for capture to read /proc about the
    socket, and the plaintext is still complete each way.
    """
    from apptrace.contract.annotations import SocketSeen
    from apptrace.contract.rawfile import KIND_ANNOTATION, RawFormatError, read_raw

    t = tracer()

    def socks() -> dict[int, SocketSeen]:
        found = {}
        try:
            for kind, a in read_raw(t.raw)[1]:
                if kind == KIND_ANNOTATION and isinstance(a, SocketSeen) and a.pid == proc.pid:
                    found[a.fd] = a
        except RawFormatError:
            pass  # the last frame is still being written
        return found

    proc = subprocess.Popen(["python3", str(ROOT / "tests" / "peers" / "socketpair_tls.py"), certs["server"],
                             certs["server-key"]], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    client_fd, server_fd = (int(fd) for fd in proc.stdout.readline().split())
    # The sockets stay open until capture has read /proc about them (bounded: a miss fails below).
    for _ in range(300):
        if len(socks()) == 2:
            break
        time.sleep(0.1)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0
    cap = t.stop()
    by_fd = {c.fd: c for c in cap.for_pid(proc.pid)}
    assert set(by_fd) == {client_fd, server_fd}
    request = b"GET /pair HTTP/1.1\r\nHost: pair\r\nUser-Agent: apptrace-test\r\n\r\n"
    assert bytes(by_fd[client_fd].egress) == bytes(by_fd[server_fd].ingress) == request
    assert bytes(by_fd[server_fd].egress) == bytes(by_fd[client_fd].ingress)
    assert bytes(by_fd[client_fd].ingress).startswith(b"HTTP/1.1 200 OK\r\n")
    described = socks()
    for fd in (client_fd, server_fd):
        # a socketpair is two Unix sockets without a path (/proc/net/unix lists them by inode)
        assert described[fd].is_socket and described[fd].family == "unix", described
        assert described[fd].local_addr is None and described[fd].remote_addr is None, described
    _, single_data = data_records_by_frame(t.raw)
    assert single_data >= 4


@pytest.mark.parametrize("arg", ["--drain-ms=0", "--drain-ms=x", "--analysis-yield-above=101"])
def test_bad_trace_option_is_one_line_and_exit_2(arg, tmp_path):
    proc = subprocess.run([*APPTRACE, "trace", arg, "--db", str(tmp_path / "x.duckdb")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("apptrace trace: error: argument"), proc.stderr
    assert not (tmp_path / "x.duckdb").exists()


def test_stripped_tls_library_is_reported(ebpf, tmp_path):
    """grpcio bundles a stripped BoringSSL: reported by name, never skipped silently."""
    import glob

    import grpc  # noqa: F401 - the import maps cygrpc, which holds the stripped BoringSSL

    so = glob.glob(os.path.join(os.path.dirname(grpc.__file__), "_cython", "cygrpc*.so"))[0]
    holder = subprocess.Popen([sys.executable, "-c", "import grpc, time; time.sleep(60)"])
    try:
        import time

        time.sleep(1.0)
        proc = subprocess.run([*APPTRACE, "doctor"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert os.path.basename(so) in proc.stdout and "stripped" in proc.stdout, proc.stdout
        proc = subprocess.run([*APPTRACE, "trace", "--duration", "1", "--no-store", "--quiet"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert f"cannot probe {so}" in proc.stderr, proc.stderr
    finally:
        holder.kill()
        holder.wait()


def test_comm_filter_traces_only_matching_processes(tracer, https_server):
    server = https_server()
    t = tracer("--comm", "curl")
    proc = subprocess.Popen([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                             f"https://127.0.0.1:{server.port}/hello"], stdout=subprocess.DEVNULL)
    proc.wait(timeout=30)
    cap = t.stop()
    assert {c.pid for c in cap.conns} == {proc.pid}
    client = one(cap.conns, "curl")
    assert client.role == "client" and bytes(client.egress) == expected_get(server.port, "/hello")


def test_capture_only_records_everything_for_replay(tracer, https_server):
    """--capture-only parses nothing live; replaying its raw file gives the same streams and rows."""
    server = https_server()
    t = tracer("--capture-only")
    proc = subprocess.Popen([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                             f"https://127.0.0.1:{server.port}/hello"], stdout=subprocess.DEVNULL)
    proc.wait(timeout=30)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert " 0 records" in cap.stderr and not os.path.exists(t.db), "capture-only must not parse or store"
    client = one(cap.for_pid(proc.pid), "curl")
    srv = one(cap.for_pid(server.pid), "server")
    assert bytes(client.egress) == expected_get(server.port, "/hello")
    assert_pair(client, srv, server.port)
    assert {r["trace_role"] for r in cap.rows["http_events"] if r["pid"] in (proc.pid, server.pid)} == {"client",
                                                                                                     "server"}


def test_pid_and_comm_together_trace_both(tracer, https_server):
    """--pid and --comm are a union: the server by its pid, curl by its name, both sides captured."""
    server = https_server()
    other = https_server()
    t = tracer("--pid", str(server.pid), "--comm", "curl")
    curls = []
    for port in (server.port, other.port):
        proc = subprocess.Popen([require_tool("curl"), "-sSk", "--http1.1", "-A", UA,
                                 f"https://127.0.0.1:{port}/hello"], stdout=subprocess.DEVNULL)
        assert proc.wait(timeout=30) == 0
        curls.append(proc.pid)
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert f"pids {server.pid} and comm curl" in cap.stderr
    assert {c.pid for c in cap.conns} == {server.pid, *curls}, "the server by --pid, both curls by --comm, not the other"
    srv = one(cap.for_pid(server.pid), "server")
    client = one(cap.for_pid(curls[0]), "curl")
    assert bytes(client.egress) == expected_get(server.port, "/hello")
    assert_pair(client, srv, server.port)


def test_a_second_tracer_on_a_live_db_is_refused_with_the_holders_pid(tracer, https_server, tmp_path):
    server = https_server()
    first = tracer("--pid", str(server.pid))
    second = subprocess.run([*APPTRACE, "trace", "--db", first.db, "--duration", "5"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert second.returncode == 2, second.stderr
    lines = second.stderr.strip().splitlines()
    assert len(lines) == 1 and f"pid {first.proc.pid}" in lines[0] and "remove" not in lines[0], second.stderr
    curl(server.port, "/hello")  # the first one is unharmed
    cap = first.stop()
    assert cap.returncode == 0, cap.stderr
    assert len(cap.for_pid(server.pid)) == 1


@pytest.mark.parametrize(("content", "says"), [("truncated", "corrupt"), ("sqlite", "SQLite database")])
def test_a_damaged_db_is_refused_before_any_probe(ebpf, tmp_path, content, says):
    db = tmp_path / "bad.duckdb"
    if content == "sqlite":
        db.write_bytes(b"SQLite format 3\0" + b"\0" * 4080)
    else:
        from apptrace.store.writer import Store

        Store(str(db)).close()
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    proc = subprocess.run([*APPTRACE, "trace", "--db", str(db), "--duration", "5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert says in proc.stderr and "in use" not in proc.stderr and "apptrace: tracing" not in proc.stderr, proc.stderr
    with open("/sys/kernel/tracing/uprobe_events") as f:
        assert "apptrace" not in f.read()


def test_doctor_names_the_processes_using_tls_and_leaves_apptrace_out(tracer, https_server):
    server = https_server()
    t = tracer("--pid", str(server.pid))  # a tracer and its analysis process are running
    ours = [t.proc.pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == t.proc.pid]
    proc = subprocess.run([*APPTRACE, "doctor"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "[  ok] ring walk              in C" in proc.stdout, proc.stdout
    # Each library lists its first five users only: on a busy machine the server may be past them, so it is
    # also asked about by pid, which lists every process it is given.
    one = subprocess.run([*APPTRACE, "doctor", "--pid", str(server.pid), *(f"--pid={p}" for p in ours)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    t.stop()
    assert proc.returncode == 0 and one.returncode == 0, proc.stdout + proc.stderr + one.stdout + one.stderr
    comm = open(f"/proc/{server.pid}/comm").read().strip()
    assert any("TLS openssl" in ln and f"{comm} ({server.pid})" in ln for ln in one.stdout.splitlines()), one.stdout
    assert "and 1 more" not in one.stdout, one.stdout  # the tracer's processes are not counted either
    assert len(ours) >= 2, "the tracer and its analysis process"
    for pid in ours:
        assert f"({pid})" not in proc.stdout and f"({pid})" not in one.stdout, proc.stdout + one.stdout
    gone = subprocess.run([*APPTRACE, "doctor", "--pid", "4194305"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert gone.returncode == 2 and gone.stderr.strip() == "apptrace doctor: no process with pid 4194305", gone.stderr


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def test_programs_seen_but_not_captured_are_named(tracer, https_server, go_programs):
    """GnuTLS and NSS programs: doctor names each with the reason, and so do trace's log and summary. A Go
    program is captured now: doctor lists it with its Go version, trace among the probed objects."""
    server = https_server()
    url = f"https://127.0.0.1:{server.port}/hello"
    t = tracer()  # everything: the Go client starts after the tracer
    go = subprocess.Popen([go_programs.https_get_stripped, "--linger", "30", url], stdout=subprocess.PIPE, text=True)
    gnutls = subprocess.Popen([require_tool("gnutls-cli"), "--insecure", "-p", str(server.port), "127.0.0.1"],
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nss = subprocess.Popen([sys.executable, "-c", "import ctypes, time; ctypes.CDLL('libssl3.so'); "
                            "print('loaded', flush=True); time.sleep(30)"], stdout=subprocess.PIPE, text=True)
    try:
        assert go.stdout.readline().startswith("200 ") and go.stdout.readline().strip() == "done"
        assert nss.stdout.readline().strip() == "loaded"
        time.sleep(2.5)  # a new binary is looked at on exec, its libraries again within 2 s
        # By pid: each library lists only its first five users, and other processes may come first.
        proc = subprocess.run([*APPTRACE, "doctor", f"--pid={go.pid}", f"--pid={gnutls.pid}", f"--pid={nss.pid}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        cap = t.stop()
    finally:
        for p in (go, gnutls, nss):
            p.kill()
            p.wait()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [ln for ln in proc.stdout.splitlines() if "cannot probe" in ln]
    name = os.path.basename(go_programs.https_get_stripped)[:15]  # comm is cut at 15 characters

    def said(reason: str, who: str) -> bool:
        return any(reason in ln and who in ln for ln in lines)

    assert any("] TLS go go1.19" in ln and f"{name} ({go.pid})" in ln for ln in proc.stdout.splitlines()), proc.stdout
    assert said("GnuTLS: not captured", f"gnutls-cli ({gnutls.pid})"), proc.stdout
    assert said("NSS: not captured", f"({nss.pid})"), proc.stdout
    assert cap.returncode == 0, cap.stderr
    assert f"cannot probe {go_programs.https_get_stripped}" not in cap.stderr, cap.stderr
    assert f"{go_programs.https_get_stripped} (go)" in cap.stderr, cap.stderr
    seen = next(ln for ln in cap.stderr.splitlines() if ln.startswith("apptrace: seen, not captured:"))
    assert go_programs.https_get_stripped not in seen and "GnuTLS" in seen, seen
