"""An HPACK field walker that survives an unknown dynamic table (attached mid-connection, or after a gap).

hpack.Decoder raises on a dynamic index it never saw inserted. Here such fields are
skipped and the block is reported partial. The walker keeps its own dynamic table of the
entries inserted since it started: those are the *newest* entries, so they sit at the
lowest dynamic indices (62…) and are exactly right; anything beyond them is unknown. Older,
unknown entries are evicted first, so ours only go when they alone exceed the table size.
Static table and Huffman decoding come from hpack.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

_STATIC = HeaderTable.STATIC_TABLE
_NSTATIC = len(_STATIC)
_ENTRY_OVERHEAD = 32  # RFC 7541 §4.1


class _Truncated(Exception):
    pass


def _int(block: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    mask = (1 << prefix_bits) - 1
    if pos >= len(block):
        raise _Truncated
    v = block[pos] & mask
    pos += 1
    if v < mask:
        return v, pos
    shift = 0
    for _ in range(5):  # 2^35 is far beyond any sane index or length
        if pos >= len(block):
            raise _Truncated
        b = block[pos]
        pos += 1
        v += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return v, pos
    raise _Truncated


def _str(block: bytes, pos: int) -> tuple[bytes | None, int]:
    """A string literal; None (with the position still advanced) if its Huffman code is bad."""
    if pos >= len(block):
        raise _Truncated
    huff = block[pos] & 0x80
    n, pos = _int(block, pos, 7)
    end = pos + n
    if end > len(block):
        raise _Truncated
    raw = block[pos:end]
    if not huff:
        return bytes(raw), end
    try:
        return decode_huffman(raw), end
    except Exception:
        return None, end


class TolerantDecoder:
    """Decodes header blocks; returns (fields it could decode, whether any were lost)."""

    def __init__(self, max_size: int = 4096, max_list: int = 256 * 1024) -> None:
        self.max_list = max_list  # decoded bytes per block: a few index bytes can expand a lot
        self.entries: deque[tuple[bytes | None, bytes | None, int]] = deque()  # newest first
        self.size = 0
        self.max_size = max_size

    def _lookup(self, idx: int) -> tuple[bytes | None, bytes | None]:
        if 1 <= idx <= _NSTATIC:
            return _STATIC[idx - 1]
        k = idx - _NSTATIC - 1
        if 0 <= k < len(self.entries):
            name, value, _ = self.entries[k]
            return name, value
        return None, None

    def _insert(self, name: bytes | None, value: bytes | None) -> None:
        # An unknown name or value still occupies a slot; its size is a guess (32 + what we know).
        size = _ENTRY_OVERHEAD + len(name or b"") + len(value or b"")
        self.entries.appendleft((name, value, size))
        self.size += size
        self._evict()

    def _evict(self) -> None:
        while self.entries and self.size > self.max_size:
            self.size -= self.entries.pop()[2]

    def forget(self) -> None:
        """Our entries' positions are no longer known (a block was cut short)."""
        self.entries.clear()
        self.size = 0

    def decode(self, block: bytes) -> tuple[list[tuple[bytes, bytes]], bool]:
        out: list[tuple[bytes, bytes]] = []
        partial = False
        pos = 0
        n = len(block)
        size = 0
        try:
            while pos < n:
                if size > self.max_list:
                    raise _Truncated  # stop expanding; like a cut block, table positions are unknown

                b = block[pos]
                if b & 0x80:  # indexed field
                    idx, pos = _int(block, pos, 7)
                    name, value = self._lookup(idx)
                    if name is None or value is None:
                        partial = True
                    else:
                        out.append((name, value))
                        size += len(name) + len(value)
                    continue
                if b & 0xE0 == 0x20:  # dynamic table size update
                    self.max_size, pos = _int(block, pos, 5)
                    self._evict()
                    continue
                indexing = b & 0xC0 == 0x40
                idx, pos = _int(block, pos, 6 if indexing else 4)
                if idx:
                    name, _ = self._lookup(idx)
                else:
                    name, pos = _str(block, pos)
                value, pos = _str(block, pos)
                if indexing:
                    self._insert(name, value)
                if name is None or value is None:
                    partial = True
                else:
                    out.append((name, value))
                    size += len(name) + len(value)
        except _Truncated:
            # The rest of the block may have inserted entries we did not see: positions are now unknown.
            self.forget()
            partial = True
        return out, partial
