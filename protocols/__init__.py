"""Sans-I/O protocol parsers: bytes and timestamps in, stitched request/response records out."""

from .common import ParserCaches, ParserConfig, Record, Side
from .tracker import ConnectionTracker

__all__ = ["ConnectionTracker", "ParserCaches", "ParserConfig", "Record", "Side"]
