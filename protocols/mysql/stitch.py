"""MySQL packets to ``mysql_events`` records: one record per command.

The protocol is strictly request/response on a connection, so requests wait in a FIFO
and the response side walks a small state machine over the head request's reply.

Login and authentication are never recorded: the HandshakeResponse41 carries the user
name and auth data, and the exchange that follows (AuthSwitchRequest, more-data,
COM_CHANGE_USER) is skipped packet by packet until the server's OK or ERR. Only the
capability flags are read from the login packet.

Records with ``resp_status`` NULL are requests whose response never came (evicted,
expired, or pending at close); 'NONE' is for commands the server never answers.
"""

from __future__ import annotations

import struct
from collections import deque

from ..common import (
    Confidence,
    ParserCaches,
    ParserConfig,
    ProtocolError,
    Record,
    Side,
)
from ..sql_common import SqlParser, sql_record
from .parse import (
    SQL_HEAD,
    PacketStream,
    decode_params,
    eof_status,
    lenenc,
    login_caps,
    parse_err,
    parse_ok,
    substitute,
)
from .types import (
    CLIENT_COMPRESS,
    CLIENT_DEPRECATE_EOF,
    CLIENT_SSL,
    COM_CHANGE_USER,
    COM_FIELD_LIST,
    COM_QUERY,
    COM_STATISTICS,
    COM_STMT_CLOSE,
    COM_STMT_EXECUTE,
    COM_STMT_FETCH,
    COM_STMT_PREPARE,
    COMMANDS,
    EOF,
    EOF_LENGTH,
    EOF_MAX,
    ERR,
    HANDSHAKE_V10,
    LOCAL_INFILE,
    LOGIN_FIXED,
    MAX_PACKET,
    NO_RESPONSE,
    OK,
    OK_MIN,
    PACKET_HEADER,
    PREPARE_OK_LENGTH,
    PROGRESS_REPORT,
    SEQ_MASK,
    SERVER_MORE_RESULTS_EXISTS,
    SERVER_STATUS_CURSOR_EXISTS,
    STATEMENT_ID_BODY,
    TABLE,
    TEXT_BODY,
    Request,
    Response,
    Statement,
)

# Response phases.
P_FIRST = 0  # waiting for the first packet: OK, ERR, column count, prepare OK, ...
P_COLS = 1  # reading column definitions
P_COLS_EOF = 2  # expecting the EOF after the column definitions
P_ROWS = 3  # reading rows until EOF/OK/ERR
P_PREP_DEFS = 4  # reading parameter then column definitions of a prepare OK
P_UNTIL_EOF = 5  # COM_FIELD_LIST and similar: anything until EOF or ERR

# Connection phases.
C_UNKNOWN = 0  # attached mid-connection or nothing seen yet
C_AUTH = 1  # between the login packet and the server's final OK/ERR
C_COMMAND = 2

MAX_STATEMENTS = 4096  # prepared statements remembered per connection
MAX_LOGIN = 4096  # a HandshakeResponse41 is a user name, auth data and attributes: never longer than this
_GREETING = bytes([HANDSHAKE_V10])
_PROGRESS_REPORT = PROGRESS_REPORT.to_bytes(2, "little")
# How the SQL of a COM_QUERY or COM_STMT_PREPARE may start: printable ASCII or white space.
_TEXT_START = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\r\n")


def _sql_start_ok(p: bytes, i: int) -> bool:
    """Can the SQL of a COM_QUERY or COM_STMT_PREPARE start at ``p[i]``? Text starts with printable
    ASCII or white space, and has no NUL in its first bytes, where the header of a packet has two."""
    return (i >= len(p) or p[i] in _TEXT_START) and p.find(b"\0", i, i + SQL_HEAD) < 0


def _summary(r: Response) -> str:
    """'3 rows', '1 row affected', or both for multi-statement queries and procedure calls."""
    parts = []
    if r.result_sets:
        parts.append("1 row" if r.rows == 1 else f"{r.rows} rows")
    if r.affected or not r.result_sets:
        parts.append("1 row affected" if r.affected == 1 else f"{r.affected} rows affected")
    return "; ".join(parts)


class MySQLParser(SqlParser):
    name = "mysql"
    table = TABLE
    __slots__ = ("_streams", "_pending", "_resp", "_stmts", "_conn", "_deprecate_eof", "_req_continued", "_compressed")

    def __init__(self, config: ParserConfig | None = None, caches: ParserCaches | None = None) -> None:
        super().__init__(config)  # nothing MySQL parses repeats across connections: no caches
        cap = self.config.max_buffer
        self._streams = {
            Side.REQUEST: PacketStream(cap, self.stats, MySQLParser._request_head_ok, commands=True),
            Side.RESPONSE: PacketStream(cap, self.stats, MySQLParser._response_head_ok),
        }
        self._pending: deque[Request] = deque()
        self._resp = Response()
        self._stmts: dict[int, Statement] = {}
        self._conn = C_UNKNOWN
        self._deprecate_eof: bool | None = None  # None: not known yet, inferred from the first result set
        self._req_continued = False
        self._compressed = False  # CLIENT_COMPRESS: packets are zlib frames we do not open

    # ---- detection -------------------------------------------------------------------------

    @classmethod
    def detect(cls, side: Side, data: bytes) -> Confidence:
        if len(data) < 5:
            return Confidence.NO
        length = data[0] | data[1] << 8 | data[2] << 16
        seq = data[3]
        if side is Side.REQUEST:
            if seq in (1, 2) and LOGIN_FIXED <= length <= 4096 and len(data) >= PACKET_HEADER + LOGIN_FIXED:
                caps = login_caps(data[PACKET_HEADER : PACKET_HEADER + LOGIN_FIXED])
                if caps is not None and not caps & CLIENT_SSL and length + PACKET_HEADER >= len(data):
                    return Confidence.YES
                if caps is not None and seq == 1 and length == LOGIN_FIXED and caps & CLIENT_SSL:
                    return Confidence.YES  # SSLRequest seen in plaintext
            if seq == 0 and 1 <= length < MAX_PACKET and data[4] in COMMANDS:
                if data[4] in (COM_QUERY, COM_STMT_PREPARE):
                    # SQL text follows; the chunk may stop short of the packet's end
                    if len(data) == 5 or data[5] in _TEXT_START:
                        return Confidence.MAYBE
                elif length + PACKET_HEADER == len(data):
                    return Confidence.MAYBE
            return Confidence.NO
        if seq == 0 and data[4] == HANDSHAKE_V10 and length + PACKET_HEADER == len(data) and b"\0" in data[5:70]:
            return Confidence.MAYBE  # server greeting (plaintext, before TLS)
        if seq in (1, 2, 3, 4) and data[4] in (OK, ERR, EOF) and length + PACKET_HEADER == len(data):
            return Confidence.MAYBE
        return Confidence.NO

    # ---- feeding ---------------------------------------------------------------------------

    def _feed(self, side: Side, data: bytes, ts_ns: int) -> list[Record]:
        if self._compressed:
            self.stats.dropped_bytes += len(data)
            return []
        if data.__class__ is not bytes:
            data = bytes(data)  # a memoryview or bytearray from the caller
        self._streams[side].feed(data, ts_ns, self._on_request if side is Side.REQUEST else self._on_response)
        out, self._out = self._out, []  # never hand out the list we keep appending to
        return out

    def _lost_response(self) -> None:
        if self._pending:
            self._pending.popleft()

    def _reset(self, side: Side) -> None:
        self._streams[side].reset()
        if side is Side.RESPONSE:
            self._resp = Response()
        else:
            self._req_continued = False

    def expire(self, now_ns: int) -> list[Record]:
        limit = now_ns - self.config.request_timeout_ns
        out = []
        while self._pending and self._pending[0].ts < limit:
            out.append(self._unanswered(self._pending.popleft(), now_ns))
            self._resp = Response()
        return out

    def close(self, ts_ns: int) -> list[Record]:
        out = self._out
        self._out = []
        while self._pending:
            out.append(self._unanswered(self._pending.popleft(), ts_ns))
        self._resp = Response()
        return out

    def _unanswered(self, req: Request, ts_ns: int) -> Record:
        self.stats.evicted += 1
        return self._record(req, ts_ns, None, None, None, None, None)

    def _record(
        self,
        req: Request,
        end_ts: int,
        latency: int | None,
        status: str | None,
        body: str | None,
        code: int | None,
        rows: int | None,
    ) -> Record:
        cmd = COMMANDS.get(req.cmd, f"COM_{req.cmd:#04x}")
        return sql_record(TABLE, end_ts, latency, cmd, req.body, status, body, code, rows)

    # ---- packets that reach past the bytes at hand (PacketStream.check) ---------------------
    # A packet header says how long the packet is, up to 16 MiB. Before waiting for (or skipping)
    # that much, its start must look like what this side sends now; else the header is bogus and
    # the connection's later packets must not vanish behind it.

    def _request_head_ok(self, data: bytes, pos: int) -> bool | None:
        if self._req_continued or self._conn == C_AUTH:
            return True  # the tail of a 16 MiB command, auth data: judged whole
        avail = len(data) - pos - PACKET_HEADER
        seq = data[pos + 3]
        if seq != 0:
            if self._conn == C_COMMAND and self._pending:
                return True  # LOCAL INFILE contents
            # else only a login (sequence id 1 or 2) may: it is short
            length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
            return seq <= 2 and LOGIN_FIXED <= length <= MAX_LOGIN
        if avail < 1:
            return None
        cmd = data[pos + PACKET_HEADER]
        if cmd not in COMMANDS:
            return False
        if cmd == COM_QUERY or cmd == COM_STMT_PREPARE:
            if avail < 1 + SQL_HEAD:
                return None
            return _sql_start_ok(data, pos + PACKET_HEADER + 1)
        return True

    def _response_head_ok(self, data: bytes, pos: int) -> bool:
        r = self._resp
        if r.continued or self._conn != C_COMMAND or not self._pending or r.seq < 0:
            return True
        seq = data[pos + 3]
        if seq == r.seq or (r.phase == P_FIRST and seq == 1):
            return True
        # as _invalid does for a whole packet: the head request's response is lost track of
        if r.phase != P_FIRST:
            self._pending.popleft()
        self._resp = Response()
        return False

    # ---- requests --------------------------------------------------------------------------

    def _on_request(self, seq: int, p: bytes, ts: int, now: int, length: int) -> None:
        if self._req_continued:  # tail of a 16 MiB command: nothing more we want from it
            self._req_continued = length == MAX_PACKET
            if len(self._pending) == 1 and self._resp.phase == P_FIRST:
                self._resp.seq = (seq + 1) & SEQ_MASK  # the answer numbers on from the command's last packet
            return
        self._req_continued = length == MAX_PACKET
        if self._conn == C_AUTH:
            if seq != 0:
                return  # auth data: never looked at
            self._conn = C_COMMAND  # a command: the server's final OK must have been lost
        if seq != 0:
            if self._conn == C_COMMAND and self._pending:
                return  # LOCAL INFILE contents
            caps = login_caps(p) if seq in (1, 2) else None
            if caps is not None:
                self._login(caps)
                return
            self._invalid(Side.REQUEST)
            return
        if not p:
            self._invalid(Side.REQUEST)
            return
        cmd = p[0]
        if cmd not in COMMANDS:
            self._invalid(Side.REQUEST)
            return
        self._conn = C_COMMAND
        if cmd == COM_CHANGE_USER:
            self._conn = C_AUTH  # carries credentials and starts a new authentication
            self._pending.clear()
            self._resp = Response()
            return
        mb = self.config.max_body
        if cmd in TEXT_BODY:
            # (a whole packet's SQL is not checked as a longer one's start is: it hides nothing
            # behind it, and the check would cost every query ~3%)
            body = p[1 : 1 + mb].decode("utf-8", "replace")
        elif cmd == COM_STMT_EXECUTE:
            if len(p) < 10:
                self._invalid(Side.REQUEST)
                return
            body = self._execute_body(p)
        elif cmd in STATEMENT_ID_BODY and len(p) >= 5:
            stmt_id = int.from_bytes(p[1:5], "little")
            st = self._stmts.get(stmt_id)
            body = st.sql[:mb] if st else f"stmt_id={stmt_id}"
            if cmd == COM_STMT_CLOSE:
                self._stmts.pop(stmt_id, None)
        elif cmd == COM_FIELD_LIST:
            body = p[1:].split(b"\0", 1)[0][:mb].decode("utf-8", "replace")
        else:
            body = ""
        req = Request(cmd, ts, body)
        if cmd in NO_RESPONSE:
            self._out.append(self._record(req, now, None, "NONE", None, None, None))
            return
        if cmd == COM_STMT_PREPARE:
            # values only ever lengthen the text around them ('?' becomes at least one character),
            # so the first max_body characters of the SQL are all a shown execute can need
            req.prepare_sql = p[1 : 1 + self.config.max_body].decode("utf-8", "replace")
        if len(self._pending) >= self.config.max_pending:
            self._out.append(self._unanswered(self._pending.popleft(), now))
        self._pending.append(req)

    def _login(self, caps: int) -> None:
        if caps & CLIENT_COMPRESS:
            # everything after the login is compressed: say so once, then count the bytes
            self._compressed = True
            self.stats.parse_errors += 1
            self._streams[Side.REQUEST].resync = True
        self._pending.clear()
        self._resp = Response()
        self._stmts.clear()
        self._deprecate_eof = bool(caps & CLIENT_DEPRECATE_EOF)
        self._conn = C_AUTH

    def _execute_body(self, p: bytes) -> str:
        stmt_id = int.from_bytes(p[1:5], "little")
        st = self._stmts.get(stmt_id)
        if st is None:
            return f"stmt_id={stmt_id}"  # prepared before we attached
        if st.nparams == 0:
            return st.sql[: self.config.max_body]
        try:
            values, types = decode_params(p, 10, st.nparams, st.types)
        except (ProtocolError, IndexError, ValueError, OverflowError, struct.error):
            self.stats.parse_errors += 1
            return st.sql[: self.config.max_body]
        if types is not None:
            st.types = types
        mb = self.config.max_body
        return substitute(st.sql, [v[:mb] for v in values])[:mb]

    def _invalid(self, side: Side) -> None:
        self.stats.parse_errors += 1
        self._streams[side].resync = True
        if side is Side.RESPONSE:
            if self._pending and self._resp.phase != P_FIRST:
                self._pending.popleft()  # we lost track of its response
            self._resp = Response()

    # ---- responses -------------------------------------------------------------------------

    def _on_response(self, seq: int, p: bytes, ts: int, now: int, length: int) -> None:
        r = self._resp
        if r.continued:
            r.continued = length == MAX_PACKET
            r.seq = (seq + 1) & SEQ_MASK
            return
        r.continued = length == MAX_PACKET
        if self._conn != C_COMMAND:
            self._auth_response(seq, p)
            return
        if not self._pending:
            if seq == 0 and p[:1] == _GREETING:
                return  # server greeting of a connection whose login we will see next
            self.stats.unmatched_responses += seq == 1
            self.stats.dropped_bytes += 4 + len(p)
            return
        if seq != r.seq and r.seq >= 0:
            if r.phase == P_FIRST and seq == 1:
                pass  # a fresh response: the head request's must have been lost
            else:
                self._invalid(Side.RESPONSE)
                return
        r.seq = (seq + 1) & SEQ_MASK
        if not p:
            self._invalid(Side.RESPONSE)
            return
        try:
            self._response_packet(r, p, now)
        except (ProtocolError, IndexError):
            self._invalid(Side.RESPONSE)

    def _auth_response(self, seq: int, p: bytes) -> None:
        if seq == 0:
            return  # server greeting (plaintext, or a recording without TLS)
        head = p[0] if p else None
        if head == OK or head == ERR:
            if self._conn == C_AUTH or head == OK:
                self._conn = C_COMMAND
            # AuthSwitchRequest (0xfe) and AuthMoreData (0x01): the client answers, we skip both

    def _response_packet(self, r: Response, p: bytes, now: int) -> None:
        req = self._pending[0]
        head = p[0]
        if head == ERR and p[1:3] == _PROGRESS_REPORT:
            return  # MariaDB progress report (an ERR with code 0xffff): the command goes on
        phase = r.phase
        if phase == P_ROWS:
            if head == EOF and len(p) < EOF_MAX:
                self._end_result_set(r, req, p, now)
            elif head == ERR:
                self._finish_err(req, p, now, r.rows if r.result_sets or r.rows else None)
            else:
                r.rows += 1
            return
        if phase == P_FIRST:
            if head == ERR:
                self._finish_err(req, p, now, None)
                return
            if req.cmd == COM_STMT_PREPARE:
                if head != OK or len(p) < PREPARE_OK_LENGTH:
                    raise ProtocolError("bad prepare response")
                r.stmt_id = int.from_bytes(p[1:5], "little")
                r.stmt_cols = p[5] | p[6] << 8
                r.stmt_params = p[7] | p[8] << 8
                r.remaining = r.stmt_params + r.stmt_cols
                r.phase = P_PREP_DEFS
                # definitions come as params [EOF] columns [EOF]; EOFs only without DEPRECATE_EOF
                if r.remaining == 0:
                    self._finish_prepare(r, req, now)
                return
            if req.cmd in (COM_FIELD_LIST, COM_STMT_FETCH):
                r.phase = P_UNTIL_EOF
                self._response_packet(r, p, now)
                return
            if head == OK and len(p) >= OK_MIN:
                affected, status = parse_ok(p)
                r.affected += affected
                if status & SERVER_MORE_RESULTS_EXISTS:
                    r.result_sets += 1
                    return
                self._finish_ok(r, req, now)
                return
            if req.cmd == COM_STATISTICS:
                self._finish(req, now, "OK", p[: self.config.max_body].decode("utf-8", "replace"), None, None)
                return
            if head == LOCAL_INFILE:
                # LOCAL INFILE request: the client sends the file in packets that advance the
                # sequence ids, then the server says OK with whatever id comes next
                r.seq = -1
                return
            ncols, _ = lenenc(p, 0)
            if ncols == 0:
                raise ProtocolError("result set with no columns")
            r.remaining = ncols
            r.phase = P_COLS
            return
        if phase == P_COLS:
            r.remaining -= 1
            if r.remaining == 0:
                r.phase = P_ROWS if self._deprecate_eof else P_COLS_EOF
            return
        if phase == P_COLS_EOF:
            if head == EOF and len(p) == EOF_LENGTH:
                self._deprecate_eof = False
                if eof_status(p) & SERVER_STATUS_CURSOR_EXISTS and req.cmd == COM_STMT_EXECUTE:
                    # a cursor was opened: rows come later, to COM_STMT_FETCH
                    self._finish(req, now, "OK", "cursor opened", None, 0)
                    return
                r.phase = P_ROWS
                return
            if self._deprecate_eof is None:
                # no EOF after the columns: the client asked for CLIENT_DEPRECATE_EOF
                self._deprecate_eof = True
                r.phase = P_ROWS
                self._response_packet(r, p, now)
                return
            raise ProtocolError("expected EOF after column definitions")
        if phase == P_PREP_DEFS:
            if head == EOF and len(p) == EOF_LENGTH:
                self._deprecate_eof = False
                if r.remaining == 0 or r.remaining == r.stmt_cols:
                    if r.remaining == 0:
                        self._finish_prepare(r, req, now)
                    return
                raise ProtocolError("unexpected EOF in prepare response")
            if r.remaining == 0:
                raise ProtocolError("extra packet in prepare response")
            r.remaining -= 1
            if r.remaining == 0 and (self._deprecate_eof or r.stmt_cols == 0 and self._deprecate_eof is None):
                # With DEPRECATE_EOF unknown and no columns, a trailing EOF may still come: it
                # then arrives while no request waits and is counted as unmatched, harmlessly.
                self._finish_prepare(r, req, now)
            return
        if phase == P_UNTIL_EOF:
            if head == ERR:
                self._finish_err(req, p, now, None)
            elif head == EOF and len(p) < EOF_MAX:
                self._finish(req, now, "OK", f"{r.rows} rows" if r.rows != 1 else "1 row", None, r.rows)
            else:
                r.rows += 1
            return

    def _end_result_set(self, r: Response, req: Request, p: bytes, now: int) -> None:
        status = eof_status(p) if len(p) == EOF_LENGTH else parse_ok(p)[1]
        r.result_sets += 1
        if status & SERVER_MORE_RESULTS_EXISTS:
            r.phase = P_FIRST
            return
        self._finish(req, now, "OK", _summary(r), None, r.rows)

    def _finish_ok(self, r: Response, req: Request, now: int) -> None:
        self._finish(req, now, "OK", _summary(r), None, r.rows if r.result_sets else None)

    def _finish_prepare(self, r: Response, req: Request, now: int) -> None:
        if len(self._stmts) >= MAX_STATEMENTS:
            self._stmts.pop(next(iter(self._stmts)))
        self._stmts[r.stmt_id] = Statement(req.prepare_sql or "", r.stmt_params)
        self._finish(
            req, now, "OK", f"stmt_id={r.stmt_id} params={r.stmt_params} columns={r.stmt_cols}", None, None
        )

    def _finish_err(self, req: Request, p: bytes, now: int, rows: int | None) -> None:
        code, msg = parse_err(p)
        self._finish(req, now, "ERR", msg[: self.config.max_body], code, rows)

    def _finish(
        self, req: Request, now: int, status: str, body: str | None, code: int | None, rows: int | None
    ) -> None:
        self._pending.popleft()
        self._resp = Response()
        self._out.append(self._record(req, now, now - req.ts, status, body, code, rows))


__all__ = ["MySQLParser"]
