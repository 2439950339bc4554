"""A real grpcio server on an insecure (plaintext, h2c) port, for the plaintext capture tests.

    python -m tests.peers.grpcio_insecure_server PORT

The methods of ``tests/peers/grpc_server.py`` (``/apptrace.Echo/Unary`` echoes after 50 ms, ``Stream`` answers
three messages, ``Fail`` fails with NOT_FOUND), as grpcio generic handlers on bytes: no protoc needed.
"""

from __future__ import annotations

import sys
import time
from concurrent import futures

import grpc

UNARY_DELAY_S = 0.05


def _unary(request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: ARG001 - grpcio's signature
    time.sleep(UNARY_DELAY_S)
    return b"echo:" + request


def _stream(request: bytes, context: grpc.ServicerContext):  # noqa: ARG001
    for i in range(3):
        yield f"item {i}".encode()


def _fail(request: bytes, context: grpc.ServicerContext) -> bytes:  # noqa: ARG001
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b""


def main() -> int:
    port = int(sys.argv[1])
    ident = lambda b: b  # noqa: E731
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, request_deserializer=ident, response_serializer=ident),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, request_deserializer=ident,
                                                       response_serializer=ident),
        "Fail": grpc.unary_unary_rpc_method_handler(_fail, request_deserializer=ident, response_serializer=ident),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("apptrace.Echo", handlers),))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
