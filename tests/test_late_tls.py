"""Late processes with their own TLS library, captured from their first request (issue 13 part 1, issue 14's
short-lived Go client).

Every client here starts after the tracer is ready and uses a TLS object the tracer has never seen: a private
copy of libssl at a path no other process uses (some only inside their own mount namespace), psycopg's wheel,
a dlopen()ed copy, a freshly built Go binary. The tracer stops each such process while it probes the file
(bpf/tls_capture.c section 13) and continues it; what it could not catch is named in its summary.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb
import pytest

from apptrace.demo.gobuild import go_build
from tests.conftest import APPTRACE, ROOT, free_port, require_tool, wait_port

pytestmark = pytest.mark.ebpf

SYSTEM_LIBSSL = "/usr/lib/x86_64-linux-gnu/libssl.so.3"
MISSED = re.compile(r"apptrace: missed\? pid (\d+) \(([^)]*)\): (.*)")


def missed(stderr: str) -> dict[int, str]:
    """pid -> reason, from the tracer's per-process 'missed?' lines."""
    return {int(m.group(1)): m.group(3) for m in MISSED.finditer(stderr)}


@pytest.fixture
def s_server(certs: dict[str, str]):
    """openssl s_server -www: answers every GET with a status page, one connection at a time."""
    port = free_port()
    proc = subprocess.Popen([require_tool("openssl"), "s_server", "-accept", f"127.0.0.1:{port}", "-www", "-quiet",
                             "-cert", certs["server"], "-key", certs["server-key"], "-naccept", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    yield port
    proc.terminate()
    proc.wait(timeout=10)


def private_libssl(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(SYSTEM_LIBSSL, directory / "libssl.so.3")
    return str(directory)


def curl_cmd(port: int, path: str) -> list[str]:
    return ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", f"https://127.0.0.1:{port}{path}"]


def run_client(cmd: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, (cmd, out)
    return proc.pid, out


def in_own_mount_namespace(libdir: Path, port: int, path: str) -> list[str]:
    """curl whose libssl exists only in its own mount namespace: a tmpfs over an empty directory, filled there."""
    libdir.mkdir(parents=True)
    script = (f"mount -t tmpfs apptrace-test {libdir} && cp {SYSTEM_LIBSSL} {libdir}/ && "
              f"LD_LIBRARY_PATH={libdir} exec {' '.join(curl_cmd(port, path))}")
    return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]


def test_200_private_libssl_clients_from_their_first_request(tracer, s_server, tmp_path: Path) -> None:
    """200 curl processes, each loading libssl from a path no other process uses (20 of them inside their own
    mount namespace), started after the tracer, four at a time: at least 99% of their requests are rows, and
    every client without its row is named as missed.

    Every file is its own copy, probed on its own (9 uprobes each, in 6 uprobe_multi links): the tracer
    removes all 1,800 at once when it stops, where perf-event uprobes took ~150 ms each, one at a time for
    the whole machine (minutes for this test)."""
    require_tool("unshare")
    port = s_server
    dirs = [private_libssl(tmp_path / f"lib{i}") for i in range(180)]
    t = tracer("--comm", "curl")
    jobs = [(curl_cmd(port, f"/c{i}"), {**os.environ, "LD_LIBRARY_PATH": dirs[i]}) for i in range(180)]
    jobs += [(in_own_mount_namespace(tmp_path / f"ns{i}", port, f"/n{i}"), None) for i in range(20)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda job: run_client(*job), jobs))
    cap = t.stop()
    assert cap.returncode == 0, cap.stderr
    assert "in the background" not in cap.stderr, "uprobe links are removed at stop, not left to a child"
    assert all(out == "200" for _, out in results), results
    want = {pid: (f"/c{i}" if i < 180 else f"/n{i - 180}") for i, (pid, _) in enumerate(results)}
    rows = {r["pid"]: r for r in cap.rows.get("http_events", []) if r["pid"] in want and r["trace_role"] == "client"}
    for pid, row in rows.items():
        assert row["req_path"] == want[pid] and row["req_method"] == "GET" and row["comm"] == "curl", row
    named = missed(cap.stderr)
    unanswered = {pid: (r["resp_status"], r.get("resp_body_size"), r.get("latency")) for pid, r in rows.items()
                  if r["resp_status"] != 200}
    assert not unanswered, (unanswered, {p: named.get(p) for p in unanswered})
    uncaught = set(want) - set(rows)
    assert uncaught <= set(named), (sorted(uncaught - set(named)), cap.stderr[-3000:])
    assert len(rows) >= 198, (len(rows), {p: named.get(p) for p in uncaught})
    # The summary counts them: "stopped N late processes", and the misses, if any, by name.
    assert re.search(r"stopped (\d+) late processes", cap.stderr), cap.stderr[-2000:]
    print(f"captured {len(rows)} of 200; missed: {len(uncaught)}; "
          + re.search(r"stopped \d+ late processes[^\n]*", cap.stderr).group(0))


PSYCOPG_SCRIPT = textwrap.dedent("""
    import sys
    import psycopg
    with psycopg.connect(sys.argv[1]) as conn:
        print(conn.execute("SELECT name FROM items WHERE id = 2").fetchone()[0])
""")


def test_psycopg_binary_wheel_from_its_first_query(tracer, postgres, tmp_path: Path) -> None:
    """psycopg 3's binary wheel bundles its own libssl (psycopg_binary.libs/): its first query over TLS is
    captured, in each of four runs (a fresh tracer each time: the wheel's libssl is new to every one)."""
    import importlib.util

    spec = importlib.util.find_spec("psycopg_binary")
    assert spec is not None and spec.origin is not None, "psycopg[binary] is not installed: run scripts/setup.sh"
    libs = Path(spec.origin).parent.parent / "psycopg_binary.libs"
    assert any(p.name.startswith("libssl") for p in libs.iterdir()), list(libs.iterdir())
    script = tmp_path / "pg_query.py"
    script.write_text(PSYCOPG_SCRIPT)
    dsn = f"host=127.0.0.1 port={postgres.port} user=postgres dbname=postgres sslmode=require"
    for run in range(4):
        t = tracer("--comm", "python3", "--comm", "python")
        pid, out = run_client([sys.executable, str(script), dsn])
        cap = t.stop()
        assert cap.returncode == 0 and out.strip() == "pear", (out, cap.stderr)
        rows = [r for r in cap.rows.get("pgsql_events", []) if r["pid"] == pid]
        # psycopg wraps the query in a transaction: its BEGIN is the connection's first query
        assert [r["req_body"] for r in rows] == ["BEGIN", "SELECT name FROM items WHERE id = 2", "COMMIT"], \
            (run, rows, cap.stderr)
        assert all(r["trace_role"] == "client" and r["tls_lib"] == "openssl" and r["resp_status"] == "OK"
                   for r in rows), rows
        assert rows[1]["rows"] == 1 and rows[1]["remote_port"] == postgres.port, rows[1]
        assert "psycopg_binary.libs/libssl" in cap.stderr, cap.stderr


DLOPEN_CLIENT = textwrap.dedent(r"""
    #include <dlfcn.h>
    #include <stdio.h>
    #include <string.h>
    #include <unistd.h>
    #include <arpa/inet.h>
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <stdlib.h>
    /* OpenSSL's API by hand: nothing links libssl; it is dlopen()ed from argv[1] after main starts. */
    int main(int argc, char **argv) {
        void *ssl = dlopen(argv[1], RTLD_NOW);
        if (!ssl) { fprintf(stderr, "%s\n", dlerror()); return 2; }
        void *(*method)(void) = dlsym(ssl, "TLS_client_method");
        void *(*ctx_new)(void *) = dlsym(ssl, "SSL_CTX_new");
        void *(*ssl_new)(void *) = dlsym(ssl, "SSL_new");
        int (*set_fd)(void *, int) = dlsym(ssl, "SSL_set_fd");
        int (*connect_)(void *) = dlsym(ssl, "SSL_connect");
        int (*write_)(void *, const void *, int) = dlsym(ssl, "SSL_write");
        int (*read_)(void *, void *, int) = dlsym(ssl, "SSL_read");
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2]))};
        inet_pton(AF_INET, "127.0.0.1", &a.sin_addr);
        if (connect(fd, (struct sockaddr *)&a, sizeof(a))) return 3;
        void *s = ssl_new(ctx_new(method()));
        set_fd(s, fd);
        if (connect_(s) != 1) return 4;
        const char *req = "GET /dlopened HTTP/1.0\r\nHost: x\r\n\r\n";
        write_(s, req, strlen(req));
        char buf[4096];
        int n = read_(s, buf, sizeof(buf) - 1);
        if (n <= 0) return 5;
        buf[n] = 0;
        printf("%.12s\n", buf);
        return 0;
    }
""")


def test_dlopen_of_a_private_libssl(tracer, s_server, tmp_path: Path) -> None:
    """A program that links no TLS library and dlopen()s a private libssl copy once it runs: captured."""
    src = tmp_path / "dlopen_client.c"
    src.write_text(DLOPEN_CLIENT)
    exe = tmp_path / "dlopen_client"
    subprocess.run([require_tool("gcc"), "-O1", "-o", str(exe), str(src), "-ldl"], check=True)
    lib = private_libssl(tmp_path / "dl") + "/libssl.so.3"
    t = tracer("--comm", "dlopen_client")
    pid, out = run_client([str(exe), lib, str(s_server)])
    cap = t.stop()
    assert cap.returncode == 0 and out.startswith("HTTP/1.0 200"), (out, cap.stderr)
    rows = [r for r in cap.rows.get("http_events", []) if r["pid"] == pid]
    assert [(r["req_path"], r["resp_status"], r["trace_role"]) for r in rows] == [("/dlopened", 200, "client")], \
        (rows, cap.stderr)


def test_never_seen_go_client_on_its_first_run(tracer, https_server, tmp_path: Path) -> None:
    """A Go HTTPS client built in the test at a fresh path, living well under 100 ms, started after the tracer:
    its request is captured on its FIRST run (the tracer stops it at exec while it reads the binary)."""
    server = https_server()
    client = go_build(ROOT / "tests/peers/go/https_get.go", tmp_path / "gofirst", tmp_path / "gowork")
    t = tracer("--comm", "gofirst")
    started = time.monotonic()
    pid, out = run_client([client, f"https://127.0.0.1:{server.port}/hello?first-run"])
    lifetime_ms = (time.monotonic() - started) * 1000
    cap = t.stop()
    print(f"the Go client lived {lifetime_ms:.0f} ms, its stop included")
    assert cap.returncode == 0, cap.stderr
    rows = [r for r in cap.rows.get("http_events", []) if r["pid"] == pid]
    assert [(r["req_path"], r["resp_status"], r["tls_lib"]) for r in rows] == [("/hello?first-run", 200, "go")], \
        (out, rows, cap.stderr)


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def test_a_client_stopped_when_capture_is_killed_is_continued(tracer, s_server, tmp_path: Path) -> None:
    """kill -9 of the capture process while a client is stopped: the watchdog continues the client, which
    finishes its request. The capture process is made to hang first (SIGSTOP), so the client is surely
    stopped when capture dies."""
    lib = private_libssl(tmp_path / "wd")
    t = tracer("--comm", "curl", "--pause-max-ms", "10000")
    os.kill(t.proc.pid, signal.SIGSTOP)  # capture can no longer continue anyone
    client = subprocess.Popen(curl_cmd(s_server, "/watchdog"), env={**os.environ, "LD_LIBRARY_PATH": lib},
                              stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while _state(client.pid) != "T":  # stopped by the kernel at its libssl's open
        assert client.poll() is None and time.monotonic() < deadline, "the client was never stopped"
        time.sleep(0.01)
    os.kill(t.proc.pid, signal.SIGKILL)
    out, _ = client.communicate(timeout=30)
    t.proc.wait(timeout=30)
    assert client.returncode == 0 and out == "200", out


def test_no_pause_names_what_it_may_miss(tracer, s_server, tmp_path: Path) -> None:
    """--no-pause: nothing is stopped; a private-libssl client is probed only after its open, and named: in the
    summary, by `apptrace doctor --db` while the tracer runs, and in the DB's processes table."""
    lib = private_libssl(tmp_path / "np")
    t = tracer("--comm", "curl", "--no-pause")
    pid, out = run_client(curl_cmd(s_server, "/nopause"), {**os.environ, "LD_LIBRARY_PATH": lib})
    deadline = time.monotonic() + 30
    while pid not in missed("".join(t.lines)):  # the late probe and its report
        assert time.monotonic() < deadline, "".join(t.lines)
        time.sleep(0.05)
    doctor = subprocess.run([*APPTRACE, "doctor", "--db", t.db, "--pid", str(os.getpid())], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    cap = t.stop()
    assert cap.returncode == 0 and out == "200", cap.stderr
    reason = missed(cap.stderr).get(pid, "")
    assert "pausing is off (--no-pause)" in reason, cap.stderr
    assert not re.search(r"stopped \d+ late processes", cap.stderr), cap.stderr
    assert re.search(r"missed \d+ processes", cap.stderr), cap.stderr
    assert re.search(rf"\[warn\] missed +pid {pid} \(curl\): .*--no-pause.*\(traced into {re.escape(t.db)}\)",
                     doctor.stdout), doctor.stdout + doctor.stderr
    with duckdb.connect(t.db, read_only=True) as con:
        rows = con.execute("SELECT comm, missed FROM processes WHERE pid = ?", [pid]).fetchall()
        named = con.execute("SELECT count(*) FROM processes WHERE missed IS NOT NULL").fetchone()[0]
    assert rows == [("curl", reason)], rows
    assert named == len(missed(cap.stderr)), (named, cap.stderr)  # the DB names exactly those the summary does
