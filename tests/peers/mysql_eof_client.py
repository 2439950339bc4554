"""A minimal MySQL client for the server replies no available client provokes.

``run``: CLIENT_DEPRECATE_EOF, which libmariadb and mysql-connector-python never ask for.
``run_cursor``: a read-only cursor opened by COM_STMT_EXECUTE and read with COM_STMT_FETCH.
Recording only; see ``mysql_record.py``.
"""

from __future__ import annotations

import hashlib
import socket
import struct

CAPS = (0x1 | 0x8 | 0x200 | 0x8000 | 0x10000 | 0x20000 | 0x80000 | 0x200000 | 0x1000000) & ~0x800
# LONG_PASSWORD CONNECT_WITH_DB PROTOCOL_41 SECURE_CONN MULTI_STATEMENTS MULTI_RESULTS PLUGIN_AUTH
# PLUGIN_AUTH_LENENC DEPRECATE_EOF; never SSL.


def _native(password: bytes, scramble: bytes) -> bytes:
    h1 = hashlib.sha1(password).digest()
    h2 = hashlib.sha1(h1).digest()
    h3 = hashlib.sha1(scramble + h2).digest()
    return bytes(a ^ b for a, b in zip(h1, h3, strict=True))


class Client:
    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port))
        self.f = self.s.makefile("rb")

    def read(self) -> tuple[int, bytes]:
        hdr = self.f.read(4)
        n = int.from_bytes(hdr[:3], "little")
        return hdr[3], self.f.read(n)

    def send(self, seq: int, payload: bytes) -> None:
        self.s.sendall(len(payload).to_bytes(3, "little") + bytes([seq]) + payload)

    def command(self, payload: bytes) -> list[bytes]:
        """Send a command; read its reply until OK/ERR or the result set's terminating OK (0xfe)."""
        self.send(0, payload)
        out = []
        _, p = self.read()
        out.append(p)
        fetch = payload[0] == 0x1C  # binary rows, which start with 0x00 too
        if not fetch and p[0] in (0x00, 0xFF):
            if payload[0] == 0x16 and p[0] == 0x00:
                nparams, ncols = struct.unpack_from("<HH", p, 5)[::-1]
                # the columns then the params, no EOFs in this mode
                for _ in range(nparams + ncols):
                    out.append(self.read()[1])
            return out
        if fetch and p[0] in (0xFE, 0xFF):
            return out
        while True:
            _, p = self.read()
            out.append(p)
            if p[0] in (0xFE, 0xFF) and len(p) < 0xFFFFFF:
                return out


def run_cursor(port: int) -> None:
    caps = CAPS & ~0x1000000  # classic EOF packets this time
    c = Client(port)
    _, hs = c.read()
    i = hs.index(b"\0", 1) + 1 + 4
    scramble = hs[i : i + 8]
    i += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    scramble += hs[i : i + 12]
    login = struct.pack("<IIB23x", caps, 1 << 24, 45) + b"app\0" + b"\x14" + _native(b"secret", scramble)
    c.send(1, login + b"shop\0mysql_native_password\0")
    assert c.read()[1][0] == 0
    prep = c.command(b"\x16SELECT id, name FROM items WHERE id > ?")
    stmt = struct.unpack_from("<I", prep[0], 1)[0]
    for _ in range(2):  # command() read the definitions; their two EOFs follow
        c.read()
    # flags 1: CURSOR_TYPE_READ_ONLY; the reply ends after the column definitions
    c.send(0, b"\x17" + struct.pack("<IBI", stmt, 1, 1) + b"\x00\x01" + struct.pack("<HHq", 0x08, 0, 0))
    for _ in range(4):
        c.read()
    c.command(b"\x1c" + struct.pack("<II", stmt, 2))
    c.command(b"\x1c" + struct.pack("<II", stmt, 10))
    c.send(0, b"\x01")
    c.s.close()


def run(port: int) -> None:
    c = Client(port)
    _, hs = c.read()
    i = hs.index(b"\0", 1) + 1 + 4
    scramble = hs[i : i + 8]
    i += 8 + 1 + 2 + 1 + 2 + 2 + 1 + 10
    scramble += hs[i : i + 12]
    # ask for a plugin the server does not default to, so it answers AuthSwitchRequest
    login = struct.pack("<IIB23x", CAPS, 1 << 24, 45) + b"app\0" + b"\x00" + b"shop\0"
    login += b"caching_sha2_password\0"
    c.send(1, login)
    seq, p = c.read()
    if p[0] == 0xFE:
        plugin_end = p.index(b"\0", 1)
        c.send(seq + 1, _native(b"secret", p[plugin_end + 1 : plugin_end + 21]))
        seq, p = c.read()
    assert p[0] == 0, p
    c.command(b"\x03SELECT 1 AS a, 'x' AS b UNION SELECT 2, 'y'")
    c.command(b"\x03SELECT * FROM nope")
    c.command(b"\x03INSERT INTO items VALUES (9, 'fig', 2.5) ON DUPLICATE KEY UPDATE price = 2.5")
    c.command(b"\x0e")
    prep = c.command(b"\x16SELECT name, price FROM items WHERE id > ? AND name <> ?")
    stmt = struct.unpack_from("<I", prep[0], 1)[0]
    # null bitmap, new-params-bound, then the types: LONGLONG, STRING
    execute = b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x00" + b"\x01"
    execute += struct.pack("<HH", 0x08, 0xFE) + struct.pack("<q", 1) + b"\x04pear"
    c.command(execute)
    # types not re-sent: the server (and the parser) must remember them
    c.command(b"\x17" + struct.pack("<IBI", stmt, 0, 1) + b"\x00\x00" + struct.pack("<q", 0) + b"\x03fig")
    c.send(0, b"\x19" + struct.pack("<I", stmt))
    c.send(0, b"\x01")
    c.s.close()
