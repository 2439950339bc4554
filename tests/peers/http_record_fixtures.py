"""Record the HTTP/1, HTTP/2 and gRPC fixtures under tests/fixtures/ from real peers.

Run from the repository root: ``.venv/bin/python -m tests.peers.http_record_fixtures [name…]``.
Each fixture is one connection through ``tests.recorder.RecordingProxy`` (plaintext, so the
bytes are what TLS would carry). Needs curl, nghttpd and h2load (nghttp2 packages) and grpcio.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.peers import grpc_server, http1_server
from tests.recorder import RecordingProxy

FIX = Path(__file__).resolve().parent.parent / "fixtures"


def _wait_closed(proxy: RecordingProxy, n: int = 1) -> None:
    for _ in range(100):
        if len(proxy.connections) >= n:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # let the proxy see the last bytes and the close


def _record(upstream_port: int, out: Path, client) -> None:
    with RecordingProxy(upstream_port) as proxy:
        client(proxy.port)
        _wait_closed(proxy)
    proxy.save(out)
    print(f"{out.relative_to(FIX.parent.parent)}: {sum(len(c[2]) for c in proxy.connections[0])} bytes")


def _curl(*args: str) -> None:
    subprocess.run(["curl", "-s", "-o", "/dev/null", *args], check=True)


def http1() -> None:
    server, _ = http1_server.serve()
    port = server.server_address[1]
    d = FIX / "http1"

    def keepalive(p: int) -> None:
        u = f"http://127.0.0.1:{p}"
        # one curl, several URLs: curl reuses the connection (keep-alive)
        subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null", "-o", "/dev/null",
             "-H", "Authorization: Bearer secret-token", f"{u}/hello", f"{u}/json", f"{u}/slow", f"{u}/missing"],
            check=True,
        )  # fmt: skip

    _record(port, d / "curl_keepalive.jsonl", keepalive)
    _record(port, d / "curl_chunked.jsonl", lambda p: _curl(f"http://127.0.0.1:{p}/chunked"))
    _record(port, d / "curl_gzip.jsonl", lambda p: _curl("--compressed", f"http://127.0.0.1:{p}/gzip"))
    _record(port, d / "curl_head.jsonl", lambda p: _curl("-I", f"http://127.0.0.1:{p}/hello"))
    _record(
        port,
        d / "curl_post_expect.jsonl",
        lambda p: _curl("-H", "Expect: 100-continue", "-H", "Content-Type: application/json",
                        "--data-binary", '{"name": "apptrace"}', f"http://127.0.0.1:{p}/echo"),
    )  # fmt: skip
    _record(port, d / "curl_http10_close.jsonl", lambda p: _curl("--http1.0", f"http://127.0.0.1:{p}/close"))

    def pipelined(p: int) -> None:
        # curl cannot pipeline; a raw socket sends three requests before reading anything.
        s = socket.create_connection(("127.0.0.1", p))
        s.sendall(
            b"GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"HEAD /json HTTP/1.1\r\nHost: localhost\r\n\r\n"
            b"GET /chunked HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        while s.recv(65536):
            pass
        s.close()

    _record(port, d / "pipelined.jsonl", pipelined)
    server.shutdown()


def http2() -> None:
    d = FIX / "http2"
    with tempfile.TemporaryDirectory() as docroot:
        Path(docroot, "index.html").write_text("<html><body>hello from nghttpd</body></html>\n")
        Path(docroot, "data.json").write_text('{"answer": 42}\n')
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        proc = subprocess.Popen(["nghttpd", "--no-tls", "-d", docroot, str(port)])
        try:
            for _ in range(100):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)
            # curl 7.88 cannot reuse a prior-knowledge connection for a second URL (exit 16): one URL each.
            _record(
                port,
                d / "curl_h2c.jsonl",
                lambda p: _curl("--http2-prior-knowledge", f"http://127.0.0.1:{p}/index.html"),
            )
            _record(
                port,
                d / "nghttp_multi.jsonl",
                lambda p: subprocess.run(
                    ["nghttp", "-n", f"http://127.0.0.1:{p}/index.html", f"http://127.0.0.1:{p}/data.json",
                     f"http://127.0.0.1:{p}/missing"],
                    check=True,
                ),
            )  # fmt: skip
            _record(
                port,
                d / "h2load.jsonl",
                lambda p: subprocess.run(
                    ["h2load", "-n", "8", "-c", "1", "-m", "4", f"http://127.0.0.1:{p}/index.html"],
                    check=True, stdout=subprocess.DEVNULL,
                ),
            )  # fmt: skip
        finally:
            proc.terminate()
            proc.wait()


def grpc() -> None:
    import grpc as grpcio

    listener, _ = grpc_server.serve()
    port = listener.getsockname()[1]

    def client(p: int) -> None:
        with grpcio.insecure_channel(f"127.0.0.1:{p}") as ch:
            unary = ch.unary_unary("/apptrace.Echo/Unary")
            assert unary(b"ping", timeout=10) == b"echo:ping"
            stream = ch.unary_stream("/apptrace.Echo/Stream")
            assert list(stream(b"go", timeout=10)) == [b"item 0", b"item 1", b"item 2"]
            fail = ch.unary_unary("/apptrace.Echo/Fail")
            try:
                fail(b"x", timeout=10)
            except grpcio.RpcError as e:
                assert e.code() == grpcio.StatusCode.NOT_FOUND
            else:
                raise AssertionError("Fail did not fail")

    _record(port, FIX / "grpc" / "grpcio_calls.jsonl", client)

    def gzip_client(p: int) -> None:
        with grpcio.insecure_channel(f"127.0.0.1:{p}", compression=grpcio.Compression.Gzip) as ch:
            payload = b"compress me " * 8
            assert ch.unary_unary("/apptrace.Echo/Unary")(payload, timeout=10) == b"echo:" + payload

    _record(port, FIX / "grpc" / "grpcio_gzip.jsonl", gzip_client)
    listener.close()


if __name__ == "__main__":
    todo = sys.argv[1:] or ["http1", "http2", "grpc"]  # note: re-recording changes ports and timestamps
    for name in todo:
        globals()[name]()
