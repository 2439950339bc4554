"""The house rules on imports, checked on the whole tree: no cycle, and every arrow points down.

cli → capture / analysis / query / demo → contract / protocols / store → common. A package may
import its own modules and any package of a lower layer; never one of its own layer (capture and
analysis meet only through the contract) and never one above. protocols/ imports nothing from
apptrace, bcc or duckdb. Imports inside functions and under TYPE_CHECKING count: they are
dependencies too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: checkout folder -> the package name it is installed as (see setup.py)
TREES = {"apptrace": "apptrace", "protocols": "apptrace.protocols", "bpf": "apptrace.bpf",
         "queries": "apptrace.queries", "px": "px"}

LAYERS = {
    "apptrace": 0,  # the root package: a version string, imports nothing
    "apptrace.common": 0,
    "apptrace.contract": 1,
    "apptrace.protocols": 1,
    "apptrace.store": 1,
    "apptrace.bpf": 1,
    "apptrace.queries": 1,
    "apptrace.capture": 2,
    "apptrace.analysis": 2,
    "apptrace.query": 2,
    "apptrace.demo": 2,
    "apptrace.cli": 3,
    "apptrace.__main__": 4,
    "px": 4,  # `import px` for scripts: an alias of apptrace.query.px
}


def modules() -> dict[str, Path]:
    out = {}
    for folder, package in TREES.items():
        for path in (ROOT / folder).rglob("*.py"):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


def imports(name: str, path: Path) -> set[str]:
    """Every module name ``name`` imports (absolute, relative ones resolved), wherever in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def owner(name: str, known: dict[str, Path]) -> str | None:
    """The module of ours ``name`` refers to (``from pkg import mod`` names a module or an attribute)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def layer_package(module: str) -> str:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return best


def graph() -> dict[str, set[str]]:
    known = modules()
    edges: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = {owner(t, known) for t in imports(name, path)}
        edges[name] = {t for t in targets if t and t != name and not name.startswith(t + ".")}
    return edges


def test_the_tree_is_where_the_layers_say() -> None:
    unplaced = [m for m in modules() if not any(m == p or m.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"modules in no layer (add their package to LAYERS): {unplaced}"


def test_every_import_points_down() -> None:
    bad = []
    for src, targets in graph().items():
        src_pkg = layer_package(src)
        for dst in targets:
            dst_pkg = layer_package(dst)
            if dst_pkg == src_pkg or dst_pkg == "apptrace":
                continue
            if LAYERS[dst_pkg] >= LAYERS[src_pkg]:
                way = "sideways" if LAYERS[dst_pkg] == LAYERS[src_pkg] else "up"
                bad.append(f"{src} -> {dst} ({way}: {src_pkg} is layer {LAYERS[src_pkg]}, "
                           f"{dst_pkg} layer {LAYERS[dst_pkg]})")
    assert not bad, "imports against the layers:\n" + "\n".join(sorted(bad))


def test_no_import_cycles() -> None:
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_protocols_is_sans_io() -> None:
    known = modules()
    bad = []
    for name, path in known.items():
        if not name.startswith("apptrace.protocols"):
            continue
        for t in imports(name, path):
            top = t.split(".")[0]
            if top in ("bcc", "duckdb") or (t.startswith("apptrace") and not t.startswith("apptrace.protocols")):
                bad.append(f"{name} imports {t}")
    assert not bad, "protocols/ must import nothing from apptrace, bcc or duckdb:\n" + "\n".join(bad)


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_import_px_leaves_the_writer_and_bcc_unloaded(tmp_path: Path) -> None:
    proc = _python("import sys, px; df = px.DataFrame('http_events'); print(df.to_sql()[:6]); "
                   "print(sorted(m for m in sys.modules if m in ('apptrace.store.writer', 'bcc', "
                   "'apptrace.capture.loader', 'apptrace.analysis.pipeline')))", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == "[]", proc.stdout


@pytest.mark.parametrize("name", ["protocols", "bpf", "queries"])
def test_only_apptrace_and_px_are_top_level_names(tmp_path: Path, name: str) -> None:
    # From a directory other than the checkout, as an installed apptrace is imported.
    assert _python(f"import apptrace.{name}", tmp_path).returncode == 0
    proc = _python(f"import {name}", tmp_path)
    assert proc.returncode != 0 and "No module named" in proc.stderr, f"`import {name}` works: it would clash"
