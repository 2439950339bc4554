"""Numbers as every view writes them: report (terminal and HTML), watch, and the tables of `run` and `sql`.

One format for each kind of number, always with its unit, so that 12.3ms or 1.25% reads the same everywhere.
"""

from __future__ import annotations

import math
from typing import Any


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_ms(ms: float | None) -> str:
    """A duration given in milliseconds: 850µs, 4.20ms, 12.3ms, 120ms, 1.50s."""
    if _missing(ms):
        return "–"
    if ms == 0:
        return "0ms"
    if ms < 1:
        return f"{ms * 1000:.0f}µs"
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    return f"{ms / 1000:.2f}s"


def fmt_ns(ns: float | None) -> str:
    """A duration given in nanoseconds (the latency columns), written as fmt_ms writes it."""
    return "–" if _missing(ns) else fmt_ms(ns / 1e6)


def fmt_rate(r: float) -> str:
    return f"{r:.3g}/s" if r < 100 else f"{r:,.0f}/s"


def fmt_pct(x: float | None) -> str:
    """A share given as a fraction (0.0125 → 1.25%)."""
    if _missing(x):
        return "–"
    if x == 0:
        return "0%"
    return f"{x * 100:.2f}%" if x < 0.1 else f"{x * 100:.1f}%"


def fmt_count(n: int | None) -> str:
    return f"{(n or 0):,}"


def fmt_window(s: float) -> str:
    if s < 120:
        return f"{s:.0f}s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def fmt_age(s: float) -> str:
    """How long ago, for headers: 'rows end 22 s ago'."""
    if s < 1:
        return "<1 s"
    if s < 120:
        return f"{s:.0f} s"
    return fmt_window(s)


_SPANS = (("w", 7 * 86400 * 10**9), ("d", 86400 * 10**9), ("h", 3600 * 10**9), ("m", 60 * 10**9), ("s", 10**9),
          ("ms", 10**6))


def fmt_span_ns(ns: int) -> str:
    """A window's length as it is typed (--since 15m, start_time='-1h'): 15m, 1h, 90s."""
    for unit, size in _SPANS:
        if ns >= size and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns / 1e9:g}s"
