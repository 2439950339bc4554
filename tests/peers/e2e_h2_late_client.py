"""An HTTP/2 client over TLS that lets the server speak first, then makes one quick request per connection.

    python -m tests.peers.e2e_h2_late_client PORT PATH N

For each of N connections: TLS handshake (ALPN h2), a 20 ms pause, during which an HTTP/2 server such as
nghttpd sends its SETTINGS (its first SSL call is then a write, not a read), then the client preface and
one GET, read to the end of the stream, and close at once. Prints the local port of each connection.
"""

from __future__ import annotations

import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def one(port: int, path: str) -> int:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port)) as raw, ctx.wrap_socket(raw) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        time.sleep(0.02)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "GET"), (":path", path), (":scheme", "https"),
                              (":authority", f"127.0.0.1:{port}")], end_stream=True)
        tls.sendall(conn.data_to_send())
        done = False
        while not done:
            data = tls.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.StreamEnded):
                    done = True
            out = conn.data_to_send()
            if out:
                tls.sendall(out)
        assert done
        return tls.getsockname()[1]


def main() -> int:
    port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    for _ in range(n):
        print(one(port, path), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
