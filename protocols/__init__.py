"""Sans-I/O protocol parsers: bytes and timestamps in, stitched request/response records out."""
