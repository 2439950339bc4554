"""A small real HTTPS server on Python's ssl (OpenSSL, SSL_read_ex/SSL_write_ex), for the demo and tests.

    python -m apptrace.demo.server --port 8443 --cert cert.pem --key key.pem [--client-ca ca.pem]

Endpoints: ``/hello``; ``/sleep?ms=N`` (answers after N ms); ``/status/CODE``; ``POST /echo``
(answers with the body's length and SHA-256); anything else is 404. Headers are fixed
(no Date, a constant Server) so tests can assert the exact bytes on the wire.
"""

from __future__ import annotations

import argparse
import hashlib
import http.server
import socket
import ssl
import sys
import time
from urllib.parse import parse_qs, urlparse


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def make_certs(directory: str) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate (for mTLS), via openssl."""
    import os
    import subprocess

    paths = {name: os.path.join(directory, f"{name}.pem") for name in
             ("ca", "ca-key", "server", "server-key", "client", "client-key")}
    if all(os.path.exists(p) for p in paths.values()):
        return paths

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3650", "-subj", "/CN=apptrace demo CA",
        "-keyout", paths["ca-key"], "-out", paths["ca"])
    ext = os.path.join(directory, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, cn in (("server", "localhost"), ("client", "apptrace-client")):
        csr = os.path.join(directory, f"{name}.csr")
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={cn}", "-keyout", paths[f"{name}-key"], "-out", csr)
        run("x509", "-req", "-in", csr, "-CA", paths["ca"], "-CAkey", paths["ca-key"], "-CAcreateserial",
            "-days", "3650", "-extfile", ext, "-out", paths[name])
    return paths


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response (http.server flushes after each request): headers and body in
    # separate small writes would meet Nagle and delayed ACKs and add 40 ms to every request.
    wbufsize = 1 << 16
    server_version = "apptrace-demo"
    sys_version = ""

    def version_string(self) -> str:
        return "apptrace-demo"

    def send_response(self, code: int, message: str | None = None) -> None:
        # No Date header: the bytes on the wire stay the same from run to run.
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Server", self.version_string())

    def _reply(self, code: int, body: bytes, ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlparse(self.path)
        if url.path == "/hello":
            self._reply(200, b"hello from apptrace-demo\n")
        elif url.path == "/sleep":
            ms = int(parse_qs(url.query).get("ms", ["50"])[0])
            time.sleep(ms / 1000)
            self._reply(200, f"slept {ms} ms\n".encode())
        elif url.path.startswith("/status/"):
            code = int(url.path.rsplit("/", 1)[1])
            self._reply(code, f"status {code}\n".encode())
        else:
            self._reply(404, b"not found\n")

    def do_POST(self) -> None:  # noqa: N802
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        digest = hashlib.sha256(body).hexdigest()
        self._reply(200, f"{len(body)} {digest}\n".encode())

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def serve(port: int, cert: str, key: str, client_ca: str | None = None, host: str = "127.0.0.1") -> None:
    server = http.server.ThreadingHTTPServer((host, port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"listening on https://{host}:{server.server_address[1]}", flush=True)
    server.serve_forever()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    a = p.parse_args()
    try:
        serve(a.port, a.cert, a.key, a.client_ca)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
