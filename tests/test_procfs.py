"""Service names from command lines and cgroups (ARCHITECTURE.md: `python3 app.py` is `app`)."""

import pytest

from apptrace.capture.procfs import container_of, service_name


@pytest.mark.parametrize(
    ("comm", "argv", "cgroup", "expected"),
    [
        ("python3", ["python3", "app.py"], None, "app"),
        ("python3", ["/usr/bin/python3", "-u", "/srv/billing/worker.py", "--fast"], None, "worker"),
        ("python3", ["python3", "-m", "gunicorn", "api:app"], None, "gunicorn"),
        ("node", ["node", "server.js"], None, "server"),
        ("node", ["node", "/srv/checkout/index.js"], None, "checkout"),
        ("curl", ["curl", "-k", "https://x"], None, "curl"),
        ("nginx", ["nginx: worker process"], None, "nginx"),
        ("postgres", ["postgres: postgres app 127.0.0.1(41036) SELECT"], None, "postgres"),
        ("postgres", ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg"], None, "postgres"),
        ("python3", ["python3", "app.py"], "0::/system.slice/orders.service\n", "orders"),
        ("python3", ["python3", "app.py"], "0::/user.slice/user-0.slice/session-3.scope\n", "app"),
        ("nginx", ["nginx"], "0::/system.slice/docker-0123456789abcdef0123.scope\n", "container:0123456789ab"),
    ],
)
def test_service_name(comm, argv, cgroup, expected):
    assert service_name(comm, argv, cgroup) == expected


CID = "4f1c2b7a9e0d" + "0123456789abcdef" * 3 + "0123"  # 64 hex digits, as runtimes make them
POD = "5d8f2a1c-3b4e-4f60-9a7b-1c2d3e4f5a6b"


@pytest.mark.parametrize(
    ("cgroup", "container", "pod"),
    [
        # Kubernetes, systemd cgroup driver, containerd (kubelet writes the pod uid with '_')
        (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{POD.replace('-', '_')}.slice/"
         f"cri-containerd-{CID}.scope\n", CID, POD),
        # Kubernetes, cgroupfs driver, under cgroup v1 (one line per hierarchy)
        (f"12:memory:/kubepods/besteffort/pod{POD}/{CID}\n11:cpu:/kubepods/besteffort/pod{POD}/{CID}\n", CID, POD),
        (f"0::/system.slice/docker-{CID}.scope\n", CID, None),
        (f"9:name=systemd:/docker/{CID}\n", CID, None),
        (f"0::/machine.slice/libpod-{CID}.scope/container\n", CID, None),
        (f"0::/system.slice/crio-{CID}.scope\n", CID, None),
        ("0::/system.slice/orders.service\n", None, None),
        ("4:memory:/process_api/1b46b40d48f9ed86dd87042ac5589f10\n0::/\n", None, None),
        (None, None, None),
    ],
)
def test_container_of(cgroup, container, pod):
    assert container_of(cgroup) == (container, pod)
