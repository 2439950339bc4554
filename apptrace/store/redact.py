"""Redaction of secrets in captured rows and printed output: the one implementation, and the one list of names.

Captured plaintext holds secrets. Before a row is stored (``writer.Store``) or printed (``trace``'s live rows,
``watch``), every column that can hold one goes through a ``Redactor``, which replaces the secret with
``"<redacted>"`` and keeps the rest readable:

- headers and gRPC metadata (``headers``): the values of ``SECRET_HEADERS``, of any header whose name contains
  one of ``SECRET_NAME_PARTS``, and of any name given with ``--redact-header``; URLs in other headers' values
  are treated as text (below);
- text (``text``: paths, bodies, gRPC messages): URL query parameters and form fields whose name is a secret
  (``SECRET_PARAMS``, ``SECRET_NAME_PARTS``, the secret headers, ``--redact-param``), the password of
  ``scheme://user:password@``, JSON fields with such names anywhere in the text (nested, escaped inside a JSON
  string, or cut short by the body size cap: a value that started before the cut is redacted to the end),
  multipart form fields, and ``name: value`` lines;
- SQL (``sql``): the literal after ``PASSWORD``, ``IDENTIFIED [WITH|VIA plugin] BY|AS|USING``, ``REPLACE`` in such
  a statement, ``SET PASSWORD [FOR user] =``, and ``<secret-named column> = literal``; then the text rules for URLs
  and JSON inside literals;
- command lines (``cmdline``): ``--password=…``/``--password …`` (any option with a secret name), ``-pSECRET``
  for MySQL/MariaDB clients, ``-u user:password``, ``-H 'Authorization: …'``, the text rules for URLs, and the SQL
  rules for statements given on the command line (``mysql -e``, ``psql -c``).

Names compare case-insensitively (ASCII). Every rule is idempotent, and a value that is already ``<redacted>``
is left as it is. Each kind has a fast path: a value that contains none of its trigger words (lowercased
substrings that every secret name and rule contains) is returned unchanged, and ``pattern(kind)`` is the same
test as a regular expression, for columnar prefilters (Arrow).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

REDACTED = "<redacted>"

#: headers (and gRPC metadata keys) whose values are always secrets
SECRET_HEADERS: tuple[str, ...] = (
    "authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "api-key", "x-auth-token",
)
#: a header, query parameter, body field, SQL column or command-line option whose name contains one of these
SECRET_NAME_PARTS: tuple[str, ...] = (
    "token", "secret", "password", "passwd", "api-key", "api_key", "apikey", "signature", "credential",
    "private_key", "private-key", "access_key", "access-key",
)
#: query parameters and body fields that are secrets by their exact name (too short to look for inside names)
SECRET_PARAMS: tuple[str, ...] = (
    "key", "sig", "pass", "pwd", "auth", "session", "sessionid", "session_id", "jsessionid", "phpsessid",
    "client_secret", "access_token", "refresh_token", "id_token",
)
#: every secret name above contains one of these: text without any of them has nothing to redact
_NAME_TRIGGERS: tuple[str, ...] = ("token", "secret", "pass", "pwd", "key", "sig", "auth", "cookie",
                                   "credential", "sess")
_URL_TRIGGER = "://"
#: the extra triggers of each kind (a column's kind says which rules apply to it)
_KIND_TRIGGERS: dict[str, tuple[str, ...]] = {
    "headers": (_URL_TRIGGER,),
    "text": (_URL_TRIGGER,),
    "sql": (_URL_TRIGGER, "identified"),
    "cmdline": (_URL_TRIGGER, "identified", "-p", "-u"),
}
KINDS: tuple[str, ...] = tuple(_KIND_TRIGGERS)

#: which columns of which table hold what; columns a table does not have are skipped
COLUMNS: dict[str, dict[str, str]] = {
    "http_events": {"req_path": "text", "req_route": "text", "req_headers": "headers", "resp_headers": "headers",
                    "req_body": "text", "resp_body": "text", "grpc_message": "text"},
    "mysql_events": {"req_body": "sql", "resp_body": "sql"},
    "pgsql_events": {"req_body": "sql", "resp_body": "sql"},
    "processes": {"cmdline": "cmdline"},
}

_ASCII_LOWER = {c: c + 32 for c in range(65, 91)}


def _lower(name: str) -> str:
    """ASCII lowercase: rules match ASCII names, so a non-ASCII letter never folds into one."""
    return name.lower() if name.isascii() else name.translate(_ASCII_LOWER)


# -- text: URLs, query strings, form and JSON bodies, name: value lines ------------------------------------------
_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@:\"'<>\\]*):([^\s/?#@\"'<>\\]+)@", re.ASCII)
_PARAM = re.compile(r"(?<![\w.\-\[\]%])([\w.\-\[\]%]{1,100})=(<redacted>|[^&#\s\"'<>;\\]*)", re.ASCII)
_JSON_KEY = re.compile(r"(\\?)\"([^\"\\\r\n]{1,100})\\?\"[ \t\r\n]*:[ \t\r\n]*", re.ASCII)
_JSON_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"", re.ASCII | re.DOTALL)
_JSON_SCALAR = re.compile(r"[^,}\]\s\"]+", re.ASCII)
_LINE = re.compile(r"(?m)^([ \t]*([\w.\-]{1,100})[ \t]*:[ \t]*)([^\r\n]*)", re.ASCII)
_MULTIPART = re.compile(r"(?i)content-disposition:[^\r\n]*?\bname=\"([^\"\r\n]{1,100})\"[^\r\n]*\r?\n"
                        r"(?:[^\r\n]+\r?\n)*\r?\n", re.ASCII)
_MULTIPART_END = re.compile(r"\r?\n--")

# -- SQL -----------------------------------------------------------------------------------------------------------
_SQL_TOKEN = re.compile(
    r"""(?P<str>(?:[EeNnBbXx]|_\w+)?'(?:[^'\\]|\\.|'')*(?:'|\\?\Z))
      | (?P<dq>"(?:[^"\\]|\\.|"")*(?:"|\\?\Z))
      | (?P<bq>`[^`]*(?:`|\Z))
      | (?P<dollar>\$(?P<tag>(?:[A-Za-z_]\w*)?)\$.*?(?:\$(?P=tag)\$|\Z))
      | (?P<num>\d[\w.]*)
      | (?P<word>[A-Za-z_][\w$]*)
      | (?P<punct>[=(),;@.:])
      | (?P<other>\S)""",
    re.ASCII | re.VERBOSE | re.DOTALL,
)
_LITERALS = ("str", "dq", "dollar", "num")

# -- command lines -------------------------------------------------------------------------------------------------
_OPT_EQ_OR_SPACE = re.compile(r"(?<!\S)(--?[A-Za-z][\w\-]{0,99})([ ]+)(?!-)(\S+)", re.ASCII)
_USER_PASS = re.compile(r"(?<!\S)(-u|-U|--user|--proxy-user)([ ]*[^\s:]*):(\S+)", re.ASCII)
_MYSQL_P = re.compile(r"(?<!\S)-p(\S+)", re.ASCII)
_CMD_HEADER = re.compile(r"(?:(?<=\s)|(?<==)|^)([A-Za-z][\w\-]{0,99}):([ ]*)", re.ASCII)
_SECRET_OPTIONS = frozenset(("pass", "pwd", "auth"))
_MYSQL_CLIENT = re.compile(r"^(?:\S*/)?(?:mysql|mariadb)\S*", re.ASCII)


class Redactor:
    """Replaces secrets in header JSON, text, SQL and command lines (see the module's doc for the rules)."""

    def __init__(self, headers: Iterable[str] = (), params: Iterable[str] = ()) -> None:
        extra_headers = [_lower(n.strip()) for n in headers if n.strip()]
        extra_params = [_lower(n.strip()) for n in params if n.strip()]
        self.header_names = frozenset((*SECRET_HEADERS, *extra_headers))
        self.extra_params = frozenset(extra_params)
        #: JSON fields and `name: value` lines may be headers or parameters
        self.param_names = frozenset((*SECRET_PARAMS, *extra_params, *self.header_names))
        base = tuple(dict.fromkeys((*_NAME_TRIGGERS, *extra_headers, *extra_params)))
        self.triggers = {kind: (*base, *extra) for kind, extra in _KIND_TRIGGERS.items()}
        self._fns: dict[str, Callable[[str], str]] = {
            "headers": self._headers_text, "text": self._text, "sql": self._sql, "cmdline": self._cmdline,
        }
        self._header_cache: dict[str, str] = {}

    # -- names ---------------------------------------------------------------------------------------------------
    def secret_header(self, name: str) -> bool:
        n = _lower(name.strip())
        return n in self.header_names or any(p in n for p in SECRET_NAME_PARTS)

    def secret_param(self, name: str) -> bool:
        n = _lower(name.strip().lstrip("-"))
        return n in self.param_names or any(p in n for p in SECRET_NAME_PARTS)

    def _secret_option(self, name: str) -> bool:
        """A command-line option whose value is a secret; not ``--key`` or ``--sig``, which name files."""
        n = _lower(name.strip().lstrip("-"))
        return n in _SECRET_OPTIONS or n in self.extra_params or any(p in n for p in SECRET_NAME_PARTS)

    def _secret_sql_column(self, name: str) -> bool:
        n = _lower(name)
        return n in self.header_names or any(p in n for p in SECRET_NAME_PARTS)

    # -- the fast path -------------------------------------------------------------------------------------------
    def triggered(self, kind: str, text: str) -> bool:
        """Whether ``text`` may hold something to redact as ``kind`` (False: it certainly does not)."""
        low = text.lower()
        return any(t in low for t in self.triggers[kind])

    def pattern(self, kind: str) -> str:
        """``triggered`` as a case-insensitive regular expression (RE2 and Python syntax alike)."""
        return "|".join(re.escape(t) for t in self.triggers[kind])

    # -- values --------------------------------------------------------------------------------------------------
    def value(self, kind: str, value: Any) -> Any:
        """``value`` (a string, or None) as a column of ``kind`` (one of KINDS) is stored or printed."""
        if value is None:
            return None
        if kind == "headers":
            return self.headers(value)
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8", "replace")
        elif not isinstance(value, str):
            value = str(value)  # every column redaction reads is text
        if not self.triggered(kind, value):
            return value
        return self._fns[kind](value)

    def function(self, kind: str) -> Callable[[str], str]:
        """The rules of ``kind`` without the fast path, for values a prefilter already selected."""
        return self._fns[kind]

    def headers(self, value: Any) -> Any:
        """Return ``value`` (a JSON object string, a dict, bytes, or None) with secret values replaced.

        A string that is not a JSON object is searched for ``name: value`` lines instead, so that a half-parsed
        header block never leaks a secret either.
        """
        if value is None:
            return None
        if isinstance(value, dict):
            return json.dumps(self._redact_dict(value), separators=(",", ":"), ensure_ascii=False)
        if isinstance(value, bytes | bytearray | memoryview):
            value = bytes(value).decode("utf-8", "replace")
        text = str(value)
        if not self.triggered("headers", text):
            return text
        return self._headers_text(text)

    def text(self, value: str) -> str:
        return self.value("text", value)

    def sql(self, value: str) -> str:
        return self.value("sql", value)

    def cmdline(self, value: str) -> str:
        return self.value("cmdline", value)

    def row(self, table: str, row: dict) -> dict:
        """Redact the columns of one row of ``table`` in place (and return it)."""
        for col, kind in COLUMNS.get(table, {}).items():
            v = row.get(col)
            if v is not None:
                row[col] = self.value(kind, v)
        return row

    def rows(self, table: str, rows: Sequence[dict]) -> None:
        """Redact the columns of ``rows`` of ``table`` in place."""
        for r in rows:
            self.row(table, r)

    # -- headers -------------------------------------------------------------------------------------------------
    def _headers_text(self, text: str) -> str:
        cached = self._header_cache.get(text)
        if cached is not None:
            return cached
        try:
            obj = json.loads(text)
        except ValueError:
            obj = None
        if isinstance(obj, dict):
            redacted = self._redact_dict(obj)
            # unchanged: the text as it came, not a re-encoding of it
            out = text if redacted == obj else json.dumps(redacted, separators=(",", ":"), ensure_ascii=False)
        else:
            out = self._text(text)
        if len(self._header_cache) > 4096:  # header blocks repeat; a bounded memory of them is enough
            self._header_cache.clear()
        self._header_cache[text] = out
        return out

    def _redact_dict(self, obj: dict) -> dict:
        out = {}
        for k, v in obj.items():
            if self.secret_header(str(k)):
                v = [REDACTED for _ in v] if isinstance(v, list) else REDACTED
            elif isinstance(v, str):
                v = self.value("text", v)
            elif isinstance(v, list):
                v = [self.value("text", x) if isinstance(x, str) else x for x in v]
            out[k] = v
        return out

    # -- text ----------------------------------------------------------------------------------------------------
    def _text(self, text: str) -> str:
        if "://" in text:
            text = _USERINFO.sub(_redact_group2, text)
        if "=" in text:
            text = _PARAM.sub(self._param, text)
        if '"' in text:
            text = self._json(text)
            if "ontent-" in text or "ONTENT-" in text:
                text = self._multipart(text)
        if ":" in text:
            text = _LINE.sub(self._line, text)
        return text

    def _param(self, m: re.Match[str]) -> str:
        value = m.group(2)
        if not value or value == REDACTED or not self.secret_param(m.group(1)):
            return m.group()
        return f"{m.group(1)}={REDACTED}"

    def _line(self, m: re.Match[str]) -> str:
        value = m.group(3)
        if not value.strip() or value == REDACTED or not self.secret_param(m.group(2)):
            return m.group()
        if value.startswith(("//", "/")):  # a URL's scheme ("https: //…" never happens; "https://h" does)
            return m.group()
        return m.group(1) + REDACTED

    def _json(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        n = len(text)
        search = _JSON_KEY.search
        while True:
            m = search(text, pos)
            if m is None:
                break
            start = m.end()
            if not self.secret_param(m.group(2)) or start >= n:
                out.append(text[pos:start])
                pos = start
                continue
            escaped = bool(m.group(1))
            end = _json_value_end(text, start, escaped)
            value = text[start:end]
            q = '\\"' if escaped else '"'
            replacement = f"{q}{REDACTED}{q}"
            out.append(text[pos:start])
            out.append(replacement if value else value)
            pos = end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    def _multipart(self, text: str) -> str:
        out: list[str] = []
        pos = 0
        for m in _MULTIPART.finditer(text):
            if m.start() < pos or not self.secret_param(m.group(1)):
                continue
            start = m.end()
            end_m = _MULTIPART_END.search(text, start)
            end = end_m.start() if end_m else len(text)
            if text[start:end] in ("", REDACTED):
                continue
            out.append(text[pos:start])
            out.append(REDACTED)
            pos = end
        if not out:
            return text
        out.append(text[pos:])
        return "".join(out)

    # -- SQL -----------------------------------------------------------------------------------------------------
    def _sql(self, sql: str) -> str:
        toks = [(m.lastgroup, m.start(), m.end()) for m in _SQL_TOKEN.finditer(sql)]
        spans: list[tuple[int, int, str]] = []  # (start, end, kind) of literals to redact
        identified = False
        words = [sql[s:e].lower() if k == "word" else "" for k, s, e in toks]
        i = 0
        nt = len(toks)
        while i < nt:
            kind = toks[i][0]
            if kind != "word":
                i += 1
                continue
            w = words[i]
            j = i + 1
            if w == "password":
                if j < nt and words[j] == "for":  # SET PASSWORD FOR user = …
                    while j < nt and not (toks[j][0] == "punct" and sql[toks[j][1]] == "="):
                        j += 1
                self._sql_literal(sql, toks, words, j, spans)
            elif w == "identified":
                identified = True
                if j < nt and words[j] in ("with", "via"):
                    j += 2  # the plugin's name
                if j < nt and words[j] in ("by", "as", "using"):
                    self._sql_literal(sql, toks, words, j + 1, spans)
            elif identified and w in ("using", "as", "replace"):
                self._sql_literal(sql, toks, words, j, spans)
            elif j < nt and toks[j][0] == "punct" and sql[toks[j][1]] in "=:" and self._secret_sql_column(w):
                self._sql_literal(sql, toks, words, j, spans)
            i += 1
        if spans:
            out: list[str] = []
            pos = 0
            for s, e, kind in sorted(set(spans)):  # whole tokens: they never overlap
                out.append(sql[pos:s])
                out.append(_redacted_literal(sql[s:e], kind))
                pos = e
            out.append(sql[pos:])
            sql = "".join(out)
        if "://" in sql:
            sql = _USERINFO.sub(_redact_group2, sql)
        if '"' in sql:
            sql = self._json(sql)
        return sql

    def _sql_literal(self, sql: str, toks: list, words: list[str], j: int, spans: list) -> None:
        """Mark the literal at token ``j`` for redaction, past ``=``, ``:=``, ``(`` and function names."""
        nt = len(toks)
        while j < nt:
            kind, s, _e = toks[j]
            if kind == "punct" and sql[s] in "=(:":
                j += 1
            elif kind == "word" and (words[j] == "password" or (j + 1 < nt and toks[j + 1][0] == "punct"
                                                                and sql[toks[j + 1][1]] == "(")):
                j += 1
            else:
                break
        if j >= nt:
            return
        kind, s, e = toks[j]
        if kind in _LITERALS:
            spans.append((s, e, kind))

    # -- command lines -------------------------------------------------------------------------------------------
    def _cmdline(self, cmd: str) -> str:
        cmd = _USER_PASS.sub(_redact_group3, cmd)
        if _MYSQL_CLIENT.match(cmd):
            cmd = _MYSQL_P.sub(lambda m: m.group() if m.group(1) == REDACTED else f"-p{REDACTED}", cmd)
        cmd = _OPT_EQ_OR_SPACE.sub(self._option_value, cmd)
        cmd = self._cmd_headers(cmd)
        if "://" in cmd:
            cmd = _USERINFO.sub(_redact_group2, cmd)
        if "=" in cmd:
            cmd = _PARAM.sub(self._param, cmd)
        if '"' in cmd:
            cmd = self._json(cmd)
        if "'" in cmd or '"' in cmd or "$" in cmd:  # SQL given on the command line (mysql -e, psql -c)
            cmd = self._sql(cmd)
        return cmd

    def _option_value(self, m: re.Match[str]) -> str:
        value = m.group(3)
        if value == REDACTED or not self._secret_option(m.group(1)):
            return m.group()
        return f"{m.group(1)}{m.group(2)}{REDACTED}"

    def _cmd_headers(self, cmd: str) -> str:
        """``-H 'Authorization: Bearer x'``: argv is joined with spaces, so the value runs to the next option
        or URL."""
        out: list[str] = []
        pos = 0
        for m in _CMD_HEADER.finditer(cmd):
            if m.start() < pos or not self.secret_header(m.group(1)):
                continue
            start = m.end()
            end = start
            words = cmd[start:].split(" ")
            if words[0] == REDACTED:  # done before: where its value ended is no longer known, nor needed
                continue
            taken = 0
            for word in words:
                if taken and (word.startswith("-") or "://" in word):
                    break
                end += len(word) + (1 if taken else 0)
                taken += 1
            value = cmd[start:end]
            if value in ("", REDACTED) or value.startswith("//"):
                continue
            out.append(cmd[pos:start])
            out.append(REDACTED)
            pos = end
        if not out:
            return cmd
        out.append(cmd[pos:])
        return "".join(out)


def _redact_group2(m: re.Match[str]) -> str:
    if m.group(2) == REDACTED:
        return m.group()
    return f"{m.group(1)}:{REDACTED}@"


def _redact_group3(m: re.Match[str]) -> str:
    if m.group(3) == REDACTED:
        return m.group()
    return f"{m.group(1)}{m.group(2)}:{REDACTED}"


def _redacted_literal(literal: str, kind: str) -> str:
    if kind == "num":
        return f"'{REDACTED}'"
    if kind == "dollar":
        tag = literal[: literal.index("$", 1) + 1]
        return f"{tag}{REDACTED}{tag}"
    quote = "'" if kind == "str" else '"'
    prefix = literal[: literal.index(quote)]
    return f"{prefix}{quote}{REDACTED}{quote}"


def _json_value_end(text: str, start: int, escaped: bool) -> int:
    """Where the JSON value starting at ``start`` ends; the end of the text if it was cut short."""
    n = len(text)
    c = text[start]
    if escaped:  # inside a JSON string: the value's quotes are \" and it ends at the next \"
        if text.startswith('\\"', start):
            close = text.find('\\"', start + 2)
            return n if close < 0 else close + 2
        m = _JSON_SCALAR.match(text, start)
        return m.end() if m else start
    if c == '"':
        m = _JSON_STRING.match(text, start)
        return m.end() if m else n
    if c in "{[":
        depth = 0
        i = start
        while i < n:
            ch = text[i]
            if ch == '"':
                m = _JSON_STRING.match(text, i)
                if m is None:
                    return n
                i = m.end()
                continue
            if ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    return i + 1
            i += 1
        return n
    m = _JSON_SCALAR.match(text, start)
    return m.end() if m else start
