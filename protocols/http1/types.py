"""HTTP/1.x data types: a parsed header block, a parsed head, a message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..http_common import headers_json

CR, LF = ord("\r"), ord("\n")
NO_BODY_STATUSES = frozenset({204, 304})  # No Content, Not Modified: never a body, whatever the headers say
# How a body is framed when not by a length (a length is >= 0; 0: no body): see Head.framing.
CHUNKED, UNTIL_CLOSE, BAD_LENGTH = -1, -2, -3


class HeaderBlock:
    """One parsed header block, shared by every message that repeats it byte for byte.

    Never mutated once built: a message keeps its trailers apart (Message.trailers).
    """

    __slots__ = (
        "headers",
        "last",
        "crlf",
        "plain_json",
        "chunked",
        "length",
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



class Head:
    """A parsed start line with its header block, shared by every message that repeats it byte for byte.

    Never mutated once built. ``fields`` holds the ``http_events`` columns the head settles on
    its own, worked out once for every record of a message that carries it.
    """

    __slots__ = ("version", "method", "path", "status", "reason", "block", "fields", "framing", "answers")

    def __init__(
        self, version: str, method: str | None, path: str | None, status: int | None, reason: str | None,
        block: HeaderBlock,
    ) -> None:  # fmt: skip
        self.version = version  # '1.0' or '1.1'
        self.method = method  # requests
        self.path = path
        self.status = status  # responses
        self.reason = reason
        self.block = block
        # How the body after this head is framed, as far as the head can tell (RFC 9112 §6.3): its
        # length (0: none), CHUNKED, UNTIL_CLOSE or BAD_LENGTH. ``answers``: a response whose body
        # the request it answers may still rule out (HEAD, CONNECT; see Http1Reader._framing).
        if status is not None and (100 <= status < 200 or status in NO_BODY_STATUSES):
            self.framing = 0  # never a body, whatever the headers say
        elif block.chunked:
            self.framing = CHUNKED
        elif block.length is not None:
            self.framing = block.length if block.length >= 0 else BAD_LENGTH
        else:
            self.framing = 0 if status is None else UNTIL_CLOSE  # requests are never close-delimited
        self.answers = status is not None and self.framing != 0
        fields: dict[str, Any]
        if status is None:
            fields = {"http_version": version, "req_method": method, "req_path": path}
            fields |= {"req_headers": block.plain_json, "content_type": block.ctype}
        else:
            # The request's version and content type come first (see stitch.make_record).
            fields = {"resp_status": status, "resp_message": reason, "resp_headers": block.plain_json}
            if block.ctype is not None:
                fields["content_type"] = block.ctype
        self.fields = fields


@dataclass(slots=True)
class Message:
    """One parsed HTTP/1 request or response: its head, and what is its own."""

    head: Head
    body: str = ""
    body_size: int = 0
    first_ts: int = 0  # timestamp of the first byte
    last_ts: int = 0  # timestamp of the last byte
    answered: bool = False  # a request already paired with an early final response
    trailers: list[tuple[str, str]] | None = None  # the fields after a chunked body, if any
    incomplete: bool = False  # capture lost bytes inside the body: its size is exact, its content is not all there

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Header fields then trailer fields, as they came."""
        headers = self.head.block.headers
        return headers + self.trailers if self.trailers else headers
