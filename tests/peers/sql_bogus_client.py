"""A client that writes a bogus length prefix over TLS in the middle of a real SQL session.

    python -m tests.peers.sql_bogus_client mysql|pgsql PORT

MySQL (MariaDB, user app): logs in with mysql-connector-python (pure Python, so TLS is Python's
``ssl``), runs ``SELECT 1``, then writes ``\\xff\\xff\\xff\\x00\\x03`` (a COM_QUERY header claiming
16 MiB) as a send of its own, then ``SELECT 2`` and ``SELECT 3`` as COM_QUERY packets. The server
takes them for the bogus query's payload and never answers; the client closes after a second.

PostgreSQL (trust auth, user postgres): logs in by hand (SSLRequest, StartupMessage), runs
``SELECT 1``, then writes ``Q\\x7f\\xff\\xff\\xff`` (a Query of 2 GiB) followed, in the same send,
by the Query ``SELECT 2``. The server refuses the length and closes the connection.

Prints one JSON object: what the client saw.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import sys
import time


def mysql(port: int) -> dict:
    import mysql.connector

    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="secret", use_pure=True,
                                   ssl_disabled=False, ssl_verify_cert=False)
    cur = conn.cursor()
    cur.execute("SELECT 1")
    first = cur.fetchall()
    sock = conn._socket.sock  # noqa: SLF001 - the TLS socket under the driver: raw bytes from here on
    sock.sendall(b"\xff\xff\xff\x00\x03")
    time.sleep(0.2)
    for sql in (b"SELECT 2", b"SELECT 3"):
        payload = b"\x03" + sql
        sock.sendall(len(payload).to_bytes(3, "little") + b"\x00" + payload)
        time.sleep(0.2)
    sock.settimeout(1.0)
    try:
        answered = sock.recv(4096)
    except TimeoutError:
        answered = b""
    tls = sock.version()
    sock.close()
    return {"tls": tls, "first": [list(r) for r in first], "answered_after_bogus": len(answered)}


def pg_message(t: bytes, payload: bytes) -> bytes:
    return t + struct.pack(">i", len(payload) + 4) + payload


def read_until_ready(sock: ssl.SSLSocket) -> list[bytes]:
    """Message types up to ReadyForQuery (or the connection's end)."""
    buf = b""
    types = []
    while True:
        while len(buf) >= 5:
            length = struct.unpack_from(">i", buf, 1)[0]
            if len(buf) < 1 + length:
                break
            types.append(buf[:1])
            if buf[:1] == b"Z":
                return types
            buf = buf[1 + length :]
        more = sock.recv(65536)
        if not more:
            return types
        buf += more


def pgsql(port: int) -> dict:
    raw = socket.create_connection(("127.0.0.1", port))
    raw.sendall(struct.pack(">ii", 8, 80877103))  # SSLRequest
    assert raw.recv(1) == b"S"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    sock = ctx.wrap_socket(raw)
    params = b"user\0postgres\0database\0postgres\0\0"
    sock.sendall(struct.pack(">ii", 8 + len(params), 196608) + params)
    login = read_until_ready(sock)
    sock.sendall(pg_message(b"Q", b"SELECT 1\0"))
    first = read_until_ready(sock)
    sock.sendall(b"Q\x7f\xff\xff\xff" + pg_message(b"Q", b"SELECT 2\0"))
    sock.settimeout(5.0)
    try:
        after = sock.recv(4096)
    except (TimeoutError, ConnectionError, ssl.SSLError):
        after = b""
    tls = sock.version()
    sock.close()
    return {"tls": tls, "login": [t.decode() for t in login], "first": [t.decode() for t in first],
            "answered_after_bogus": len(after)}


def main() -> int:
    proto, port = sys.argv[1], int(sys.argv[2])
    out = mysql(port) if proto == "mysql" else pgsql(port)
    print(json.dumps(out), flush=True)
    time.sleep(1.0)  # a tracer that lags still finds our /proc entry
    return 0


if __name__ == "__main__":
    sys.exit(main())
