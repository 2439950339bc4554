"""Sans-I/O protocol parsers: bytes and timestamps in, stitched request/response records out."""

from protocols.common import ParserConfig, Record, Side
from protocols.tracker import ConnectionTracker

__all__ = ["ConnectionTracker", "ParserConfig", "Record", "Side"]
