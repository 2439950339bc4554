"""Build a Go program offline with Debian's go: GOPATH mode, no module download, Debian's packaged sources.

Used by the overhead bench (bench/bench_overhead.py --server go) and by the tests that build Go peers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: where Debian's golang-*-dev packages put their sources (lib/pq, go-sql-driver/mysql, grpc-go, ...)
DEBIAN_GOPATH = "/usr/share/gocode"


class GoBuildError(RuntimeError):
    pass


def go_build(src: str | Path, exe: str | Path, work: str | Path, flags: Sequence[str] = ()) -> str:
    """``go build FLAGS -o EXE SRC`` with GOPATH and GOCACHE under ``work``; returns ``exe``.

    GO111MODULE=off: the machine may have no network, and GOPATH mode finds imports in Debian's tree."""
    go = shutil.which("go")
    if go is None:
        raise GoBuildError("no `go` on PATH (install golang-go)")
    work = Path(work)
    env = {**os.environ, "GO111MODULE": "off", "GOPATH": f"{work / 'gopath'}:{DEBIAN_GOPATH}",
           "GOCACHE": str(work / "gocache")}
    built = subprocess.run([go, "build", *flags, "-o", str(exe), str(src)], env=env, capture_output=True, text=True)
    if built.returncode != 0:
        raise GoBuildError(f"go build {src} failed: {built.stderr.strip()}")
    return str(exe)
