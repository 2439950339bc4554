"""HTTP/1.0 and 1.1: request/response parsing with pipelining, chunked and compressed bodies."""

from .stitch import Http1Parser

__all__ = ["Http1Parser"]
