"""The report as a rich table on the terminal: a header saying how current the rows are, the table (at most
``limit`` rows, the service never cut), and one line on capture losses under it."""

from __future__ import annotations

import sys
from typing import Any

from apptrace.query.fmt import fmt_count, fmt_ms, fmt_pct, fmt_rate, fmt_window
from apptrace.query.output import DEFAULT_LIMIT
from apptrace.query.report.data import Report


def print_terminal(rep: Report, out: Any = None, limit: int = DEFAULT_LIMIT) -> None:
    # rich is imported here, not at the top: JSON, CSV and --print-sql should not pay for it
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    out = out or sys.stdout
    console = Console(file=out, width=None if out.isatty() else 140)
    total = sum(r["requests"] for r in rep.summary)
    errors = sum(r["errors"] for r in rep.summary)
    title = (f"apptrace report — last {rep.since} ({fmt_window(rep.window_s)} of data) · {fmt_count(total)} "
             f"requests · {fmt_pct(errors / total if total else 0)} errors")
    if rep.fresh:
        console.print(Text(f"{rep.db}: {rep.fresh.describe()}", style="dim"))
    if not rep.summary:
        console.print(f"No HTTP, gRPC, MySQL or PostgreSQL events in the last {rep.since} in {rep.db}.")
    else:
        shown = rep.summary if not limit else rep.summary[:limit]
        t = Table(title=title, title_justify="left", header_style="bold cyan", row_styles=["", "dim"])
        # the service is what a row is about: never folded or cut, however narrow the terminal
        t.add_column("service", no_wrap=True, overflow="ignore",
                     min_width=max(len("service"), *(len(str(r["service"])) for r in shown)))
        for col, just in (("protocol", "left"), ("role", "left"), ("requests", "right"), ("rate", "right"),
                          ("p50", "right"), ("p90", "right"), ("p99", "right"), ("errors", "right"),
                          ("error rate", "right")):
            t.add_column(col, justify=just)  # type: ignore[arg-type]
        for r in shown:
            er = r["error_rate"]
            style = "bold red" if er >= 0.05 else "yellow" if er >= 0.01 else "green"
            t.add_row(str(r["service"]), r["protocol"], r["role"], fmt_count(r["requests"]), fmt_rate(r["rps"]),
                      fmt_ms(r["p50_ms"]), fmt_ms(r["p90_ms"]), fmt_ms(r["p99_ms"]), fmt_count(r["errors"]),
                      Text(fmt_pct(er), style=style))
        console.print(t)
        if len(shown) < len(rep.summary):
            console.print(Text(f"… {fmt_count(len(rep.summary) - len(shown))} more rows (--limit N to show more, "
                               "--limit 0 for all)", style="dim"))
    lost = sum(r["lost_events"] or 0 for r in rep.losses)
    events = sum(r["events"] or 0 for r in rep.losses)
    if rep.losses:
        gap = sum(r["gap_bytes"] or 0 for r in rep.losses)
        perr = sum(r["parse_errors"] or 0 for r in rep.losses)
        style = "red" if lost else "green"
        console.print(Text(f"capture: {fmt_count(events)} events, {fmt_count(lost)} lost in the ring buffer, "
                           f"{fmt_count(gap)} gap bytes, {fmt_count(perr)} parse errors", style=style))
