"""The colleague's h2 gRPC peer (``tests/peers/grpc_server.py``) served over TLS with Python ``ssl``.

    python -m tests.peers.e2e_grpc_server --port P --cert CERT --key KEY

Python's ``ssl`` is OpenSSL 3 (SSL_read_ex/SSL_write_ex), so the tracer sees this server's plaintext,
while grpcio clients (stripped BoringSSL) stay invisible. ALPN offers ``h2``, which grpcio requires.
Methods and delays are those of ``tests.peers.grpc_server``.
"""

from __future__ import annotations

import argparse
import signal
import socket
import ssl
import sys
import threading

from tests.peers.grpc_server import _handle


def _serve_one(ctx: ssl.SSLContext, raw: socket.socket) -> None:
    try:
        with ctx.wrap_socket(raw, server_side=True) as tls:
            _handle(tls)
    except (OSError, ssl.SSLError):
        pass  # a client that hung up mid-handshake or mid-stream


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    a = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.set_alpn_protocols(["h2"])
    listener = socket.create_server(("127.0.0.1", a.port))
    print(f"listening on 127.0.0.1:{a.port}", flush=True)
    while True:
        raw, _ = listener.accept()
        threading.Thread(target=_serve_one, args=(ctx, raw), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
