"""Where a request came from: a real HTTPS server moved into real cgroups this test creates, shaped as a container
runtime (systemd driver) and as the kubelet (cgroupfs driver) lay them out, traced; its rows carry the container
id, its process row the pod uid."""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid

import pytest

from apptrace.capture.procfs import process_info
from apptrace.query.backend import FileBackend
from tests.conftest import require_tool

pytestmark = pytest.mark.ebpf


def _pids_hierarchy() -> str:
    """A cgroup hierarchy processes can be moved in: v1's pids controller, else the cgroup2 mount."""
    v2 = None
    with open("/proc/mounts") as f:
        for line in f:
            _dev, where, kind, opts, *_ = line.split()
            if kind == "cgroup" and "pids" in opts.split(","):
                return where
            if kind == "cgroup2" and v2 is None:
                v2 = where
    if v2 is None:
        pytest.fail("no cgroup hierarchy is mounted", pytrace=False)
    return v2


@contextlib.contextmanager
def moved_into(pid: int, relative: str):
    root = _pids_hierarchy()
    made = []
    path = root
    for part in relative.strip("/").split("/"):
        path = os.path.join(path, part)
        if not os.path.isdir(path):
            os.mkdir(path)
            made.append(path)
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(str(pid))
    try:
        yield
    finally:
        with contextlib.suppress(OSError), open(os.path.join(root, "cgroup.procs"), "w") as f:
            f.write(str(pid))
        for d in reversed(made):
            with contextlib.suppress(OSError):
                os.rmdir(d)


CONTAINER = uuid.uuid4().hex + uuid.uuid4().hex
POD = str(uuid.uuid4())
LAYOUTS = {
    "docker-systemd": (f"/system.slice/docker-{CONTAINER}.scope", None),
    "kubepods-cgroupfs": (f"/kubepods/burstable/pod{POD}/{CONTAINER}", POD),
    "kubepods-systemd": (f"/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{POD.replace('-', '_')}"
                         f".slice/cri-containerd-{CONTAINER}.scope", POD),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_rows_carry_the_container_and_pod_of_the_cgroup(layout, tracer, https_server):
    cgroup, pod = LAYOUTS[layout]
    server = https_server()
    curl = require_tool("curl")
    with moved_into(server.pid, cgroup):
        info = process_info(server.pid)
        assert info is not None and (info.container_id, info.pod_uid) == (CONTAINER, pod)
        t = tracer("--pid", str(server.pid))
        for _ in range(3):
            subprocess.run([curl, "-sSk", "-o", "/dev/null", f"https://127.0.0.1:{server.port}/status/200"],
                           check=True)
        cap = t.stop()
        assert cap.returncode == 0, cap.stderr
    back = FileBackend(t.db)
    try:
        rows = back.query_arrow("SELECT container_id, service, host FROM http_events").to_pylist()
        assert len(rows) == 3
        assert {(r["container_id"], r["host"]) for r in rows} == {(CONTAINER, os.uname().nodename)}
        # The service is named after the container, as the table contract says.
        assert {r["service"] for r in rows} == {f"container:{CONTAINER[:12]}"}
        procs = back.query_arrow(f"SELECT container_id, pod_uid FROM processes WHERE pid = {server.pid}").to_pylist()
        assert procs == [{"container_id": CONTAINER, "pod_uid": pod}]
        conns = back.query_arrow("SELECT DISTINCT container_id FROM connections").to_pylist()
        assert conns == [{"container_id": CONTAINER}]
    finally:
        back.close()
