"""A real HTTP/1.1 server peer (Python's http.server) for recording fixtures.

Routes: /hello (text), /slow (50 ms delay), /chunked (chunked body), /gzip (gzip-encoded),
/json, /close (HTTP/1.0-style close-delimited body), /missing (404), POST /echo.
"""

from __future__ import annotations

import gzip
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOW_DELAY_S = 0.05


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "apptrace-peer/1"
    sys_version = ""

    def log_message(self, *args: object) -> None:
        pass

    def date_time_string(self, timestamp: float | None = None) -> str:
        return "Sun, 22 Nov 2026 00:00:00 GMT"  # stable fixtures

    def _send(
        self, status: int, body: bytes, ctype: str = "text/plain", extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        if self.path == "/hello":
            self._send(200, b"hello, world\n")
        elif self.path == "/slow":
            time.sleep(SLOW_DELAY_S)
            self._send(200, b"slow\n")
        elif self.path == "/json":
            self._send(200, b'{"ok": true, "items": [1, 2, 3]}', "application/json")
        elif self.path == "/gzip":
            body = gzip.compress(b"compressed hello " * 20, mtime=0)
            self._send(200, body, extra={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"first chunk\n", b"second\n", b"third and last\n"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/close":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until the connection closes\n")
            self.close_connection = True
        else:
            self._send(404, b"not found\n")

    def do_POST(self) -> None:
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self._send(201 if self.path == "/echo" else 404, body, self.headers.get("Content-Type", "text/plain"))


def serve(port: int = 0) -> tuple[ThreadingHTTPServer, threading.Thread]:
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread


if __name__ == "__main__":
    import sys

    srv, t = serve(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
    print(f"serving on {srv.server_address[1]}", file=sys.stderr)
    t.join()
