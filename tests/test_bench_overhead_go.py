"""bench_overhead.py --server go: its Go server, and its floor of empty probes on the tracer's Go attach points.

The whole bench waits for a quiet machine before every load (minutes here); this checks its parts in seconds:
the server serves the page over HTTP/2 to h2load, and the empty mode puts a plain uprobe at each place the
tracer does (entry and every RET of crypto/tls.(*Conn).Read and Write), without which full/empty compares
the tracer to nothing — and the Go server survives it (a uretprobe would crash it).
"""

from __future__ import annotations

from pathlib import Path

from apptrace.capture.elfsyms import TlsObject, inspect
from apptrace.capture.gosyms import READ, WRITE
from apptrace.demo.gobuild import go_build
from bench.bench_overhead import GO_SERVER_SRC, Mode, load, make_site, start_server
from tests.conftest import require_tool


def test_go_server_under_empty_probes_on_every_attach_point(ebpf, tmp_path: Path) -> None:  # noqa: ARG001
    require_tool("go")
    require_tool("h2load")
    tmp = str(tmp_path)
    certs, docroot = make_site(tmp)
    exe = go_build(GO_SERVER_SRC, tmp_path / "static_server", tmp_path / "build")
    found = inspect(exe)
    assert isinstance(found, TlsObject) and found.tls_lib == "go", found
    attach_points = 2 + len(found.returns[READ]) + len(found.returns[WRITE])
    server, port = start_server("go", certs, docroot, exe)
    try:
        _, _, done = load("go", port, 1, tmp)
        assert done > 0
        with Mode("empty", server.pid, tmp) as floor:
            assert floor.floor_probes == attach_points
            _, _, done_empty = load("go", port, 1, tmp)
        assert done_empty > 0
        assert server.poll() is None, "the Go server died under the empty probes"
    finally:
        server.terminate()
        server.wait()
