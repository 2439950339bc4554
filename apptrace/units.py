"""Sizes as people type them on the command line (--max-size, --spool-max).

Its own module, free of DuckDB: the capture process parses --spool-max and never imports the store.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}


def parse_size(text: str, *, positive: bool = False) -> int:
    """'500M', '2G', '1.5GB', '1048576' → bytes; ValueError otherwise (and for 0 when ``positive``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 500M, 2G")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if positive and n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n
