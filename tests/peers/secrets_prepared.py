"""Prepared statements whose bound values are secrets, over TLS: MariaDB (mysql-connector, binary protocol) and
PostgreSQL (asyncpg, extended protocol).

    python -m tests.peers.secrets_prepared MYSQL_PORT PG_PORT NAME --api-key=SECRET

Names itself NAME (prctl) before it connects, so a tracer can select it with ``--comm NAME``; its command line
holds a secret of its own. Prints "ok" when both updates went through.
"""

from __future__ import annotations

import asyncio
import ctypes
import ssl
import sys
import time

import asyncpg
import mysql.connector

MYSQL_SECRET = "ZQmyPrepared1"
PG_SECRET = "ZQpgPrepared1"


def name_process(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME: what /proc/PID/comm and the kernel's comm say


def mysql_update(port: int) -> None:
    conn = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="secret", database="shop",
                                   use_pure=True, ssl_disabled=False, ssl_verify_cert=False)
    cur = conn.cursor()
    cur.execute("CREATE TABLE IF NOT EXISTS accounts (id INT PRIMARY KEY, password VARCHAR(64))")
    cur.execute("INSERT IGNORE INTO accounts VALUES (1, 'none')")
    conn.commit()
    prepared = conn.cursor(prepared=True)
    prepared.execute("UPDATE accounts SET password = ? WHERE id = ?", (MYSQL_SECRET, 1))
    conn.commit()
    prepared.close()
    conn.close()


async def pg_update(port: int) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    con = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", ssl=ctx)
    await con.execute("CREATE TABLE IF NOT EXISTS accounts (id int PRIMARY KEY, api_token text)")
    await con.execute("INSERT INTO accounts VALUES (1, 'none') ON CONFLICT DO NOTHING")
    await con.execute("UPDATE accounts SET api_token = $1 WHERE id = $2", PG_SECRET, 1)
    await con.close()


def main() -> int:
    mysql_port, pg_port, name = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    name_process(name)
    mysql_update(mysql_port)
    asyncio.run(pg_update(pg_port))
    print("ok", flush=True)
    time.sleep(1.0)  # a tracer that lags still finds our /proc entry (and its command line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
