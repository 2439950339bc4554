"""`apptrace watch`: decoded requests and responses — headers and bodies — as they are captured.

mTLS debugging without keys: the tracer has the plaintext, this shows it. Filters follow hubble's rules: a
repeated flag means OR, different flags mean AND, `--not` negates the next filter flag. New rows are found by
polling on `time_` (through the tracer's socket, or the file when no tracer runs; the file is opened only for
the moment of each poll so a tracer can start meanwhile). Rows can arrive a little out of order (each flush holds
up to a second of records), so each poll looks back a few seconds and skips rows it has shown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from apptrace.common.defaults import default_db
from apptrace.common.units import parse_window
from apptrace.query.backend import QueryError, open_backend, socket_alive
from apptrace.query.px.compiler import sql_literal
from apptrace.query.rules import ERROR_SQL, since_sql

TABLES = {"http": "http_events", "mysql": "mysql_events", "pgsql": "pgsql_events"}
LOOKBACK_NS = 3 * 10**9
BATCH = 2000


class WatchError(Exception):
    pass


def status_predicate(spec: str, proto: str) -> str | None:
    """SQL for one --status value on one protocol; None when it cannot match that protocol."""
    s = spec.strip().lower()
    if s in ("err", "error", "errors"):
        return ERROR_SQL[TABLES[proto]]
    if s == "ok":
        return "(resp_status < 400 AND coalesce(grpc_status, 0) = 0)" if proto == "http" else "resp_status = 'OK'"
    if proto != "http":
        return None
    m = re.fullmatch(r"(\d{1,3})\+", s)
    if m:
        p = m.group(1)
        lo, hi = int(p.ljust(3, "0")), int(p.ljust(3, "9"))
        return f"resp_status BETWEEN {lo} AND {hi}"
    m = re.fullmatch(r"(\d{3})-(\d{3})", s)
    if m:
        return f"resp_status BETWEEN {int(m.group(1))} AND {int(m.group(2))}"
    if re.fullmatch(r"\d{3}", s):
        return f"resp_status = {int(s)}"
    raise WatchError(f"bad --status {spec!r}: use a code (404), a prefix (5+), a range (500-599), err or ok")


def _any(preds: Iterable[str]) -> str:
    preds = list(preds)
    return preds[0] if len(preds) == 1 else "(" + " OR ".join(preds) + ")"


def table_filters(proto: str, args: argparse.Namespace) -> list[str] | None:
    """WHERE terms for one protocol table, or None if the filters rule the table out."""
    where: list[str] = []
    for neg in (False, True):
        pre = "not_" if neg else ""

        def add(pred: str, neg: bool = neg) -> None:
            where.append(f"NOT coalesce({pred}, false)" if neg else pred)

        pids = getattr(args, pre + "pid", [])
        if pids:
            add(f"pid IN ({', '.join(str(int(p)) for p in pids)})")
        services = getattr(args, pre + "service", [])
        if services:
            add(f"service IN ({', '.join(sql_literal(s) for s in services)})")
        paths = getattr(args, pre + "path", [])
        if paths:
            col = "req_path" if proto == "http" else "req_body"
            add(_any(f"regexp_matches({col}, {sql_literal(p)})" for p in paths))
        statuses = getattr(args, pre + "status", [])
        if statuses:
            preds = [p for p in (status_predicate(s, proto) for s in statuses) if p is not None]
            if not preds:
                if not neg:
                    return None  # e.g. --status 5+ says nothing about SQL tables: HTTP only
                continue
            add(_any(preds))
    return where


def selected_protocols(args: argparse.Namespace) -> list[str]:
    protos = list(dict.fromkeys(args.protocol)) or list(TABLES)
    return [p for p in protos if p not in set(args.not_protocol)]


def _where(proto: str, args: argparse.Namespace, since_ns: int | None, after_ns: int | None) -> list[str] | None:
    where = table_filters(proto, args)
    if where is None:
        return None
    if after_ns is not None:
        where = [f"time_ > make_timestamp_ns({int(after_ns)})", *where]
    elif since_ns is not None:
        where = [f"time_ >= {since_sql(since_ns)}", *where]
    return where


def build_queries(args: argparse.Namespace, since_ns: int | None, after_ns: int | None,
                  last: int | None = None) -> dict[str, str]:
    """Per protocol: its rows in time order, the first BATCH of them, or (``last``) the newest ``last``."""
    out = {}
    for proto in selected_protocols(args):
        where = _where(proto, args, since_ns, after_ns)
        if where is None:
            continue
        sql = f"SELECT '{proto}' AS protocol, * FROM {TABLES[proto]}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        if last:
            sql = f"SELECT * FROM ({sql} ORDER BY time_ DESC LIMIT {int(last)}) ORDER BY time_"
        else:
            sql += f" ORDER BY time_ LIMIT {BATCH}"
        out[proto] = sql
    return out


def count_rows(db: str, args: argparse.Namespace, since_ns: int | None) -> int:
    """How many rows the filters select in the window, all protocols together."""
    parts = []
    for proto in selected_protocols(args):
        where = _where(proto, args, since_ns, None)
        if where is not None:
            parts.append(f"SELECT count(*) AS n FROM {TABLES[proto]}" + (" WHERE " + " AND ".join(where) if where
                                                                         else ""))
    backend = open_backend(db)
    try:
        return int(backend.query_arrow(f"SELECT sum(n) AS n FROM ({' UNION ALL '.join(parts)})").to_pylist()[0]["n"])
    finally:
        backend.close()


def file_state(db: str) -> tuple:
    """(mtime, size) of the DB file and its WAL: changes whenever a writer commits."""
    out: list = []
    for p in (db, db + ".wal"):
        try:
            st = os.stat(p)
            out += [st.st_mtime_ns, st.st_size]
        except FileNotFoundError:
            out += [None, None]
    return tuple(out)


def fetch(db: str, queries: dict[str, str]) -> list[dict]:
    backend = open_backend(db)
    try:
        rows: list[dict] = []
        for sql in queries.values():
            rows.extend(backend.query_arrow(sql).to_pylist())
    finally:
        backend.close()
    rows.sort(key=lambda r: _ns(r["time_"]))
    return rows


def _ns(t: Any) -> int:
    if t is None:
        return 0
    if isinstance(t, int):
        return t
    if hasattr(t, "value"):
        return int(t.value)
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return int(t.timestamp()) * 10**9 + t.microsecond * 1000 + getattr(t, "nanosecond", 0)


def row_key(r: dict) -> tuple:
    return (r.get("protocol"), _ns(r.get("time_")), r.get("conn_id"), r.get("stream_id"), r.get("pid"),
            r.get("latency"), r.get("req_path") or r.get("req_body"))


# -- rendering ---------------------------------------------------------------------------------------------------
def _time_str(r: dict) -> str:
    ns = _ns(r.get("time_"))
    d = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC)
    return f"{d:%H:%M:%S}.{(ns % 10**9) // 1000:06d}"


def fmt_latency(ns: Any) -> str:
    if ns is None:
        return "?"
    ms = ns / 1e6
    if ms < 1:
        return f"{ns / 1e3:.0f}µs"
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def _headers(raw: Any) -> list[tuple[str, str]]:
    if not raw:
        return []
    try:
        obj = json.loads(raw)
    except (TypeError, ValueError):
        return [("(raw)", str(raw))]
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            for item in v if isinstance(v, list) else [v]:
                out.append((str(k), str(item)))
    return out


def _body(body: Any, size: Any, limit: int) -> tuple[str, str]:
    if body in (None, ""):
        return "", ""
    text = str(body)
    shown = text[:limit]
    printable = "".join(c if c.isprintable() or c in "\n\t" else f"\\x{ord(c):02x}" for c in shown)
    total = size if isinstance(size, int) else len(text)
    note = ""
    if total and total > len(shown):
        note = f"({total} bytes, showing {len(shown)})"
    return printable, note


def render(r: dict, args: argparse.Namespace, console: Any) -> None:
    from rich.text import Text

    proto = r["protocol"]
    role = r.get("trace_role") or "?"
    local = f"{r.get('local_addr') or '?'}:{r.get('local_port') or '?'}"
    remote = f"{r.get('remote_addr') or '?'}:{r.get('remote_port') or '?'}"
    arrow = f"{remote} → {local}" if role == "server" else f"{local} → {remote}"
    tls = f"TLS {r.get('tls_lib')}" if r.get("encrypted") else "plaintext"
    head = Text()
    head.append(_time_str(r), style="dim")
    head.append("  ")
    head.append(str(r.get("service") or r.get("comm") or "?"), style="bold")
    label = "grpc" if proto == "http" and r.get("grpc_status") is not None else proto
    head.append(f" (pid {r.get('pid')}, {role})  {arrow}  {label} · {tls}", style="dim")
    console.print(head)
    ok_style = "green"
    if proto == "http":
        status = r.get("resp_status")
        style = "bold red" if (status or 0) >= 500 else "yellow" if (status or 0) >= 400 else ok_style
        grpc = r.get("grpc_status")
        if grpc not in (None, 0):
            style = "bold red"
        ver = r.get("http_version") or "?"
        console.print(Text(f"  → {r.get('req_method') or '?'} {r.get('req_path') or ''}  HTTP/{ver}",
                           style="cyan"))
        _print_headers(console, r.get("req_headers"))
        _print_body(console, r.get("req_body"), r.get("req_body_size"), args)
        line = f"  ← {status if status is not None else '?'} {r.get('resp_message') or ''}".rstrip()
        if grpc is not None:
            line += f"  grpc-status {grpc}" + (f" {r.get('grpc_message')}" if r.get("grpc_message") else "")
        line += f"  {fmt_latency(r.get('latency'))}"
        console.print(Text(line, style=style))
        _print_headers(console, r.get("resp_headers"))
        _print_body(console, r.get("resp_body"), r.get("resp_body_size"), args)
    else:
        console.print(Text(f"  → {r.get('req_cmd') or '?'}", style="cyan"))
        _print_body(console, r.get("req_body"), None, args, always=True)
        st = r.get("resp_status") or "?"
        style = "bold red" if st == "ERR" else ok_style
        detail = f" {r.get('error_code')}" if st == "ERR" and r.get("error_code") is not None else ""
        rows = f"  rows {r.get('rows')}" if r.get("rows") is not None else ""
        console.print(Text(f"  ← {st}{detail}{rows}  {fmt_latency(r.get('latency'))}", style=style))
        _print_body(console, r.get("resp_body"), None, args, always=True)
    console.print()


def _print_headers(console: Any, raw: Any) -> None:
    from rich.text import Text

    for k, v in _headers(raw):
        t = Text("    ")
        t.append(k, style="magenta")
        t.append(": " + v)
        console.print(t)


def _print_body(console: Any, body: Any, size: Any, args: argparse.Namespace, always: bool = False) -> None:
    from rich.text import Text

    if args.no_body and not always:
        return
    text, note = _body(body, size, args.max_body)
    if not text:
        return
    if not note and text[:1] in "{[":  # a whole JSON body reads better indented
        try:
            text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
        except ValueError:
            pass
    for ln in text.splitlines() or [text]:
        console.print(Text("    " + ln), soft_wrap=True)
    if note:
        console.print(Text("    " + note, style="dim italic"))


def json_line(r: dict) -> str:
    out = {}
    for k, v in r.items():
        if k == "time_":
            ns = _ns(v)
            d = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC)
            out[k] = f"{d:%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}Z"
        elif isinstance(v, dt.datetime):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return json.dumps(out, default=str)


# -- command -----------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    db = default_db(args.db)
    if getattr(args, "output", "compact") == "json":
        args.json = True
    try:
        since_ns = parse_window(args.since) if args.since else (None if args.follow else parse_window("5m"))
        if args.last is not None and args.last <= 0:
            raise WatchError("--last must be positive")
        for proto in selected_protocols(args):
            table_filters(proto, args)  # validates --status
        for p in [*args.path, *args.not_path]:
            try:
                re.compile(p)
            except re.error as e:
                raise WatchError(f"bad --path regex {p!r}: {e}") from None
    except (ValueError, WatchError) as e:
        print(f"apptrace watch: {e}", file=sys.stderr)
        return 2
    start_after = time.time_ns() if (args.follow and since_ns is None and args.last is None) else None
    # Without -f, a window holds more rows than fit: show its newest ones (and say so), never its oldest.
    limit = args.last if args.last is not None else (None if args.follow else BATCH)
    # One row more than shown tells a cut window from one that fit exactly.
    first = build_queries(args, since_ns, start_after, limit + 1 if limit is not None and args.last is None else limit)
    if args.print_sql:
        for sql in first.values():
            print(sql + ";")
        return 0
    if not first:
        print("apptrace watch: the filters match no protocol (e.g. --status 5+ applies to HTTP only)",
              file=sys.stderr)
        return 2
    console = Console(highlight=False, soft_wrap=True)
    seen: dict[tuple, int] = {}
    last_ns = start_after or 0
    queries = first
    polled_state: tuple | None = None
    try:
        while True:
            if args.follow and polled_state is not None and not socket_alive(db + ".sock"):
                # No tracer: the file only changes if one starts. Do not open it (and so never hold it while a
                # tracer wants its lock) until it has changed.
                if file_state(db) == polled_state:
                    time.sleep(args.interval)
                    continue
            state = file_state(db)
            try:
                rows = fetch(db, queries)
            except QueryError as e:
                if args.follow and polled_state is not None and "in use by another process" in str(e):
                    time.sleep(args.interval)  # a tracer is starting; its socket appears in a moment
                    continue
                print(f"apptrace watch: {e}", file=sys.stderr)
                return 2
            polled_state = state
            if limit is not None and queries is first:
                if len(rows) > limit:
                    rows = rows[-limit:]  # each protocol gave its newest: the newest of them all
                    if args.last is None:
                        total = count_rows(db, args, since_ns)
                        print(f"apptrace watch: showing the newest {limit} of {total} events in the window "
                              f"(--last N, or a shorter --since, to choose)", file=sys.stderr)
            for r in rows:
                k = row_key(r)
                if k in seen:
                    continue
                t = _ns(r["time_"])
                seen[k] = t
                last_ns = max(last_ns, t)
                if args.json:
                    sys.stdout.write(json_line(r) + "\n")
                else:
                    render(r, args, console)
            sys.stdout.flush()
            if not args.follow:
                return 0
            cutoff = last_ns - LOOKBACK_NS
            for k in [k for k, t in seen.items() if t < cutoff]:
                del seen[k]
            queries = build_queries(args, None, cutoff)
            if len(rows) < BATCH:
                time.sleep(args.interval)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        return 0
