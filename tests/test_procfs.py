"""Service names from command lines and cgroups (ARCHITECTURE.md: `python3 app.py` is `app`)."""

import pytest

from apptrace.capture.procfs import service_name


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
