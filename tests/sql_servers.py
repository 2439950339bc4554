"""Real MariaDB and PostgreSQL servers over TLS on a free port, for the end-to-end tests and the benchmarks.

Each is a context manager yielding a ``Proc``; both stop their server on the way out, whatever
happened inside. Tools come from the README's setup (mariadb-server, postgresql 15).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from apptrace.demo.server import free_port, wait_port

PG_BIN = "/usr/lib/postgresql/15/bin"


@dataclass
class Proc:
    """A server process we started; ``pid`` is the process that owns the server's connections."""

    proc: subprocess.Popen | None  # None: started and stopped by pg_ctl
    port: int
    pid: int
    extra: dict


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise FileNotFoundError(f"{name} is not installed: run the README's setup command")
    return path


@contextmanager
def mariadb(certs: dict[str, str], data: str) -> Iterator[Proc]:
    """mariadbd with TLS in ``data``; user app/secret from anywhere, and shop.items with three rows."""
    install, server, client = _tool("mariadb-install-db"), _tool("mariadbd"), _tool("mariadb")
    subprocess.run([install, "--no-defaults", f"--datadir={data}", "--user=root", "--auth-root-authentication-method=normal"],
                   check=True, capture_output=True, timeout=120)
    port = free_port()
    sock = os.path.join(data, "sock")
    proc = subprocess.Popen([server, "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
                             "--bind-address=127.0.0.1", "--user=root", f"--ssl-cert={certs['server']}",
                             f"--ssl-key={certs['server-key']}", "--skip-log-bin", "--innodb-buffer-pool-size=32M"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=60)
        # app@localhost too: mariadb-install-db's anonymous ''@localhost would shadow app@'%' from 127.0.0.1
        setup = ("CREATE USER 'app'@'%' IDENTIFIED BY 'secret'; GRANT ALL ON *.* TO 'app'@'%';"
                 "CREATE USER 'app'@'localhost' IDENTIFIED BY 'secret'; GRANT ALL ON *.* TO 'app'@'localhost';"
                 "CREATE DATABASE shop; CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40), price DOUBLE);"
                 "INSERT INTO shop.items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25);")
        subprocess.run([client, "--no-defaults", f"--socket={sock}", "-uroot", "-e", setup], check=True,
                       capture_output=True, timeout=60)
        yield Proc(proc, port, proc.pid, {"socket": sock})
    finally:
        stop(proc)


@contextmanager
def postgres(certs: dict[str, str]) -> Iterator[Proc]:
    """PostgreSQL 15 with TLS (trust auth, user postgres) and a table items with three rows; pid is the postmaster's."""
    for tool in ("initdb", "pg_ctl"):
        if not os.path.exists(f"{PG_BIN}/{tool}"):
            raise FileNotFoundError(f"{PG_BIN}/{tool} is missing: install postgresql (15) with the README's setup")
    runuser, psql = _tool("runuser"), _tool("psql")
    # PostgreSQL runs as postgres and needs a folder of its own (pytest's tmp dirs are 0700 root).
    base = tempfile.mkdtemp(prefix="apptrace-pg-")
    data = os.path.join(base, "data")
    shutil.chown(base, "postgres", "postgres")
    for name in ("server", "server-key"):
        dst = os.path.join(base, f"{name}.pem")
        shutil.copy(certs[name], dst)
        shutil.chown(dst, "postgres", "postgres")
        os.chmod(dst, 0o600)
    port = free_port()
    as_pg = [runuser, "-u", "postgres", "--"]
    try:
        subprocess.run([*as_pg, f"{PG_BIN}/initdb", "-D", data, "-A", "trust"], check=True, capture_output=True,
                       timeout=120)
        opts = (f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c ssl=on -c ssl_cert_file={base}/server.pem "
                f"-c ssl_key_file={base}/server-key.pem -c fsync=off")
        subprocess.run([*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-l", f"{base}/log", "-o", opts, "start"],
                       check=True, capture_output=True, timeout=120)
        with open(os.path.join(data, "postmaster.pid")) as f:
            postmaster = int(f.readline())
        setup = ("CREATE TABLE items (id int PRIMARY KEY, name text, price float8);"
                 "INSERT INTO items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25);")
        subprocess.run([psql, "-X", "-h", base, "-p", str(port), "-U", "postgres", "-c", setup],
                       check=True, capture_output=True, timeout=60)
        yield Proc(None, port, postmaster, {"dir": base})
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run([*as_pg, f"{PG_BIN}/pg_ctl", "-D", data, "-w", "-m", "immediate", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(base, ignore_errors=True)
