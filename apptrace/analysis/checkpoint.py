"""What analysis commits beside its rows, so that a process killed at any moment resumes exactly.

Rows are drawn from spool frames by a pipeline whose connections hold state that spans frames
and segments: a request whose head came in one segment and its response in the next, an HTTP/2
connection's HPACK tables, a PostgreSQL session's prepared statements. So the unit of progress
is not a frame but (where reading stopped in the spool, the pipeline's whole state there). Each
commit stores both in the same DuckDB transaction as the rows drawn since the last one
(``Store.flush(checkpoint=...)``). After a crash, analysis restores the pipeline and reads on
from that position: every row before it is in the DB once, every row after it is drawn once
more from frames nobody had committed, and no row is emitted twice. A segment is deleted only
after a commit that reaches past it, so what was not committed is still on disk.

The state is a pickle of the ``Pipeline``, compressed. What is not state is left out and
given back on restore: the sink, the row printer, the ``--service`` rules (lambdas), and the
contents of the parsers' shared caches (every entry is a function of its key, so an empty
cache gives the same rows; the caches themselves, and the HPACK state counter, are kept).
zlib's decompressors cannot be pickled: a compressed body being decoded at the moment of a
commit is restored with a decoder that fails, and the parser shows the rest of that body as
it came on the wire (its own fallback for a body it cannot decode).
"""

from __future__ import annotations

import importlib
import io
import pickle
import sys
import types
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from apptrace.analysis.pipeline import Pipeline
from apptrace.analysis.services import parse_service_rules
from apptrace.analysis.sinks import Sink
from apptrace.protocols.common import BoundedCache, Memo

_DECOMPRESSOR = type(zlib.decompressobj())
_PROTOCOLS = "apptrace.protocols"
#: values that pickle as themselves or by name anyway
_PLAIN = (int, float, str, bytes, bool, type(None), type, types.FunctionType, types.BuiltinFunctionType,
          types.ModuleType)
#: the Pipeline attributes that are wiring, not state: set again by ``restore``
_WIRING = ("sink", "on_rows", "tap", "service_rules")


@dataclass(frozen=True)
class Checkpoint:
    """One commit's progress: run ``run`` of the spool was read up to ``offset`` in segment ``seq``.

    ``state`` is the pipeline there (``snapshot``); None says the run was analysed to its end,
    so its segments left on disk only wait to be deleted.
    """

    run: str
    seq: int
    offset: int
    state: bytes | None


class LostDecompressor:
    """Stands for a zlib decompressor a checkpoint could not keep: it fails, and the parser's own
    fallback for an undecodable body takes over."""

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:  # noqa: ARG002 - zlib's signature
        raise zlib.error("decoder state was not kept across a restart")

    def flush(self, length: int = 0) -> bytes:  # noqa: ARG002
        raise zlib.error("decoder state was not kept across a restart")


def _empty_cache(limit: int) -> BoundedCache:
    return BoundedCache(limit)


def _empty_memo(limit: int, compute: Callable[[Any], Any], keep: Callable[[Any], bool] | None) -> Memo:
    return Memo(limit, compute, keep)


def _by_name(value: Any) -> bool:
    """Pickled as itself, or by its import name, anyway."""
    if isinstance(value, types.FunctionType):
        return "<locals>" not in value.__qualname__
    return isinstance(value, _PLAIN)


def _module_objects() -> dict[int, tuple]:
    """The parsers' module-level objects (handler tables, value renderers, shared constants), and what their
    dicts and lists hold, by identity: a snapshot names them instead of copying them (some are closures,
    which pickle cannot copy)."""
    out: dict[int, tuple] = {}
    for name, module in list(sys.modules.items()):
        if module is None or not (name == _PROTOCOLS or name.startswith(_PROTOCOLS + ".")):
            continue
        for attr, value in vars(module).items():
            if not _by_name(value):
                out.setdefault(id(value), (name, attr))
            if type(value) is dict:
                items = value.items()
            elif type(value) in (list, tuple):
                items = enumerate(value)
            else:
                continue
            for key, item in items:
                if not _by_name(item):
                    out.setdefault(id(item), (name, attr, key))
    return out


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self._named = _module_objects()

    def persistent_id(self, obj: Any) -> Any:
        return self._named.get(id(obj))

    def reducer_override(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is BoundedCache:
            return _empty_cache, (obj.limit,)
        if kind is Memo:
            return _empty_memo, (obj.limit, obj.compute, obj.keep)
        if kind is _DECOMPRESSOR:
            return LostDecompressor, ()
        return NotImplemented


def snapshot(pipeline: Pipeline) -> bytes:
    """The pipeline's state, once ``drain`` has handed everything to the sink."""
    wiring = {name: getattr(pipeline, name) for name in _WIRING}
    for name in _WIRING:
        setattr(pipeline, name, None)
    try:
        out = io.BytesIO()
        _Pickler(out).dump(pipeline)
    finally:
        for name, value in wiring.items():
            setattr(pipeline, name, value)
    return zlib.compress(out.getvalue(), 1)


class _Unpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        module, attr, *key = pid
        if not (module == _PROTOCOLS or module.startswith(_PROTOCOLS + ".")):
            raise pickle.UnpicklingError(f"a checkpoint names {module}.{attr}, not a parser's object")
        value = getattr(importlib.import_module(module), attr)
        return value[key[0]] if key else value


def restore(state: bytes, sink: Sink, *, service_rules: list[str] | None = None,
            on_rows: Callable[[str, list[dict]], None] | None = None) -> Pipeline:
    """The pipeline ``snapshot`` saved, wired to ``sink`` (the DB only this process writes: root's, 0600)."""
    pipeline = _Unpickler(io.BytesIO(zlib.decompress(state))).load()
    if not isinstance(pipeline, Pipeline):
        raise ValueError("the checkpoint does not hold a pipeline")
    pipeline.sink = sink
    pipeline.on_rows = on_rows
    pipeline.tap = None
    pipeline.service_rules = parse_service_rules(service_rules or [])
    return pipeline
