"""HTTP/2 and gRPC: frames (hyperframe), header blocks (hpack), streams stitched by stream id.

h2's connection state machine is not used: it is built for an endpoint and rejects what a
passive observer must accept (e.g. response streams a client-side connection never opened).
"""

from .stitch import Http2Parser

__all__ = ["Http2Parser"]
