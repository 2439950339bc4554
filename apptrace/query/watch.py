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
from apptrace.query.fmt import fmt_ns, fmt_span_ns
from apptrace.query.freshness import freshness
from apptrace.query.px.compiler import sql_literal
from apptrace.query.rules import DEFAULT_WINDOW, ERROR_SQL, since_sql
from apptrace.store.redact import Redactor

TABLES = {"http": "http_events", "mysql": "mysql_events", "pgsql": "pgsql_events"}
#: what --protocol takes: each table's protocol, and grpc, the HTTP/2 rows with a grpc-status
PROTOCOLS = ("http", "grpc", "mysql", "pgsql")
LOOKBACK_NS = 3 * 10**9
BATCH = 2000
#: how long a DB that has just appeared may fail to open before watch -f reports it
SETTLE_S = 30.0


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
        comms = getattr(args, pre + "comm", [])
        if comms:
            add(f"comm IN ({', '.join(sql_literal(c) for c in comms)})")
        services = getattr(args, pre + "service", [])
        if services:
            add(f"service IN ({', '.join(sql_literal(s) for s in services)})")
        addrs = [a for spec in getattr(args, pre + "addr", []) for a in address_forms(spec)]
        if addrs:
            listed = ", ".join(sql_literal(a) for a in addrs)
            add(f"(local_addr IN ({listed}) OR remote_addr IN ({listed}))")
        ports = getattr(args, pre + "port", [])
        if ports:
            listed = ", ".join(str(int(p)) for p in ports)
            add(f"(local_port IN ({listed}) OR remote_port IN ({listed}))")
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
    if proto == "http":
        wanted, unwanted = set(args.protocol) or set(PROTOCOLS), set(args.not_protocol)
        if "http" not in wanted:
            where.append("grpc_status IS NOT NULL")  # --protocol grpc alone: only the gRPC calls
        if "grpc" in unwanted:
            where.append("grpc_status IS NULL")
    return where


def address_forms(spec: str) -> list[str]:
    """The ways the tables may write the address ``spec``: an IPv4 address also as IPv4-mapped IPv6."""
    import ipaddress

    try:
        ip = ipaddress.ip_address(spec.strip().strip("[]"))
    except ValueError:
        raise WatchError(f"bad --addr {spec!r}: give an IPv4 or IPv6 address, e.g. 10.0.0.5 or ::1") from None
    if isinstance(ip, ipaddress.IPv4Address):
        return [str(ip), f"::ffff:{ip}"]
    if ip.ipv4_mapped is not None:
        return [str(ip.ipv4_mapped), str(ip)]
    return [str(ip)]


def selected_protocols(args: argparse.Namespace) -> list[str]:
    """The tables (by protocol) that --protocol and --not --protocol leave; grpc's rows are in http's."""
    wanted = set(args.protocol) or set(PROTOCOLS)
    unwanted = set(args.not_protocol)
    out = []
    for proto in TABLES:
        if proto in unwanted:
            continue
        if proto == "http":
            only_grpc = "http" not in wanted
            if not ({"http", "grpc"} & wanted) or (only_grpc and "grpc" in unwanted):
                continue
        elif proto not in wanted:
            continue
        out.append(proto)
    return out


def _where(proto: str, args: argparse.Namespace, since_ns: int | None, after_ns: int | None) -> list[str] | None:
    where = table_filters(proto, args)
    if where is None:
        return None
    if after_ns is not None:
        where = [f"time_ > make_timestamp_ns({int(after_ns)})", *where]
    elif since_ns is not None:
        where = [f"time_ >= {since_sql(since_ns)}", *where]
    until_ns = getattr(args, "until_ns", None)
    if until_ns is not None:
        where = [*where, f"time_ < {since_sql(until_ns)}"]
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
    return "?" if ns is None else fmt_ns(ns)


def is_failure(r: dict) -> bool:
    """The row failed as apptrace.query.rules says (5xx, gRPC status not OK, SQL ERR): it is drawn in red."""
    if r["protocol"] == "http":
        return (r.get("resp_status") or 0) >= 500 or r.get("grpc_status") not in (None, 0)
    return r.get("resp_status") == "ERR"


def outcome_style(r: dict) -> str:
    if is_failure(r):
        return "bold red"
    return "yellow" if r["protocol"] == "http" and (r.get("resp_status") or 0) >= 400 else "green"


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
    style = outcome_style(r)
    if proto == "http":
        status = r.get("resp_status")
        grpc = r.get("grpc_status")
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


#: columns holding a JSON text that --json gives as what it is, an object
JSON_COLUMNS = ("req_headers", "resp_headers")


def json_line(r: dict) -> str:
    out = {}
    for k, v in r.items():
        if k in JSON_COLUMNS and isinstance(v, str):
            try:
                out[k] = json.loads(v)
            except ValueError:
                out[k] = v  # not JSON after all (a damaged row): the text as stored
        elif k == "time_":
            ns = _ns(v)
            d = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC)
            out[k] = f"{d:%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}Z"
        elif isinstance(v, dt.datetime):
            out[k] = v.isoformat()
        else:
            out[k] = v
    return json.dumps(out, default=str)


# -- -o table: one line per row ---------------------------------------------------------------------------------
#: (title, width) of the fixed columns; the request takes what the terminal has left
TABLE_COLUMNS = (("TIME", 15), ("SERVICE", 16), ("PID", 7), ("ROLE", 6), ("PROTO", 5), ("STATUS", 9),
                 ("LATENCY", 8))
MIN_REQUEST = 20


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def table_header(width: int) -> str:
    fixed = " ".join(f"{t:<{w}}" for t, w in TABLE_COLUMNS)
    return f"{fixed} REQUEST"[:max(width, len(fixed) + MIN_REQUEST)]


def table_line(r: dict, width: int) -> str:
    proto = r["protocol"]
    grpc = r.get("grpc_status")
    if proto == "http":
        label = "grpc" if grpc is not None else "http"
        status = f"grpc {grpc}" if grpc not in (None, 0) else str(r.get("resp_status") or "?")
        request = f"{r.get('req_method') or '?'} {r.get('req_path') or ''}"
    else:
        label = proto
        st = r.get("resp_status") or "?"
        status = f"ERR {r.get('error_code')}" if st == "ERR" and r.get("error_code") is not None else st
        request = f"{r.get('req_cmd') or '?'} {' '.join(str(r.get('req_body') or '').split())}"
    cells = [_time_str(r), str(r.get("service") or r.get("comm") or "?"), str(r.get("pid") or "?"),
             str(r.get("trace_role") or "?"), label, status, fmt_latency(r.get("latency"))]
    fixed = " ".join(f"{_fit(c, w):<{w}}" for c, (_, w) in zip(cells, TABLE_COLUMNS, strict=True))
    room = max(width - len(fixed) - 1, MIN_REQUEST)
    return f"{fixed} {_fit(request, room)}"


def render_table_row(r: dict, console: Any) -> None:
    from rich.text import Text

    console.print(Text(table_line(r, console.width), style=outcome_style(r)), overflow="crop", no_wrap=True)


# -- header, window ----------------------------------------------------------------------------------------------
def window_words(since_ns: int | None, until_ns: int | None) -> str:
    """The window in words, as an empty result names it: 'the last 15m', 'from 1h to 10m ago'."""
    if since_ns is None:
        return "from now on"
    if until_ns is not None:
        return f"from {fmt_span_ns(since_ns)} to {fmt_span_ns(until_ns)} ago"
    start = dt.datetime.fromtimestamp((time.time_ns() - since_ns) / 1e9, dt.UTC)
    return f"the last {fmt_span_ns(since_ns)} (since {start:%H:%M:%S} UTC)"


def header_line(db: str, args: argparse.Namespace, since_ns: int | None) -> str | None:
    """What is shown and how current it is: 'watch: the last 15m of x.duckdb · rows end 22 s ago · …'."""
    try:
        backend = open_backend(db)
    except QueryError:
        return None
    try:
        fresh = freshness(backend, [TABLES[p] for p in selected_protocols(args)])
    finally:
        backend.close()
    what = "following" if args.follow and since_ns is None else f"{window_words(since_ns, args.until_ns)} of"
    return f"apptrace watch: {what} {db} · {fresh.describe()}"


# -- command -----------------------------------------------------------------------------------------------------
def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.text import Text

    db = default_db(args.db)
    if getattr(args, "output", "compact") == "json":
        args.json = True
    as_table = getattr(args, "output", "compact") == "table"
    try:
        if getattr(args, "stray_not", False):
            raise WatchError("--not negates the filter flag right after it (--not --status 200), and none follows it")
        if args.until and args.follow:
            raise WatchError("--until ends the window and -f follows without end: give one of them")
        since_ns = parse_window(args.since) if args.since else (None if args.follow else parse_window(DEFAULT_WINDOW))
        args.until_ns = parse_window(args.until) if args.until else None
        if args.until_ns is not None and since_ns is not None and args.until_ns >= since_ns:
            raise WatchError(f"--until {args.until} is not after the window's start ({fmt_span_ns(since_ns)} ago)")
        if args.last is not None and args.last <= 0:
            raise WatchError("--last must be positive")
        for proto in selected_protocols(args):
            table_filters(proto, args)  # validates --status and --addr
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
    # one line per row in a table: as wide as the terminal, or (piped) wide enough not to cut what a program reads
    console = Console(highlight=False, soft_wrap=not as_table,
                      width=None if not as_table or sys.stdout.isatty() else 240)
    settle_until = None
    if args.follow and not os.path.exists(db) and not socket_alive(db + ".sock"):
        # Started before the tracer: wait for its DB (said once, on stderr, so that --json stays clean).
        print(f"apptrace watch: waiting for {db} to appear (apptrace trace --db {db} creates it)", file=sys.stderr)
        while not os.path.exists(db) and not socket_alive(db + ".sock"):
            time.sleep(args.interval)
        # A tracer creates the file a moment before its socket answers: meanwhile the file is locked, or not yet
        # whole. Such errors are waited out for a while; one that lasts is reported.
        settle_until = time.monotonic() + SETTLE_S
    redactor = None if getattr(args, "no_redact", False) else Redactor(getattr(args, "redact_header", []),
                                                                       getattr(args, "redact_param", []))
    seen: dict[tuple, int] = {}
    last_ns = start_after or 0
    queries = first
    polled_state: tuple | None = None
    shown = 0
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
                settling = polled_state is None and settle_until is not None and time.monotonic() < settle_until
                if args.follow and ("in use by another process" in str(e) or not os.path.exists(db) or settling):
                    time.sleep(args.interval)  # a tracer is starting; its socket appears in a moment
                    continue
                print(f"apptrace watch: {e}", file=sys.stderr)
                return 2
            if polled_state is None:
                header = header_line(db, args, since_ns)
                if header and args.json:
                    print(header, file=sys.stderr)  # stdout is for the JSON lines
                elif header:
                    console.print(Text(header, style="dim"), soft_wrap=True)
                if as_table:
                    console.print(Text(table_header(console.width), style="bold"), overflow="crop", no_wrap=True)
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
                if redactor is not None:  # the DB may have been written with --no-redact
                    redactor.row(TABLES[r["protocol"]], r)
                t = _ns(r["time_"])
                seen[k] = t
                last_ns = max(last_ns, t)
                shown += 1
                if args.json:
                    sys.stdout.write(json_line(r) + "\n")
                elif as_table:
                    render_table_row(r, console)
                else:
                    render(r, args, console)
            sys.stdout.flush()
            if not args.follow:
                if not shown:
                    print(f"apptrace watch: no events{' matching the filters' if has_filters(args) else ''} in "
                          f"{window_words(since_ns, args.until_ns)} in {db}", file=sys.stderr)
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


def has_filters(args: argparse.Namespace) -> bool:
    return any(getattr(args, pre + name, None) for pre in ("", "not_")
               for name in ("pid", "comm", "service", "protocol", "path", "status", "addr", "port"))
