"""Record the plaintext a real client and server exchange, for parser fixtures.

A TCP proxy on 127.0.0.1 sits between a real client and a real server (both
run without TLS, so the bytes are exactly what TLS would carry) and writes
every chunk as one JSON line: ``{"side": "request"|"response", "ts": ns, "data": base64}``.
Chunk boundaries and timestamps are the real ones.

Usage as a module: ``python -m tests.recorder LISTEN_PORT UPSTREAM_PORT OUT.jsonl``
(Ctrl-C or SIGTERM to stop), or ``RecordingProxy`` from a test.
"""

from __future__ import annotations

import base64
import json
import selectors
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from apptrace.protocols.common import Side


class RecordingProxy:
    """Forward one or more connections to ``upstream`` and record each to its own list of chunks."""

    def __init__(self, upstream_port: int, listen_port: int = 0, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self.listener = socket.create_server((host, listen_port))
        self.port = self.listener.getsockname()[1]
        self.connections: list[list[tuple[Side, int, bytes]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        self.listener.setblocking(False)
        sel.register(self.listener, selectors.EVENT_READ, None)
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                if key.data is None:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection(self.upstream)
                    chunks: list[tuple[Side, int, bytes]] = []
                    self.connections.append(chunks)
                    sel.register(client, selectors.EVENT_READ, (Side.REQUEST, upstream, chunks))
                    sel.register(upstream, selectors.EVENT_READ, (Side.RESPONSE, client, chunks))
                    continue
                side, peer, chunks = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if data:
                    chunks.append((side, time.time_ns(), data))
                    peer.sendall(data)
                else:
                    for s in (key.fileobj, peer):
                        try:
                            sel.unregister(s)
                        except (KeyError, ValueError):
                            pass
                        s.close()
        sel.close()

    def save(self, path: Path, connection: int = 0) -> None:
        save_chunks(path, self.connections[connection])


def save_chunks(path: Path, chunks: list[tuple[Side, int, bytes]]) -> None:
    with open(path, "w") as f:
        for side, ts, data in chunks:
            f.write(json.dumps({"side": side.value, "ts": ts, "data": base64.b64encode(data).decode()}) + "\n")


def load_chunks(path: Path) -> list[tuple[Side, int, bytes]]:
    """Read a fixture back as ``[(side, ts_ns, data), ...]`` in capture order."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            obj = json.loads(line)
            out.append((Side(obj["side"]), int(obj["ts"]), base64.b64decode(obj["data"])))
    return out


if __name__ == "__main__":
    listen, upstream, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    proxy = RecordingProxy(upstream, listen)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt))
    with proxy:
        print(f"recording 127.0.0.1:{proxy.port} -> {upstream} into {out}", file=sys.stderr)
        try:
            while True:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
    for i, conn in enumerate(proxy.connections):
        save_chunks(out if i == 0 else out.with_name(f"{out.stem}.{i}{out.suffix}"), conn)
