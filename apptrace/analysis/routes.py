"""An HTTP request's route: its path with the query string removed and the parts that name one thing among many
(ids, numbers, UUIDs, hashes, tokens) folded into ``{id}``, so ``/users/42?x=1`` and ``/users/43`` are one
endpoint, ``/users/{id}``.

Reports, the shipped scripts and metrics group by route rather than by raw path: raw paths make one endpoint per
user, per order, per query string, which tells nothing and, as metric labels, grows without bound. The rule is
a guess from the segment's shape alone (no framework's route table is visible from the wire), so it folds only
what is very unlikely to be a fixed word: ``/v2``, ``/api``, ``/healthz`` stay.
"""

from __future__ import annotations

import re

FOLDED = "{id}"

# one path segment that names an instance rather than a resource
_ID_SEGMENT = re.compile(
    r"""
      [-+]?\d+(?:\.\d+)?                                   # 42, -1, 3.14
    | [0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}   # a UUID
    | (?=[a-zA-Z]*\d)[0-9a-fA-F]{8,}                       # a hex hash or id with at least one digit: 5f2b9c1e…
    | (?=[^/]*\d)(?=[^/]*[a-zA-Z])[A-Za-z0-9_\-=.~]{16,}   # a long token of letters and digits: ULID, base64, JWT
    | \d+[a-zA-Z0-9_\-]*\d                                 # numbers joined by separators: 2026-12-05, 10_20
    """,
    re.VERBOSE,
)

#: how many distinct paths a Routes remembers before it starts over (repeated paths dominate real traffic)
CACHE_PATHS = 4096


def route_of(path: str | None) -> str | None:
    """``path`` (a request target as sent) as a route; None for None. An absolute-form target
    (``http://host/x``, proxies) keeps only its path; ``*`` and authority-form (CONNECT) targets stay as they are."""
    if path is None:
        return None
    cut = path.find("?")
    if cut >= 0:
        path = path[:cut]
    cut = path.find("#")
    if cut >= 0:
        path = path[:cut]
    if "://" in path[:12]:  # absolute-form: the route is what follows the authority
        slash = path.find("/", path.find("://") + 3)
        path = path[slash:] if slash >= 0 else "/"
    if not path.startswith("/"):
        return path
    fullmatch = _ID_SEGMENT.fullmatch
    return "/".join(FOLDED if seg and fullmatch(seg) else seg for seg in path.split("/"))


class Routes:
    """route_of with a bounded memory of the paths already seen: a pipeline's own, never shared process-wide."""

    __slots__ = ("_seen",)

    def __init__(self) -> None:
        self._seen: dict[str, str | None] = {}

    def __call__(self, path: str | None) -> str | None:
        if path is None:
            return None
        seen = self._seen
        route = seen.get(path)
        if route is None:
            if len(seen) >= CACHE_PATHS:
                seen.clear()
            route = seen[path] = route_of(path)
        return route


def db_operation(row: dict) -> str:
    """A SQL request's operation, as metrics and spans name it: the statement's first keyword (SELECT, INSERT,
    BEGIN…), or the protocol command when there is no statement."""
    body = (row.get("req_body") or "").lstrip(" \t\r\n(")
    word = body.split(None, 1)[0] if body else ""
    if word.isalpha() and len(word) <= 20:
        return word.upper()
    return row.get("req_cmd") or ""
