"""Re-record the MySQL fixtures under ``tests/fixtures/mysql/`` from a real MariaDB server.

USAGE: ``.venv/bin/python -m tests.peers.mysql_record PORT``

Needs a MariaDB server without TLS on 127.0.0.1:PORT with a user ``app``/``secret`` and a
database ``shop``, e.g.::

    mariadb-install-db --no-defaults --datadir=D --user=root
    mariadbd --no-defaults --datadir=D --socket=D/sock --port=PORT --bind-address=127.0.0.1 --user=root &
    mariadb --socket=D/sock -uroot -e "create user 'app'@'%' identified by 'secret';
        grant all on *.* to 'app'@'%'; create database shop;"

and ``mysql-connector-python`` in the venv for the server-side prepared statements
(recording only; the tests read the saved bytes).
"""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from pathlib import Path

from tests.recorder import RecordingProxy

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "mysql"

CLI_SQL = """
DROP TABLE IF EXISTS shop.items;
DROP PROCEDURE IF EXISTS shop.two_sets;
CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(40), price DOUBLE);
USE shop;
INSERT INTO items VALUES (1, 'apple', 0.5), (2, 'pear', 0.75), (3, 'plum', 1.25);
SELECT id, name, price FROM items ORDER BY id;
SELECT * FROM no_such_table;
SELECT SLEEP(0.05);
UPDATE items SET price = price * 2 WHERE id < 3;
DELIMITER //
SELECT id FROM items WHERE id < 3; UPDATE items SET price = 1 WHERE id = 3; SELECT 'two'//
CREATE PROCEDURE two_sets() BEGIN SELECT 1; SELECT 2 UNION SELECT 3; END//
DELIMITER ;
CALL two_sets();
LOAD DATA LOCAL INFILE '/tmp/apptrace_items.csv' INTO TABLE items FIELDS TERMINATED BY ',';
"""


def record(name: str, fn) -> None:
    with RecordingProxy(int(sys.argv[1])) as proxy:
        fn(proxy.port)
        time.sleep(0.3)
    proxy.save(OUT / name)
    print("saved", OUT / name, sum(len(c[2]) for c in proxy.connections[0]), "bytes")


def cli(port: int) -> None:
    # LOAD DATA LOCAL: the server asks for the file, the client streams it, the server says OK
    Path("/tmp/apptrace_items.csv").write_text("10,cherry,3.5\n11,lime,0.4\n")
    subprocess.run(
        [
            "mariadb",
            "--no-defaults",
            "--skip-ssl",
            "--force",
            "-h127.0.0.1",
            f"-P{port}",
            "-uapp",
            "-psecret",
        ],
        input=CLI_SQL,
        text=True,
        check=False,
    )


def prepared(port: int) -> None:
    import mysql.connector

    # Asking for another auth plugin than the server's makes it answer with an AuthSwitchRequest,
    # an exchange the parser has to skip.
    conn = mysql.connector.connect(
        host="127.0.0.1",
        port=port,
        user="app",
        password="secret",
        database="shop",
        use_pure=True,
        ssl_disabled=True,
        auth_plugin="caching_sha2_password",
    )
    cur = conn.cursor(prepared=True)
    cur.execute("DROP TABLE IF EXISTS orders")
    cur.execute(
        "CREATE TABLE orders (id INT PRIMARY KEY, who VARCHAR(40), amount DOUBLE, at DATETIME, note TEXT)"
    )
    ins = "INSERT INTO orders VALUES (%s, %s, %s, %s, %s)"
    cur.execute(ins, (1, "alice", 9.5, datetime.datetime(2024, 5, 6, 7, 8, 9), None))
    cur.execute(ins, (2, "bob", -3.25, datetime.datetime(2024, 5, 6, 7, 8, 10), "it's"))
    cur.execute("SELECT id, who, amount FROM orders WHERE id >= %s ORDER BY id", (1,))
    cur.fetchall()
    try:
        cur.execute(ins, (1, "dup", 0.0, None, None))
    except mysql.connector.Error:
        pass
    cur.execute("SELECT SLEEP(%s)", (0.05,))
    cur.fetchall()
    cur.close()
    conn.close()


if __name__ == "__main__":
    record("cli.jsonl", cli)
    record("prepared.jsonl", prepared)
    # Neither libmariadb nor mysql-connector-python ask for CLIENT_DEPRECATE_EOF: a minimal
    # client of our own does, against the same real server.
    from tests.peers.mysql_eof_client import run as deprecate_eof
    from tests.peers.mysql_eof_client import run_cursor

    record("deprecate_eof.jsonl", deprecate_eof)
    record("cursor.jsonl", run_cursor)
