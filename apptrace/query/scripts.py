"""px scripts: the shipped ones (queries/*.pxl), finding one by name or path, and running it.

A script is Python with ``px`` imported; it ends with ``px.display(df, 'name')``, or defines
``main(...)`` whose arguments come from ``--arg K=V`` converted to their annotated types.
"""

from __future__ import annotations

import importlib.resources
import inspect
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any


class UserError(Exception):
    """A one-line message for the user (a broken script, a bad argument); exit status 2."""


def shipped_scripts() -> dict[str, Any]:
    """name → Traversable of each queries/*.pxl."""
    root = importlib.resources.files("apptrace.queries")
    return {p.name[:-4]: p for p in sorted(root.iterdir(), key=lambda p: p.name) if p.name.endswith(".pxl")}


def script_description(source: str) -> str:
    import ast

    try:
        doc = ast.get_docstring(ast.parse(source)) or ""
    except SyntaxError:
        return "(does not parse)"
    return doc.strip().splitlines()[0] if doc.strip() else ""


def resolve_script(spec: str) -> tuple[str, str]:
    """SCRIPT as given → (display path, source).

    A name is a shipped script, never a file of the current directory (a stray ./http_stats must not
    run as root in its place); the user's own script is given as a path, with a slash in it.
    """
    if os.sep in spec:
        try:
            with open(spec, encoding="utf-8") as f:
                return spec, f.read()
        except OSError as e:
            raise UserError(f"cannot read {spec}: {e.strerror}") from None
    scripts = shipped_scripts()
    name = spec[:-4] if spec.endswith(".pxl") else spec
    if name in scripts:
        return f"queries/{name}.pxl", scripts[name].read_text(encoding="utf-8")
    hint = f"; for the file here, say ./{spec}" if os.path.exists(spec) else ""
    raise UserError(f"no shipped script {spec!r} ({', '.join(scripts)}){hint}")


def parse_kv(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k.strip():
            raise UserError(f"--arg {it!r}: expected NAME=VALUE")
        out[k.strip()] = v
    return out


def _script_error(path: str, e: BaseException) -> UserError:
    from apptrace.query.px import PxError

    if isinstance(e, SyntaxError) and (e.filename in (path, None)):
        return UserError(f"{path}:{e.lineno}: SyntaxError: {e.msg}")
    line = None
    for fs in traceback.extract_tb(e.__traceback__):
        if fs.filename == path:
            line = fs.lineno
    where = getattr(e, "where", None)  # the step the database rejected, rather than the px.display that ran it
    if where and where[0] == path:
        line = where[1]
    msg = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, PxError):
        msg = f"{type(e).__name__}: {msg}"
    where = f"{path}:{line}: " if line else f"{path}: "
    return UserError(where + msg)


def run_script(spec: str, db: str, args: dict[str, str] | None = None, backend: Any = None,
               print_sql: bool = False) -> list[tuple[str, Any]]:
    """Run a px script; the list of (display name, result) — or, with print_sql, of (display name, SQL) without
    running any query. Raises UserError with the script's line."""
    import apptrace.query.px as px

    # The shipped px, always: a px/ folder (or px.py) where the script runs must not stand in for it, and an
    # earlier import of such a one is replaced while the script runs.
    previous = sys.modules.get("px")
    sys.modules["px"] = px
    try:
        return _run(spec, db, args, backend, print_sql)
    finally:
        if previous is not None:
            sys.modules["px"] = previous


def _run(spec: str, db: str, args: dict[str, str] | None, backend: Any, print_sql: bool) -> list[tuple[str, Any]]:
    import apptrace.query.px as px
    from apptrace.query.px.session import session

    path, source = resolve_script(spec)
    args = dict(args or {})
    with session(db=db, backend=backend, collect=True, args=args, print_sql=print_sql) as s:
        g: dict[str, Any] = {"px": px, "__name__": "__pxl__", "__file__": path, "__builtins__": __builtins__}
        try:
            code = compile(source, path, "exec")
            exec(code, g)  # noqa: S102 - running the user's script is the point
            main = g.get("main")
            if callable(main):
                kwargs = _main_kwargs(main, args, path)
                result = main(**kwargs)
                if isinstance(result, px.DataFrame):
                    px.display(result)
                elif isinstance(result, dict):
                    for name, df in result.items():
                        px.display(df, name=name)
            else:
                unused = sorted(set(args) - s.used_args)
                if unused:
                    raise UserError(f"{path}: unknown --arg {', '.join(unused)}; this script reads "
                                    f"{', '.join(sorted(s.used_args)) or 'no arguments'}")
        except UserError:
            raise
        except Exception as e:
            raise _script_error(path, e) from None
        return list(s.sql) if print_sql else list(s.outputs)


def _main_kwargs(main: Any, args: dict[str, str], path: str) -> dict[str, Any]:
    from apptrace.query.px import convert_arg

    sig = inspect.signature(main)
    params = sig.parameters
    unknown = sorted(set(args) - set(params))
    if unknown:
        raise UserError(f"{path}: unknown --arg {', '.join(unknown)}; main() takes "
                        f"{', '.join(params) or 'no arguments'}")
    out = {}
    for name, p in params.items():
        if name in args:
            ann = p.annotation
            if isinstance(ann, str):
                ann = {"int": int, "float": float, "str": str, "bool": bool}.get(ann, str)
            if ann is inspect.Parameter.empty:
                ann = type(p.default) if p.default not in (inspect.Parameter.empty, None) else str
            out[name] = convert_arg(name, args[name], ann)
        elif p.default is inspect.Parameter.empty:
            raise UserError(f"{path}: main() needs --arg {name}=VALUE")
    return out
