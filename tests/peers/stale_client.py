"""A TLS client whose handshake read on one connection finds nothing, before a read on another.

Usage: python3 stale_client.py PORT. Prints the local ports of its two connections.
"""

import socket
import ssl
import sys

PORT = int(sys.argv[1])
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def get(s: ssl.SSLSocket, path: str) -> bytes:
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUser-Agent: apptrace-test\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, _, body = buf.partition(b"\r\n\r\n")
    length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
    while len(body) < length:
        body += s.recv(65536)
    return head


known = CTX.wrap_socket(socket.create_connection(("127.0.0.1", PORT)))
get(known, "/first")
raw = socket.create_connection(("127.0.0.1", PORT))
raw.setblocking(False)
fresh = CTX.wrap_socket(raw, do_handshake_on_connect=False)
try:
    fresh.do_handshake()  # sends the ClientHello, then reads before the server answered
except ssl.SSLWantReadError:
    pass
get(known, "/second")  # a read with data on the other, known connection
fresh.setblocking(True)
fresh.do_handshake()
get(fresh, "/third")
print(known.getsockname()[1], fresh.getsockname()[1])
