"""HTTP/1.x data types: a parsed header block and a parsed message."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..http_common import headers_json

CR, LF = ord("\r"), ord("\n")
NO_BODY_STATUSES = frozenset({204, 304})  # No Content, Not Modified: never a body, whatever the headers say


class HeaderBlock:
    """One parsed header block, shared by every message that repeats it byte for byte.

    Never mutated once built: a message that gains trailers copies its header list first.
    """

    __slots__ = (
        "headers",
        "last",
        "crlf",
        "plain_json",
        "chunked",
        "length",
        "plain_length",
        "encoding",
        "ctype",
    )

    def __init__(self, headers: list[tuple[str, str]], crlf: bool) -> None:
        self.headers = headers
        self.last = last = dict(headers)  # last value wins; framing headers that repeat are handled below
        self.crlf = crlf
        # Nearly every parsed block ends up in a record: encode it once, up front, so that a
        # record reads an attribute instead of calling through Message and HeaderBlock.
        self.plain_json = headers_json(headers)
        # How the body is framed is a function of the block: worked out once, not per message.
        te = last.get("transfer-encoding")
        if te is not None and len(last) != len(headers):
            te = ", ".join(v for k, v in headers if k == "transfer-encoding")
        self.chunked = te is not None and te.rsplit(",", 1)[-1].strip().lower() == "chunked"
        self.encoding = last.get("content-encoding")
        self.ctype = last.get("content-type")
        cl = last.get("content-length")
        # Content-Length: None when absent, -1 when unusable, else the length.
        self.length: int | None = None
        if cl is not None:
            if cl.isascii() and cl.isdigit():
                self.length = int(cl)
            else:
                try:
                    # Repeated identical Content-Length values are legal ("5, 5").
                    values = {int(x) for x in cl.split(",")}
                except ValueError:
                    values = set()
                n = values.pop() if len(values) == 1 else -1
                self.length = n if n >= 0 else -1
        # The body length when the simplest rules settle it (a plain Content-Length or none, no
        # transfer or content coding, no repeated header): None without Content-Length, -1 when
        # the full rules must decide.
        self.plain_length: int | None = -1
        if te is None and self.encoding is None and len(headers) == len(last):
            if cl is None:
                self.plain_length = None
            elif cl.isascii() and cl.isdigit():
                self.plain_length = int(cl)


@dataclass(slots=True)
class Message:
    """One parsed HTTP/1 request or response."""

    version: str = "1.1"  # '1.0' or '1.1'
    method: str | None = None  # requests
    path: str | None = None
    status: int | None = None  # responses
    reason: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: str = ""
    body_size: int = 0
    first_ts: int = 0  # timestamp of the first byte
    last_ts: int = 0  # timestamp of the last byte
    content_type: str | None = None
    answered: bool = False  # a request already paired with an early final response
    block: HeaderBlock | None = None  # the shared parse of ``headers``, while they are unchanged

    def headers_json(self) -> str:
        if self.block is not None:
            return self.block.plain_json
        return headers_json(self.headers)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v
        return None
