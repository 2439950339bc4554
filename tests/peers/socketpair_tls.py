"""TLS over a socketpair: sockets no connect() or accept() opened, which the kernel side knows nothing of.

Usage: python3 socketpair_tls.py CERT KEY. One request and one response, the server end in a
thread; prints the two fds (client, server), then keeps the sockets open until stdin closes.
"""

import socket
import ssl
import sys
import threading

CERT, KEY = sys.argv[1], sys.argv[2]
REQUEST = b"GET /pair HTTP/1.1\r\nHost: pair\r\nUser-Agent: apptrace-test\r\n\r\n"
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\npaired"[:-1]

client_sock, server_sock = socket.socketpair()
server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
server_ctx.load_cert_chain(CERT, KEY)
client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
client_ctx.check_hostname = False
client_ctx.verify_mode = ssl.CERT_NONE


server_fd = []


def serve() -> None:
    with server_ctx.wrap_socket(server_sock, server_side=True) as s:
        server_fd.append(s.fileno())
        buf = b""
        while not buf.endswith(b"\r\n\r\n"):
            buf += s.recv(4096)
        s.sendall(RESPONSE)
        sys.stdin.read()


t = threading.Thread(target=serve)
t.start()
with client_ctx.wrap_socket(client_sock) as c:
    c.sendall(REQUEST)
    got = b""
    while len(got) < len(RESPONSE):
        got += c.recv(4096)
    assert got == RESPONSE, got
    print(c.fileno(), server_fd[0], flush=True)
    t.join()
