"""Durations and sizes as people type them on the command line and in scripts.

One parser for each, used by every option and script argument that takes one (--since, --retain,
start_time='-5m', --max-size, --spool-max), so that "5m" means the same everywhere.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mb": 1 << 20,
               "mib": 1 << 20, "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30, "t": 1 << 40, "tb": 1 << 40}
_DURATION_UNITS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9,
                   "d": 86400 * 10**9, "w": 7 * 86400 * 10**9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|ms|s|m|h|d|w)")


def parse_size(text: str, *, positive: bool = False) -> int:
    """'500M', '2G', '1.5GB', '1048576' → bytes; ValueError otherwise (and for 0 when ``positive``)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*", str(text).lower())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f"bad size {text!r}: use e.g. 500M, 2G")
    n = int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    if positive and n <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return n


def parse_duration(text: str) -> int:
    """'24h', '30m', '90s', '7d', '1h30m', '500ms' → nanoseconds; ValueError otherwise."""
    s = str(text).strip().lower()
    parts = _DURATION_PART.findall(s)
    if not parts or _DURATION_PART.sub("", s).strip():
        raise ValueError(f"bad duration {text!r}: use e.g. 90s, 30m, 24h, 7d")
    return int(sum(float(n) * _DURATION_UNITS[u] for n, u in parts))


def parse_window(text: str) -> int:
    """How far back a window reaches: '15m', or px's form of the same, '-15m' → nanoseconds."""
    s = str(text).strip()
    return parse_duration(s[1:] if s.startswith("-") else s)
