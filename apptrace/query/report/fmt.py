"""Numbers as the report shows them, in the terminal table and on the HTML page alike."""

from __future__ import annotations

import math


def fmt_ms(ms: float | None) -> str:
    if ms is None or (isinstance(ms, float) and math.isnan(ms)):
        return "–"
    if ms == 0:
        return "0"
    if ms < 1:
        return f"{ms * 1000:.0f}µs"
    if ms < 10:
        return f"{ms:.2f}ms"
    if ms < 1000:
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    return f"{ms / 1000:.2f}s"


def fmt_rate(r: float) -> str:
    return f"{r:.3g}/s" if r < 100 else f"{r:,.0f}/s"


def fmt_pct(x: float) -> str:
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
