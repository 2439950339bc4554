"""A tiny cleartext gRPC server peer built on h2's server-side H2Connection.

Methods (messages are opaque bytes, no protobuf codegen needed):
  /apptrace.Echo/Unary        → echoes the request after a 50 ms delay
  /apptrace.Echo/Stream       → three response messages
  /apptrace.Echo/Fail         → trailers-only response, grpc-status 5 (NOT_FOUND), "no such thing"
A request sent with grpc-encoding: gzip is answered with gzip-compressed messages.
"""

from __future__ import annotations

import gzip
import socket
import struct
import threading
import time

import h2.config
import h2.connection
import h2.events

UNARY_DELAY_S = 0.05


def _frame(msg: bytes, compress: bool = False) -> bytes:
    if compress:
        msg = gzip.compress(msg, mtime=0)
    return struct.pack(">BI", int(compress), len(msg)) + msg


def _messages(data: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos + 5 <= len(data):
        flag = data[pos]
        n = struct.unpack_from(">I", data, pos + 1)[0]
        msg = data[pos + 5 : pos + 5 + n]
        out.append(gzip.decompress(msg) if flag & 1 else msg)
        pos += 5 + n
    return out


def _handle(sock: socket.socket) -> None:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
    conn.initiate_connection()
    sock.sendall(conn.data_to_send())
    paths: dict[int, str] = {}
    gz: dict[int, bool] = {}
    bodies: dict[int, bytes] = {}
    while True:
        data = sock.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.RequestReceived):
                hdrs = dict(ev.headers)
                paths[ev.stream_id] = hdrs[":path"]
                gz[ev.stream_id] = hdrs.get("grpc-encoding") == "gzip"
                bodies[ev.stream_id] = b""
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                _respond(
                    conn, ev.stream_id, paths[ev.stream_id], _messages(bodies[ev.stream_id]), gz[ev.stream_id]
                )
        out = conn.data_to_send()
        if out:
            sock.sendall(out)
    sock.close()


def _respond(
    conn: h2.connection.H2Connection, sid: int, path: str, msgs: list[bytes], gz: bool = False
) -> None:
    if path.endswith("/Fail"):
        conn.send_headers(
            sid,
            [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "5"),
             ("grpc-message", "no such thing")],
            end_stream=True,
        )  # fmt: skip
        return
    headers = [(":status", "200"), ("content-type", "application/grpc")]
    if gz:  # answer a compressing client in kind
        headers.append(("grpc-encoding", "gzip"))
    conn.send_headers(sid, headers)
    if path.endswith("/Unary"):
        time.sleep(UNARY_DELAY_S)
        conn.send_data(sid, _frame(b"echo:" + (msgs[0] if msgs else b""), gz))
    else:
        for i in range(3):
            conn.send_data(sid, _frame(b"item %d" % i, gz))
    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)


def serve(port: int = 0) -> tuple[socket.socket, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", port))

    def loop() -> None:
        while True:
            try:
                s, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=_handle, args=(s,), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    return listener, t
