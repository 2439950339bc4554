"""Results on the terminal: rich tables, CSV, or one JSON object mapping each display name to its rows.

Tables are for reading: at most ``limit`` rows each (the rest counted, never dropped in silence), the first
column (what a row is about) never cut, and durations and shares written with their units (apptrace.query.fmt)
where the column's name says what it holds. CSV and JSON keep the raw values.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from apptrace.query.fmt import fmt_count, fmt_ms, fmt_ns, fmt_pct

if TYPE_CHECKING:
    import pandas as pd

#: rows of each table shown on the terminal unless --limit says otherwise (0: all)
DEFAULT_LIMIT = 50
#: the longest text a cell shows before it is cut with "…" (the first column is never cut)
MAX_CELL = 200

# What a numeric column holds, told by its name as the shipped scripts and the report name them.
_NS_COLUMN = re.compile(r"(^|_)latency($|_)|_ns$")
_MS_COLUMN = re.compile(r"_ms$")
_SHARE_COLUMN = re.compile(r"(^|_)(rate|share|fraction|ratio)$")
_NOT_SHARES = {"rate", "rps", "qps"}  # events per second, not fractions


def column_format(name: str) -> Callable[[Any], str] | None:
    """How the table writes a numeric column called ``name``: a duration or a share with its unit, else None."""
    n = name.lower()
    if _MS_COLUMN.search(n):
        return fmt_ms
    if _NS_COLUMN.search(n):
        return fmt_ns
    if _SHARE_COLUMN.search(n) and n not in _NOT_SHARES:
        return fmt_pct
    return None


def _is_number_column(col: pd.Series) -> bool:
    """Numbers, bools aside; SQL's DECIMAL (a literal such as 4.5) comes as Python Decimals in an object column."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    values = col.dropna()
    return len(values) > 0 and all(isinstance(v, Decimal) for v in values)


def _number(f: Callable[[Any], str]) -> Callable[[Any], str]:
    return lambda v: f(float(v) if isinstance(v, Decimal) else v)


def _cell(v: Any, limit: int | None = MAX_CELL) -> str:
    import pandas as pd

    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if v is pd.NaT:
        return ""
    if isinstance(v, pd.Timestamp):
        return v.isoformat(sep=" ")
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 1e5 else f"{v:.6g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) + "}"
    # A newline ending a body or a statement would print as an empty line under the row; one inside, as a row
    # twice as tall: a table shows each on its row, as the mark it is.
    s = str(v).rstrip("\r\n").replace("\r\n", "\n").replace("\n", "↵")
    return s if limit is None or len(s) <= limit else s[:limit - 1] + "…"


def _jsonable(v: Any) -> Any:
    import pandas as pd

    if v is None or v is pd.NaT:
        return None
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
    if isinstance(v, Decimal):  # a number, not the text default=str would make of it
        return _jsonable(float(v))
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if isinstance(v, pd.Timedelta):
        return int(v.value)
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_jsonable(x) for x in v]
    if hasattr(v, "item"):  # numpy scalars
        return _jsonable(v.item())
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if hasattr(v, "tolist"):
        return _jsonable(v.tolist())
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    return v


def records(df: pd.DataFrame) -> list[dict]:
    cols = list(df.columns)
    return [{c: _jsonable(v) for c, v in zip(cols, row, strict=True)}
            for row in df.astype(object).itertuples(index=False, name=None)]


def write_outputs(outputs: Sequence[tuple[str, pd.DataFrame]], fmt: str, out: Any = None, *,
                  limit: int = DEFAULT_LIMIT, header: str | None = None) -> None:
    """Print each (name, result). ``header`` (how current the rows are) heads a table; with CSV or JSON, which
    programs read, it goes to stderr."""
    out = out or sys.stdout
    if header:
        print(header, file=out if fmt == "table" else sys.stderr)
    if fmt == "json":
        json.dump({name: records(df) for name, df in outputs}, out, default=str)
        out.write("\n")
        return
    if fmt == "csv":
        for i, (name, df) in enumerate(outputs):
            if len(outputs) > 1:
                out.write(("\n" if i else "") + f"# {name}\n")
            df.to_csv(out, index=False)
        return
    from rich.console import Console

    console = Console(file=out, width=None if out.isatty() else 200, soft_wrap=False)
    for name, df in outputs:
        print_table(console, name, df, limit)


def print_table(console: Any, name: str, df: pd.DataFrame, limit: int = DEFAULT_LIMIT) -> None:
    """One display as a rich table: its first ``limit`` rows (0: all), then how many more there are."""
    from rich.table import Table
    from rich.text import Text

    shown = df if not limit or len(df) <= limit else df.head(limit)
    window = df.attrs.get("window")
    title = f"{name} ({len(df)} rows" + (f", {window}" if window else "") + ")"
    t = Table(header_style="bold cyan")  # the title is printed above it: a narrow table would fold it
    formats = []
    for i, c in enumerate(df.columns):
        numeric = _is_number_column(df[c])
        f = column_format(str(c)) if numeric else None
        formats.append(_number(f) if f else None)
        if i == 0:
            # what the row is about: never folded or cut, however narrow the terminal
            cells = [len(_cell(v, None)) for v in shown[c].astype(object)]
            t.add_column(str(c), no_wrap=True, overflow="ignore", min_width=max([len(str(c)), *cells]),
                         justify="right" if numeric else "left")
        else:
            t.add_column(str(c), justify="right" if numeric else "left", overflow="fold")
    for row in shown.astype(object).itertuples(index=False, name=None):
        t.add_row(*(_cell(v, None if i == 0 else MAX_CELL) if f is None or _cell(v) == "" else f(v)
                    for i, (v, f) in enumerate(zip(row, formats, strict=True))))
    if len(df) == 0:
        console.print(Text(f"{name}: no rows" + (f" ({window})" if window else ""), style="dim"))
        return
    console.print(Text(title, style="italic"))
    console.print(t)
    if len(shown) < len(df):
        console.print(Text(f"… {fmt_count(len(df) - len(shown))} more rows (--limit N to show more, "
                           "--limit 0 for all)", style="dim"))
