"""Redaction of secrets in captured HTTP headers before they are stored.

Captured plaintext holds secrets. The values of Authorization, Cookie, Set-Cookie and Proxy-Authorization (plus
any header named with `--redact-header`) are replaced by ``"<redacted>"``. Header names compare
case-insensitively. Headers are stored as a JSON object string with lowercase names; a value may be a string or a
list of strings (repeated headers).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

REDACTED = "<redacted>"
DEFAULT_HEADERS: tuple[str, ...] = ("authorization", "cookie", "set-cookie", "proxy-authorization")
HEADER_COLUMNS: tuple[str, ...] = ("req_headers", "resp_headers")


class Redactor:
    """Replaces secret header values in header JSON strings (or dicts)."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.names = frozenset(n.strip().lower() for n in (*DEFAULT_HEADERS, *extra) if n.strip())

    def headers(self, value: Any) -> Any:
        """Return `value` (a JSON object string, a dict, or None) with secret values replaced.

        A string that is not a JSON object is searched for `name: value` lines instead, so that a half-parsed
        header block never leaks a secret either.
        """
        if value is None:
            return None
        if isinstance(value, dict):
            return json.dumps(self._redact_dict(value), separators=(",", ":"))
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        text = str(value)
        if not any(n in text.lower() for n in self.names):
            return text  # fast path: nothing to redact
        try:
            obj = json.loads(text)
        except ValueError:
            return self._redact_lines(text)
        if not isinstance(obj, dict):
            return self._redact_lines(text)
        return json.dumps(self._redact_dict(obj), separators=(",", ":"))

    def _redact_dict(self, obj: dict) -> dict:
        out = {}
        for k, v in obj.items():
            if str(k).lower() in self.names:
                v = [REDACTED for _ in v] if isinstance(v, list) else REDACTED
            out[k] = v
        return out

    def _redact_lines(self, text: str) -> str:
        lines = []
        for line in text.split("\n"):
            name, sep, _ = line.partition(":")
            if sep and name.strip().strip('"').lower() in self.names:
                line = f"{name}: {REDACTED}"
            lines.append(line)
        return "\n".join(lines)

    def rows(self, rows: Sequence[dict]) -> None:
        """Redact the header columns of `rows` in place."""
        for row in rows:
            for col in HEADER_COLUMNS:
                v = row.get(col)
                if v is not None:
                    row[col] = self.headers(v)
