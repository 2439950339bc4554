"""PostgreSQL messages to ``pgsql_events`` records.

One record per Query message (a multi-statement simple query is one record: the
CommandComplete tags are joined with '; ' and ``rows`` sums the DataRows) and one per
Execute. Parse, Bind, Describe, Close and Sync produce no record of their own, except
when they fail and no Execute of the same batch can carry the error: then the record's
``req_cmd`` is 'PARSE', 'BIND', ... with ``resp_status`` 'ERR'.

Every frontend message that the server answers becomes an ``Op`` in one FIFO, so
pipelined batches (many Bind/Execute before one Sync) are matched in order. After an
error the server skips everything up to the next Sync: the Executes it skipped are
recorded with ``resp_status`` 'ERR', no SQLSTATE and ``resp_body`` saying so.

The StartupMessage and the whole authentication exchange (PasswordMessage, SASL) are
never recorded nor looked into. Records with ``resp_status`` NULL are requests whose
response never came (evicted, expired, or pending at close).
"""

from __future__ import annotations

import struct
from collections import deque
from operator import call

from ..common import Confidence, Memo, ParserCaches, ParserConfig, ProtocolError, Record, Side
from ..sql_common import SqlParser, sql_record
from .parse import (
    UINT32_ARRAY,
    Handler,
    LostBoundary,
    MessageStream,
    command_tag,
    cstr,
    handler_table,
    parse_bind,
    parse_error,
    parse_parse,
    read_header,
    renderer,
    small_parse,
)
from .types import (
    B_AUTH,
    B_BIND_COMPLETE,
    B_CLOSE_COMPLETE,
    B_COMPLETE,
    B_COPY_DATA,
    B_DATA_ROW,
    B_EMPTY,
    B_ERROR,
    B_FUNCTION_RESULT,
    B_NO_DATA,
    B_PARAM_DESC,
    B_PARSE_COMPLETE,
    B_READY,
    B_ROW_DESC,
    B_SUSPENDED,
    BACKEND_TYPES,
    ERROR,
    F_BIND,
    F_CLOSE,
    F_DESCRIBE,
    F_EXECUTE,
    F_FUNCTION_CALL,
    F_PARSE,
    F_PASSWORD,
    F_QUERY,
    F_SYNC,
    F_TERMINATE,
    FRONTEND_TYPES,
    HEADER,
    KIND,
    MAX_STARTUP,
    NAME,
    OP_BIND,
    OP_CALL,
    OP_CLOSE,
    OP_DESCRIBE,
    OP_EXECUTE,
    OP_JOIN,
    OP_NAMES,
    OP_PARSE,
    OP_QUERY,
    OP_SYNC,
    PLAUSIBLE_MAX_LENGTH,
    PORTAL,
    PROTOCOL_3_0,
    QUERY_RESULTS,
    READY_STATUSES,
    REQUEST_MAX_LENGTH,
    RESPONSE_MAX_LENGTH,
    RETURNS_ROWS,
    ROW_TAGS,
    ROWS,
    SQL,
    TABLE,
    TAGS,
    TARGET_STATEMENT,
    TS,
    Op,
    Portal,
    Statement,
    Template,
    new_op,
)

C_UNKNOWN, C_AUTH, C_READY = 0, 1, 2
# Ops that carry nothing but their kind are shared, not made per message (ts -1: no time of their own).
_BIND, _SYNC, _CLOSE, _DESCRIBE_PORTAL, _JOIN = (
    new_op(OP_BIND, ts=-1),
    new_op(OP_SYNC, ts=-1),
    new_op(OP_CLOSE, ts=-1),
    new_op(OP_DESCRIBE, ts=-1),
    new_op(OP_JOIN, ts=-1),
)
_EXECUTE = new_op(OP_EXECUTE)  # what an Execute's op starts as, but for its portal
MAX_NAMED = 4096  # prepared statements and portals remembered per connection
MAX_CACHED_PARAMS = 64  # renderers are cached for statements with at most this many parameters
SKIPPED = "not executed: an earlier message of the batch failed"


def _renderers_for(key: tuple[tuple[int, ...], tuple[int, ...], int]) -> list:
    """One renderer per value of an Execute, from the statement's type OIDs and the Bind's formats."""
    oids, formats, n = key
    noids = len(oids)
    nf = len(formats)
    out = []
    for k in range(n):
        # one format for all, one per value, or none (text); more values than formats is an error
        fmt = formats[k] if nf > 1 else formats[0] if nf == 1 else 0
        out.append(renderer(fmt, oids[k] if k < noids else 0))
    return out


def _few_parameters(key: tuple[tuple[int, ...], tuple[int, ...], int]) -> bool:
    return key[2] <= MAX_CACHED_PARAMS


def _rows_summary(op: Op) -> int | None:
    if op[ROWS] or op[RETURNS_ROWS]:
        return op[ROWS]
    for tag in op[TAGS] or ():
        if tag.startswith(ROW_TAGS):
            return op[ROWS]
    return None


class PgSQLParser(SqlParser):
    name = "pgsql"
    table = TABLE
    __slots__ = (
        "_parses", "_tags", "_req_stream", "_resp_stream", "_streams", "_max_pending", "_max_body", "_templates",
        "_renderers", "_ops", "_stmts", "_portals", "_conn", "_group_ts", "_skip_until_sync",
    )  # fmt: skip

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        super().__init__(config)
        caches = caches if caches is not None else ParserCaches()
        self._parses = caches.memo("pgsql_parses", 512, parse_parse, small_parse)
        # a workload's statements complete with a handful of tags ('UPDATE 1', 'SELECT 1' ...)
        self._tags = caches.memo("pgsql_tags", 512, command_tag)
        cap = self.config.max_buffer
        self._req_stream = MessageStream(
            cap, _REQUEST_HANDLERS, PgSQLParser._on_startup, self.stats, REQUEST_MAX_LENGTH
        )
        self._resp_stream = MessageStream(cap, _RESPONSE_HANDLERS, None, self.stats, RESPONSE_MAX_LENGTH)
        self._streams = {Side.REQUEST: self._req_stream, Side.RESPONSE: self._resp_stream}
        self._max_pending = self.config.max_pending
        self._max_body = self.config.max_body
        self._templates = Memo(MAX_NAMED, Template)  # SQL cut at its placeholders, by SQL text
        # (OIDs, formats, count) -> one renderer per value, kept for statements of few parameters
        self._renderers = Memo(MAX_NAMED, _renderers_for, _few_parameters)
        self._ops: deque[Op] = deque()
        self._stmts: dict[bytes, Statement] = {}
        self._portals: dict[bytes, Portal] = {}
        self._conn = C_UNKNOWN
        self._group_ts: int | None = None  # first byte of the request being assembled
        self._skip_until_sync = False

    def _set_conn(self, state: int) -> None:
        self._conn = state
        # while logging in, messages go through tables that look for the end of the login, so
        # that the handlers of a logged-in connection need not test for it on every message
        login = state == C_AUTH
        self._req_stream.handlers = _REQUEST_AUTH_HANDLERS if login else _REQUEST_HANDLERS
        self._resp_stream.handlers = _RESPONSE_AUTH_HANDLERS if login else _RESPONSE_HANDLERS

    # ---- detection -------------------------------------------------------------------------

    @classmethod
    def detect(cls, side: Side, data: bytes) -> Confidence:
        if len(data) < 5:
            return Confidence.NO
        if side is Side.REQUEST and len(data) >= 8:
            length = int.from_bytes(data[:4], "big")
            if (
                int.from_bytes(data[4:8], "big") == PROTOCOL_3_0
                and 8 < length <= MAX_STARTUP
                and (
                    length == len(data) or len(data) > length and data[length - 1] == 0 or len(data) < length
                )
            ):
                return Confidence.YES
        t = data[0]
        length = int.from_bytes(data[1:5], "big")
        if length < 4 or length > PLAUSIBLE_MAX_LENGTH:
            return Confidence.NO
        if side is Side.REQUEST:
            if t == F_QUERY and (len(data) < length + 1 or data[length] == 0):
                return Confidence.MAYBE
            if t in (F_PARSE, F_BIND) and len(data) >= length + 1:
                return Confidence.MAYBE
            return Confidence.NO
        if t in (B_READY, B_ROW_DESC, B_COMPLETE, B_ERROR, B_PARSE_COMPLETE, B_BIND_COMPLETE, B_AUTH):
            if t == B_READY and (length != 5 or len(data) < 6 or data[5] not in READY_STATUSES):
                return Confidence.NO
            if t in (B_PARSE_COMPLETE, B_BIND_COMPLETE) and length != 4:
                return Confidence.NO
            return Confidence.MAYBE
        return Confidence.NO

    # ---- feeding ---------------------------------------------------------------------------

    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        """Cut the chunk into messages and hand each to its handler; queue the ops of requests.

        The cutting and the queueing are written here, in the one loop both sides share, so
        that a message costs one call, its handler's (see the requests section).
        """
        if data.__class__ is not bytes:
            data = bytes(data)  # a memoryview or bytearray from the caller
        stream = self._req_stream if side is _REQUEST else self._resp_stream
        pos = 0
        fresh_at = 0  # where the chunk begins among the bytes cut, when some were held before it
        msg_ts = ts_ns  # when the message's first byte came: only the chunk's first may have been held
        if stream.skip or stream.buf or stream.startup:
            begun = stream.begin(data, ts_ns, self)
            data, pos, msg_ts = begun if begun is not None else (b"", 0, ts_ns)
            fresh_at = stream.fresh_at
        total = len(data)
        last = total - HEADER  # where the last header that fits starts
        ops = self._ops
        # read once per chunk: a login table may outlive the login by the rest of the chunk that
        # ended it, so its handlers pass on what comes after (see _on_login_request, _during_login)
        handlers = stream.handlers
        lost = False
        while True:  # once, unless a lost boundary sends the cutting on from further in the chunk
            try:
                while pos <= last:
                    t, length = read_header(data, pos)
                    end = pos + 1 + length
                    if end > total or length < 4:
                        end = stream.cut_short(data, pos, msg_ts, t, length, fresh_at)
                        if end <= 0:
                            if end < 0:
                                lost = True
                                pos = stream.resume_at
                                msg_ts = ts_ns
                                continue
                            break
                        total = end  # the head of a message over the cap: nothing after it is cut
                        last = -1
                    op = handlers[t](self, data, pos + HEADER, end, ts_ns)
                    if op is not None:
                        # the message joins the request being assembled, or starts one when nothing is
                        # outstanding (asyncpg, for one, prepares in a round trip of its own before
                        # Bind/Execute, which must not count as latency)
                        group_ts = self._group_ts
                        if group_ts is None or not ops:
                            group_ts = self._group_ts = msg_ts
                        if op[TS] is None:
                            op[TS] = group_ts  # an op of its own takes the request's time
                        kind = op[KIND]
                        if kind != OP_JOIN:
                            if self._skip_until_sync:  # the server ignores it: an Execute fails unanswered
                                if kind == OP_EXECUTE:
                                    self._out.append(self._record(op, ts_ns, None, "ERR", SKIPPED, None, None))
                            else:
                                ops.append(op)
                            if kind > OP_JOIN:
                                self._group_ts = None  # the request ends here
                    msg_ts = ts_ns
                    pos = end
                else:
                    if pos < total:
                        stream.keep(data, pos, msg_ts, HEADER)
                break
            except LostBoundary:  # a type byte that cannot appear
                lost = True
                pos = stream.bogus(data, pos, fresh_at)
                msg_ts = ts_ns
        if side is _REQUEST:
            if len(ops) > self._max_pending:
                self._give_up_oldest(ts_ns)
        elif lost:
            self._lost_response()
        out, self._out = self._out, []  # never hand out the list we keep appending to
        return out

    def _lost_response(self) -> None:
        # the head request is all its ops up to the one that ends it
        while self._ops:
            op = self._ops.popleft()
            if op[KIND] in (OP_SYNC, OP_QUERY, OP_EXECUTE, OP_CALL):
                break

    def _reset(self, side: Side) -> None:
        stream = self._streams[side]
        stream.reset()
        if side is Side.REQUEST:
            self._group_ts = None

    def expire(self, now_ns: int) -> list[Record]:
        limit = now_ns - self.config.request_timeout_ns
        out: list[Record] = []
        ops = self._ops
        while ops:
            # shared ops carry no time: the oldest op that has one decides
            i = next((k for k, op in enumerate(ops) if op[TS] >= 0), None)
            if i is None or ops[i][TS] >= limit:
                break
            for _ in range(i + 1):
                self._evict(ops.popleft(), now_ns, out)
        return out

    def close(self, ts_ns: int) -> list[Record]:
        out = self._out
        self._out = []
        while self._ops:
            self._evict(self._ops.popleft(), ts_ns, out)
        return out

    def _give_up_oldest(self, ts_ns: int) -> None:
        """More requests wait than ``max_pending``: the oldest are recorded unanswered. Checked once per
        request chunk, not per message: the same ones go, in the same order, as if checked per message."""
        ops = self._ops
        while len(ops) > self._max_pending:
            self._evict(ops.popleft(), ts_ns, self._out)

    def _evict(self, op: Op, ts_ns: int, out: list[Record]) -> None:
        if op[KIND] in (OP_QUERY, OP_EXECUTE, OP_CALL):
            self.stats.evicted += 1
            out.append(self._record(op, ts_ns, None, None, None, None, None))

    def _record(
        self,
        op: Op,
        end: int,
        latency: int | None,
        status: str | None,
        body: str | None,
        code: str | None,
        rows: int | None,
    ) -> Record:
        """The record of ``op``: its SQL, an Execute's with the values it was bound to in place."""
        portal = op[PORTAL]
        if portal is None or op[KIND] != OP_EXECUTE:
            sql = op[SQL]
        else:
            stmt, formats, values = portal
            tpl = stmt.template
            if tpl is None:
                tpl = stmt.template = self._templates[stmt.sql]
            if len(tpl.parts) == 1:
                sql = stmt.sql
            else:
                n = len(values)
                # a statement is executed with the same types and formats over and over, and
                # clients prepare the same SQL again and again (a new Statement, equal types): the
                # renderers of the last Execute are kept on the template, those of every (types,
                # formats) on the parser
                last = tpl.renderers
                if last is not None and last[2] == n and last[0] == stmt.oids and last[1] == formats:
                    renderers = last[3]
                else:
                    renderers = self._renderers[stmt.oids, formats, n]
                    tpl.renderers = (stmt.oids, formats, n, renderers)
                if None in values:
                    rendered = tuple(
                        [r(raw) if raw is not None else "NULL" for r, raw in zip(renderers, values, strict=True)]
                    )
                else:
                    rendered = tuple(map(call, renderers, values))  # one C loop, no frame per value
                sql = tpl.fmt % rendered if n == tpl.count else tpl.fill(rendered)
        return sql_record(TABLE, end, latency, OP_NAMES[op[KIND]], sql[: self._max_body], status, body, code, rows)

    # ---- requests ----------------------------------------------------------------------------
    # _feed calls handler(parser, chunk, payload start, payload end, now) and queues the
    # op the handler returns, after joining its message to the request being assembled; _JOIN:
    # the message joins it yet awaits no answer (nothing answers it, or it could not be read);
    # None: neither (not part of a request, or the end of one that could not be read).

    def _on_startup(self, p: bytes, ts: int, now: int) -> None:
        if len(p) >= 4 and int.from_bytes(p[:4], "big") == PROTOCOL_3_0:
            # a new session: user, database and options are in here, nothing we record
            self._set_conn(C_AUTH)
            self._ops.clear()
            self._stmts.clear()
            self._portals.clear()

    def _ignore(self, data: bytes, start: int, end: int, now: int) -> None:
        """PasswordMessage / SASL (never read), and responses that answer no request."""

    def _on_login_request(self, data: bytes, start: int, end: int, now: int) -> Op | None:
        """Anything but a password while logging in: clients send nothing else until ReadyForQuery."""
        self._set_conn(C_READY)
        return _REQUEST_HANDLERS[data[start - HEADER]](self, data, start, end, now)

    def _on_unanswered(self, data: bytes, start: int, end: int, now: int) -> Op:
        """Flush, CopyData/Done/Fail: nothing answers them, yet they are client activity."""
        return _JOIN

    def _on_terminate(self, data: bytes, start: int, end: int, now: int) -> None:
        self._group_ts = None

    def _on_execute(self, data: bytes, start: int, end: int, now: int) -> Op | None:
        # partition, not index: index's argument parsing costs more than the rest of an Execute
        name, nul, _ = data[start:end].partition(b"\0")
        if not nul:
            self._group_ts = None
            self.stats.parse_errors += 1
            return None
        portal = self._portals.get(name)
        if portal is None:
            name = name.decode("utf-8", "replace")
            return new_op(OP_EXECUTE, f"<portal {name!r} bound before capture>")
        op = _EXECUTE.copy()  # a list copy costs less than a call of new_op
        op[PORTAL] = portal
        return op

    def _on_bind(self, data: bytes, start: int, end: int, now: int) -> Op:
        try:
            portal_name, stmt_name, formats, values = parse_bind(data[start:end])
        except (ProtocolError, ValueError, IndexError, struct.error):
            self.stats.parse_errors += 1
            return _JOIN
        stmt = self._stmts.get(stmt_name)
        if stmt is None:
            stmt = Statement(f"<statement {stmt_name.decode('utf-8', 'replace')!r} prepared before capture>")
        portals = self._portals
        if len(portals) >= MAX_NAMED and portal_name not in portals:
            portals.pop(next(iter(portals)))
        mb = self._max_body
        if end - start > mb:  # keep no more of each value than a record can show
            values = [v if v is None or len(v) <= mb else v[:mb] for v in values]
        portals[portal_name] = (stmt, formats, values)
        return _BIND

    def _on_sync(self, data: bytes, start: int, end: int, now: int) -> Op:
        self._skip_until_sync = False  # the server answers again from here
        return _SYNC

    def _on_describe(self, data: bytes, start: int, end: int, now: int) -> Op:
        if start == end:
            self.stats.parse_errors += 1
            return _JOIN
        if data[start] == TARGET_STATEMENT:  # its ParameterDescription will tell the parameter types
            name, nul, _ = data[start + 1 : end].partition(b"\0")  # see _on_execute
            if not nul:
                self.stats.parse_errors += 1
                return _JOIN
            return new_op(OP_DESCRIBE, "", None, name)
        return _DESCRIBE_PORTAL

    def _on_parse(self, data: bytes, start: int, end: int, now: int) -> Op:
        try:
            name, sql, oids = self._parses[data[start:end]]
        except (ProtocolError, ValueError, IndexError, struct.error):
            self.stats.parse_errors += 1
            return _JOIN
        stmts = self._stmts
        if len(stmts) >= MAX_NAMED and name not in stmts:
            stmts.pop(next(iter(stmts)))
        # '$10' may become '1': keep more SQL than a record shows, but not all of a huge one
        stmts[name] = Statement(sql[: 4 * self._max_body], oids)
        return new_op(OP_PARSE, sql)

    def _on_close(self, data: bytes, start: int, end: int, now: int) -> Op:
        p = data[start:end]
        try:
            name, _ = cstr(p, 1)
        except ValueError:
            self.stats.parse_errors += 1
            return _JOIN
        (self._stmts if p[0] == TARGET_STATEMENT else self._portals).pop(name, None)
        return _CLOSE

    def _on_query(self, data: bytes, start: int, end: int, now: int) -> Op:
        sql = data[start:end][: self._max_body].rstrip(b"\0").decode("utf-8", "replace")
        return new_op(OP_QUERY, sql)

    def _on_function_call(self, data: bytes, start: int, end: int, now: int) -> Op:
        return new_op(OP_CALL, f"function oid {int.from_bytes(data[start:end][:4], 'big')}")

    # ---- responses -------------------------------------------------------------------------
    # One handler per message type (see _RESPONSE_HANDLERS); those answering a request first
    # check that one is pending.

    def _on_auth_response(self, data: bytes, start: int, end: int, now: int) -> None:
        """Query results while logging in: the ReadyForQuery that ended the login was lost."""
        self._set_conn(C_READY)
        _RESPONSE_HANDLERS[data[start - HEADER]](self, data, start, end, now)

    def _during_login(self, data: bytes, start: int, end: int, now: int) -> None:
        """Anything else while logging in: nothing to record, but the ReadyForQuery that ends it."""
        if self._conn == C_READY:  # after the end of the login, in the chunk that ended it
            _RESPONSE_HANDLERS[data[start - HEADER]](self, data, start, end, now)
        elif data[start - HEADER] == B_READY:
            self._set_conn(C_READY)

    def _on_data_row(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if ops:
            ops[0][ROWS] += 1

    def _on_copy_data(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if ops:  # CopyData of a COPY ... TO STDOUT: one per row
            op = ops[0]
            op[ROWS] += 1
            op[RETURNS_ROWS] = True

    def _on_complete(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
            return
        op = ops[0]
        kind = op[KIND]
        tag, row_tag = self._tags[data[start:end]]
        if kind == OP_EXECUTE:
            ops.popleft()
            rows = op[ROWS]
            if not rows and not op[RETURNS_ROWS] and not row_tag:
                rows = None
            self._out.append(self._record(op, now, now - op[TS], "OK", tag, None, rows))
        elif kind == OP_QUERY:
            if op[TAGS] is None:
                op[TAGS] = [tag]
            else:
                op[TAGS].append(tag)
        else:
            self._mismatch()

    def _on_ready(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if ops:  # a ReadyForQuery with nothing pending is the idle server's: not a mismatch
            if ops[0][KIND] == OP_SYNC:
                ops.popleft()
            else:
                self._ready(now)

    def _on_row_description(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == OP_DESCRIBE:
            ops.popleft()
        else:
            ops[0][RETURNS_ROWS] = True

    def _on_no_data(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == OP_DESCRIBE:
            ops.popleft()

    def _on_param_description(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
            return
        op = ops[0]
        if op[KIND] == OP_DESCRIBE and op[NAME] is not None and end - start >= 2:
            stmt = self._stmts.get(op[NAME])
            n = data[start] << 8 | data[start + 1]
            if stmt is not None and end - start >= 2 + 4 * n:
                stmt.oids = UINT32_ARRAY[n](data, start + 2)

    def _on_error(self, data: bytes, start: int, end: int, now: int) -> None:
        if not self._ops:
            self.stats.unmatched_responses += 1
        else:
            self._error(data[start:end], now)

    def _on_empty(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == OP_EXECUTE:
            self._finish(ops[0], now, "OK", "")

    def _on_suspended(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == OP_EXECUTE:
            op = ops[0]
            op[TAGS] = ["suspended"]
            self._finish(op, now, "OK", "suspended")

    def _on_function_result(self, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == OP_CALL:
            ops[0][TAGS] = ["function result"]

    def _mismatch(self) -> None:
        self.stats.parse_errors += 1

    def _finish(self, op: Op, now: int, status: str, body: str, code: str | None = None) -> None:
        self._ops.popleft()
        self._out.append(self._record(op, now, now - op[TS], status, body, code, _rows_summary(op)))

    def _ready(self, now: int) -> None:
        ops = self._ops
        while ops:
            op = ops.popleft()
            kind = op[KIND]
            if kind == OP_SYNC:
                return
            if kind == OP_QUERY or kind == OP_CALL:
                if op[ERROR] is not None:
                    code, msg = op[ERROR]
                    self._out.append(self._record(op, now, now - op[TS], "ERR", msg, code, _rows_summary(op)))
                else:
                    self._out.append(
                        self._record(
                            op, now, now - op[TS], "OK", "; ".join(op[TAGS] or ()), None, _rows_summary(op)
                        )
                    )
                return
            if kind == OP_EXECUTE:
                self._out.append(self._record(op, now, None, "ERR", SKIPPED, None, None))

    def _error(self, p: bytes, now: int) -> None:
        sev, code, msg = parse_error(p)
        text = f"{sev}: {msg}" if sev else msg
        text = text[: self._max_body]
        ops = self._ops
        op = ops[0]
        if op[KIND] in (OP_QUERY, OP_CALL):
            if op[ERROR] is None:
                op[ERROR] = (code, text)
            return
        if op[KIND] == OP_SYNC:
            self.stats.unmatched_responses += 1
            return
        ops.popleft()
        carrier = op if op[KIND] == OP_EXECUTE else None
        if carrier is None:
            for other in ops:
                if other[KIND] == OP_SYNC:
                    break
                if other[KIND] == OP_EXECUTE:
                    carrier = other
                    break
        if carrier is None:
            self._out.append(
                self._record(op, now, now - op[TS] if op[TS] >= 0 else None, "ERR", text, code, None)
            )
        else:
            if carrier is not op:
                ops.remove(carrier)
            self._out.append(
                self._record(
                    carrier, now, now - carrier[TS], "ERR", text, code, carrier[ROWS] if carrier[ROWS] else None
                )
            )
        # the server now ignores everything up to the next Sync
        while ops and ops[0][KIND] != OP_SYNC:
            skipped = ops.popleft()
            if skipped[KIND] == OP_EXECUTE:
                self._out.append(self._record(skipped, now, None, "ERR", SKIPPED, None, None))
        if not ops:
            self._skip_until_sync = True


_REQUEST = Side.REQUEST  # an Enum member is a slow attribute lookup: once per chunk adds up


def _answers(kind: int) -> Handler:
    """The handler of a message that only answers the head op, which should be of ``kind``
    (ParseComplete, BindComplete, CloseComplete): pop it, or realign on the next op of that kind."""

    def handler(self: PgSQLParser, data: bytes, start: int, end: int, now: int) -> None:
        ops = self._ops
        if not ops:
            self.stats.unmatched_responses += 1
        elif ops[0][KIND] == kind:
            ops.popleft()
        else:
            self._mismatch()
            for i, op in enumerate(ops):
                if op[KIND] == kind:
                    for _ in range(i + 1):
                        self._evict(ops.popleft(), now, self._out)
                    return

    return handler

# Handlers by type byte. The framer takes a type without one for a lost boundary, so each
# table covers exactly FRONTEND_TYPES or BACKEND_TYPES.
P = PgSQLParser
_REQUEST_HANDLERS = handler_table(
    {t: P._on_unanswered for t in FRONTEND_TYPES}
    | {
        F_EXECUTE: P._on_execute,
        F_BIND: P._on_bind,
        F_SYNC: P._on_sync,
        F_DESCRIBE: P._on_describe,
        F_PARSE: P._on_parse,
        F_QUERY: P._on_query,
        F_CLOSE: P._on_close,
        F_FUNCTION_CALL: P._on_function_call,
        F_TERMINATE: P._on_terminate,
        F_PASSWORD: P._ignore,
    }
)
# Logging in: the first message that is not a password ends it.
_REQUEST_AUTH_HANDLERS = handler_table(
    {t: P._on_login_request for t in FRONTEND_TYPES} | {F_PASSWORD: P._ignore}
)
_RESPONSE_HANDLERS = handler_table(
    {t: P._ignore for t in BACKEND_TYPES}  # NoticeResponse, ParameterStatus ...: informational
    | {
        B_DATA_ROW: P._on_data_row,
        B_COPY_DATA: P._on_copy_data,
        B_COMPLETE: P._on_complete,
        B_READY: P._on_ready,
        B_BIND_COMPLETE: _answers(OP_BIND),
        B_PARSE_COMPLETE: _answers(OP_PARSE),
        B_CLOSE_COMPLETE: _answers(OP_CLOSE),
        B_ROW_DESC: P._on_row_description,
        B_NO_DATA: P._on_no_data,
        B_PARAM_DESC: P._on_param_description,
        B_ERROR: P._on_error,
        B_EMPTY: P._on_empty,
        B_SUSPENDED: P._on_suspended,
        B_FUNCTION_RESULT: P._on_function_result,
    }
)
# Logging in: only query results (the login's ReadyForQuery was lost) or ReadyForQuery end it.
_RESPONSE_AUTH_HANDLERS = handler_table(
    {t: P._during_login for t in BACKEND_TYPES} | {t: P._on_auth_response for t in QUERY_RESULTS}
)
del P
