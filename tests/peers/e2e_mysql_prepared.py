"""Server-side prepared statements with binary parameters over TLS: mysql-connector-python, pure Python.

    python -m tests.peers.e2e_mysql_prepared PORT

``use_pure=True`` keeps TLS in Python's ``ssl`` (OpenSSL 3, traceable) rather than the C extension's
bundled libraries. Prints one JSON object: the TLS version in use and the rows of each execute.
"""

from __future__ import annotations

import json
import sys
import time

import mysql.connector

SQL = "SELECT id, name FROM items WHERE id > ? AND name <> ? AND price < ?"
PARAMS = [(1, "pear", 2.0), (0, "apple", 2.0)]


def main() -> int:
    conn = mysql.connector.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app", password="secret",
                                   database="shop", use_pure=True, ssl_disabled=False, ssl_verify_cert=False)
    tls = conn._socket.sock.version()  # noqa: SLF001 - proof that the connection is encrypted
    cur = conn.cursor(prepared=True)
    results = []
    for params in PARAMS:
        cur.execute(SQL, params)
        results.append([list(r) for r in cur.fetchall()])
    cur.close()
    conn.close()
    print(json.dumps({"tls": tls, "results": results}), flush=True)
    time.sleep(1.0)  # a tracer that lags still finds our /proc entry: the service comes from our command line
    return 0


if __name__ == "__main__":
    sys.exit(main())
