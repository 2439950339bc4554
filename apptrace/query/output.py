"""Results on the terminal: rich tables, CSV, or one JSON object mapping each display name to its rows."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd


def _cell(v: Any) -> str:
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
    s = str(v)
    return s if len(s) <= 200 else s[:197] + "..."


def _jsonable(v: Any) -> Any:
    import pandas as pd

    if v is None or v is pd.NaT:
        return None
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else v
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


def write_outputs(outputs: Sequence[tuple[str, pd.DataFrame]], fmt: str, out: Any = None) -> None:
    import pandas as pd

    out = out or sys.stdout
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
    from rich.table import Table

    console = Console(file=out, width=None if out.isatty() else 200, soft_wrap=False)
    for name, df in outputs:
        t = Table(title=f"{name} ({len(df)} rows)", title_justify="left", header_style="bold cyan")
        for c in df.columns:
            t.add_column(str(c), justify="right" if pd.api.types.is_numeric_dtype(df[c]) else "left",
                         overflow="fold")
        for row in df.astype(object).itertuples(index=False, name=None):
            t.add_row(*(_cell(v) for v in row))
        console.print(t)
