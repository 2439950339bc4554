"""A real grpcio client (TLS by grpcio's own, stripped, BoringSSL) for ``e2e_grpc_server``.

    python -m tests.peers.e2e_grpc_client PORT CA_PEM
    python -m tests.peers.e2e_grpc_client PORT --insecure   (plaintext: tests/test_plaintext.py)

Makes, on one channel and in this order: a unary call (``/apptrace.Echo/Unary``), a failing call
(``/apptrace.Echo/Fail``) and a server-streaming call (``/apptrace.Echo/Stream``). Generic
handlers with bytes (de)serializers: no protoc needed. Prints one JSON object with the outcomes.
"""

from __future__ import annotations

import json
import sys

import grpc


def _channel(port: int, ca: str) -> grpc.Channel:
    if ca == "--insecure":  # plaintext HTTP/2 (h2c)
        return grpc.insecure_channel(f"127.0.0.1:{port}")
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(f"127.0.0.1:{port}", creds)


def main() -> int:
    port, ca = int(sys.argv[1]), sys.argv[2]
    ident = lambda b: b  # noqa: E731
    out: dict[str, object] = {}
    with _channel(port, ca) as ch:
        grpc.channel_ready_future(ch).result(timeout=20)
        unary = ch.unary_unary("/apptrace.Echo/Unary", request_serializer=ident, response_deserializer=ident)
        out["unary"] = unary(b"ping", timeout=20).decode()
        fail = ch.unary_unary("/apptrace.Echo/Fail", request_serializer=ident, response_deserializer=ident)
        try:
            fail(b"x", timeout=20)
            out["fail"] = None
        except grpc.RpcError as e:
            out["fail"] = [e.code().value[0], e.details()]
        stream = ch.unary_stream("/apptrace.Echo/Stream", request_serializer=ident, response_deserializer=ident)
        out["stream"] = [m.decode() for m in stream(b"go", timeout=20)]
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
