"""Re-record the PostgreSQL fixtures under ``tests/fixtures/pgsql/`` from a real server.

USAGE: ``.venv/bin/python -m tests.peers.pgsql_record PORT``

Needs PostgreSQL 15 without TLS on 127.0.0.1:PORT, ``pgbench -i`` run on database
``postgres``, and a superuser ``app`` with password ``secret`` that must log in with
SCRAM (so the fixture carries a SASL exchange the parser has to discard), e.g.::

    runuser -u postgres -- initdb -D D -A trust
    sed -i '1i host all app 127.0.0.1/32 scram-sha-256' D/pg_hba.conf
    runuser -u postgres -- pg_ctl -D D -w -o "-p PORT -k D -c listen_addresses=127.0.0.1" start
    psql -h D -p PORT -U postgres -c "create user app password 'secret' superuser"
    pgbench -h D -p PORT -U postgres -i -s 1 postgres

``asyncpg`` (recording only) sends its parameters in binary format.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from tests.recorder import RecordingProxy

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "pgsql"

PSQL_SQL = """
DROP TABLE IF EXISTS items;
CREATE TABLE items (id int PRIMARY KEY, name text, price float8);
INSERT INTO items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25);
SELECT id, name, price FROM items ORDER BY id;
SELECT * FROM no_such_table;
SELECT pg_sleep(0.05);
UPDATE items SET price = price * 2 WHERE id < 3;
SELECT 1 AS a \\; SELECT 2 AS b, 3 AS c UNION SELECT 4, 5;
COPY items TO STDOUT;
\\copy items FROM STDIN
4\tfig\t2.5
5\tkiwi\t0.25
\\.
"""

PIPELINE = """\\set aid random(1, 100000)
\\startpipeline
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid + 1;
SELECT count(*) FROM pgbench_branches;
\\endpipeline
"""

# the failing statement makes the server skip the rest of the batch up to Sync
PIPELINE_ERROR = """\\startpipeline
SELECT 1;
SELECT 1 / 0;
SELECT 2;
\\endpipeline
"""


def env() -> dict[str, str]:
    return {**os.environ, "PGPASSWORD": "secret", "PGSSLMODE": "disable"}


def record(name: str, fn) -> None:
    with RecordingProxy(int(sys.argv[1])) as proxy:
        fn(proxy.port)
        time.sleep(0.3)
    # pgbench may open a short probe connection first: keep the busiest one
    sizes = [sum(len(c[2]) for c in conn) for conn in proxy.connections]
    busiest = sizes.index(max(sizes))
    proxy.save(OUT / name, busiest)
    print("saved", OUT / name, sizes[busiest], "bytes")


def psql(port: int) -> None:
    subprocess.run(
        ["psql", "-X", "-h", "127.0.0.1", "-p", str(port), "-U", "app", "postgres"],
        input=PSQL_SQL,
        text=True,
        env=env(),
        check=False,
    )


def pgbench(port: int) -> None:
    subprocess.run(
        [
            "pgbench",
            "-n",
            "-M",
            "prepared",
            "-t",
            "2",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            "app",
            "postgres",
        ],
        env=env(),
        check=False,
    )


def pgbench_pipeline(port: int, script: str = PIPELINE, n: int = 2) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        subprocess.run(
            [
                "pgbench",
                "-n",
                "-M",
                "prepared",
                "-t",
                str(n),
                "-f",
                f.name,
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "app",
                "postgres",
            ],
            env=env(),
            check=False,
        )


def asyncpg_binary(port: int) -> None:
    import asyncpg

    async def main() -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=port, user="app", password="secret", database="postgres", ssl=False
        )
        await conn.execute(
            "CREATE TEMP TABLE t (i2 int2, i8 int8, b bool, f4 float4, f8 float8, "
            "v varchar, u uuid, by bytea, ts timestamp, tz timestamptz)"
        )
        await conn.execute(
            "INSERT INTO t VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            -7,
            1 << 40,
            True,
            1.5,
            -2.25,
            "it's",
            uuid.UUID(int=0x1234),
            b"\x00\xff",
            datetime.datetime(2024, 5, 6, 7, 8, 9, 123456),
            datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=datetime.UTC),
        )
        await conn.fetch("SELECT * FROM t WHERE i2 = $1 AND v = $2", -7, "it's")
        try:
            await conn.fetch("SELECT $1::int / 0", 1)
        except asyncpg.PostgresError:
            pass
        await conn.fetch("SELECT pg_sleep($1)", 0.05)
        await conn.close()

    asyncio.run(main())


if __name__ == "__main__":
    record("psql.jsonl", psql)
    record("pgbench_prepared.jsonl", pgbench)
    record("pgbench_pipeline.jsonl", pgbench_pipeline)
    record("pgbench_pipeline_error.jsonl", lambda p: pgbench_pipeline(p, PIPELINE_ERROR, 1))
    record("asyncpg_binary.jsonl", asyncpg_binary)
