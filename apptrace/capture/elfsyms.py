"""Find SSL_read/SSL_write[_ex] in an ELF object by symbol lookup (pyelftools), and Go's crypto/tls (gosyms).

The object can be OpenSSL's libssl.so.*, BoringSSL's libssl.so.0, or an executable
that links either statically (node). Offsets are *file* offsets, which is what a
uprobe on a file needs, computed from the symbol's virtual address and the PT_LOAD
segment that holds it.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.hash import ELFHashSection, GNUHashSection

from apptrace.capture.gosyms import GoLayout, GoUnsupported, find_go_tls

# The probes apptrace attaches; the _ex pair and SSL_set_fd are optional.
REQUIRED = ("SSL_write", "SSL_read")
OPTIONAL = ("SSL_write_ex", "SSL_read_ex", "SSL_set_fd")
# Functions only BoringSSL exports, to tell it from OpenSSL.
BORINGSSL_MARKERS = ("SSL_set_renegotiate_mode", "SSL_CTX_set_grease_enabled", "SSL_get_curve_name")
# __FILE__ strings OpenSSL and BoringSSL keep in their error tables: a TLS implementation is
# present even when its symbols were stripped (grpcio's bundled BoringSSL, for example).
TLS_SOURCE_MARKERS = (b"ssl/ssl_lib.c", b"ssl_lib.cc", b"ssl/statem/statem_clnt.c", b"handshake_client.cc")


@dataclass(frozen=True)
class TlsObject:
    """An ELF object with probe-able TLS functions."""

    path: str  # a path the kernel can open (through /proc/PID/root for containers)
    dev: int
    ino: int
    tls_lib: str  # 'openssl', 'boringssl' or 'go'
    offsets: dict[str, int] = field(hash=False)  # function name -> file offset
    # Go only: each function's RET instructions (file offsets), the *tls.Conn -> fd field
    # offsets (gosyms.GoLayout) and the Go version the program was built with.
    returns: dict[str, tuple[int, ...]] = field(default_factory=dict, hash=False)
    go_layout: GoLayout | None = field(default=None, hash=False)
    version: str = ""


@dataclass(frozen=True)
class Unprobeable:
    """An object that holds a TLS implementation we cannot probe, and why."""

    path: str
    reason: str


def _symbol_tables(elf: ELFFile) -> list:
    tables = []
    for name in (".gnu.hash", ".hash"):
        sec = elf.get_section_by_name(name)
        if isinstance(sec, GNUHashSection | ELFHashSection):
            tables.append(sec)
            break
    return tables


def _lookup_hashed(tables: list, name: str):
    for table in tables:
        sym = table.get_symbol(name)
        if sym is not None and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
            return sym
    return None


_SYM64 = struct.Struct("<IBBHQQ")  # Elf64_Sym: st_name, st_info, st_other, st_shndx, st_value, st_size


def _lookup_symtab(elf: ELFFile, names: set[str]) -> dict[str, int]:
    """Find ``names`` in .symtab (symbols not exported: static binaries, hidden copies of OpenSSL).

    pyelftools parses each symbol as an object, which takes seconds on a big library; here the
    string table is searched for the names first and only the matching entries are decoded.
    """
    found: dict[str, int] = {}
    sec = elf.get_section_by_name(".symtab")
    if sec is None or not elf.elfclass == 64 or not elf.little_endian:
        return found
    strtab = elf.get_section(sec["sh_link"]).data()
    wanted: dict[int, str] = {}
    for name in names:
        needle = b"\0" + name.encode() + b"\0"
        start = 0
        while (i := strtab.find(needle, start)) != -1:
            wanted[i + 1] = name
            start = i + 1
    if not wanted:
        return found
    for st_name, _info, _other, shndx, value, _size in _SYM64.iter_unpack(sec.data()):
        name = wanted.get(st_name)
        if name is not None and shndx != 0 and value and name not in found:
            found[name] = value
    return found


def vaddr_to_offset(elf: ELFFile, vaddr: int) -> int | None:
    for seg in elf.iter_segments(type="PT_LOAD"):
        start = seg["p_vaddr"]
        if start <= vaddr < start + seg["p_filesz"]:
            return vaddr - start + seg["p_offset"]
    return None


def _mentions(path: str, needles: tuple[bytes, ...]) -> bool:
    """Does the file hold any of ``needles``? A memchr-speed search of the mapped file."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            return any(mm.find(n) != -1 for n in needles)
    except (OSError, ValueError):
        return False


# TLS libraries apptrace sees but does not capture, by file name: (name prefixes, what to call them)
OTHER_TLS_LIBRARIES = (
    (("libgnutls.so",), "GnuTLS"),
    (("libssl3.so", "libnss3.so"), "NSS"),
    (("libwolfssl.so",), "wolfSSL"),
    (("libmbedtls.so",), "Mbed TLS"),
)
NOT_CAPTURED = "apptrace captures OpenSSL and BoringSSL only"
GO_BUILDINFO_MAGIC = b"\xff Go buildinf:"
GO_TLS_FUNCTION = b"crypto/tls.(*Conn).Read"  # its name stays in .gopclntab, stripped or not
_EHDR64 = struct.Struct("<16xHHIQQQIHHHHHH")  # e_type … e_shstrndx, after e_ident


def _section_names(f) -> bytes:
    """The section-name string table of an ELF64 file (b"" when it is none): a few small reads, no parsing."""
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return b""
    _t, _m, _v, _entry, _phoff, shoff, _flags, _ehsize, _phes, _phn, shentsize, shnum, shstrndx = \
        _EHDR64.unpack(head)
    if not shoff or shstrndx >= shnum or shentsize < 64:
        return b""
    f.seek(shoff + shstrndx * shentsize)
    sh = f.read(64)
    if len(sh) < 64:
        return b""
    offset, size = struct.unpack_from("<QQ", sh, 24)
    f.seek(offset)
    return f.read(min(size, 1 << 20))


def go_version(path: str) -> str | None:
    """The Go version a Go executable was built with ('go1.19.8'), '' for a Go binary whose build info does
    not say, or None when ``path`` is no Go program."""
    try:
        with open(path, "rb") as f:
            names = _section_names(f)
            if b".gopclntab\0" not in names and b".go.buildinfo\0" not in names:
                return None
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    with mm:
        at = mm.find(GO_BUILDINFO_MAGIC)
        if at < 0 or at + 33 > len(mm) or not mm[at + 15] & 2:
            return ""  # before Go 1.18 the version sits behind pointers; not worth following here
        n, shift, i = 0, 0, at + 32
        while i < len(mm) and i < at + 42:  # a uvarint length, then the string
            b = mm[i]
            n |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        return mm[i:i + min(n, 64)].decode(errors="replace")


def _other_tls(path: str) -> Unprobeable | None:
    """A TLS implementation apptrace does not capture (GnuTLS, NSS…), named with the reason."""
    base = os.path.basename(path)
    for prefixes, name in OTHER_TLS_LIBRARIES:
        if base.startswith(prefixes):
            return Unprobeable(path, f"{name}: not captured ({NOT_CAPTURED})")
    return None


def _go_tls(path: str) -> TlsObject | Unprobeable | None:
    """Go's crypto/tls, compiled into a Go program: its probe points, or why it can't be probed."""
    version = go_version(path)
    if version is None or not _mentions(path, (GO_TLS_FUNCTION,)):
        return None
    label = f"Go {version or '(version unknown)'} crypto/tls"
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            found = find_go_tls(f, version, vaddr_to_offset)
    except GoUnsupported as exc:
        return Unprobeable(path, f"{label}: {exc}")
    except OSError:
        return None
    return TlsObject(path=path, dev=st.st_dev, ino=st.st_ino, tls_lib="go", offsets=found.entries,
                     returns=found.returns, go_layout=found.layout, version=version)


def inspect(path: str) -> TlsObject | Unprobeable | None:
    """Return the TLS functions of ``path``, an ``Unprobeable`` if it holds TLS we can't probe, or None."""
    other = _other_tls(path) or _go_tls(path)
    if other is not None:
        return other
    # Most mapped objects (libc, libpython, big C++ libraries) mention neither the functions nor
    # OpenSSL's source files, and are dismissed without parsing their symbol tables.
    named = _mentions(path, (b"SSL_write\0",))
    if not named and not _mentions(path, TLS_SOURCE_MARKERS):
        return None
    try:
        st = os.stat(path)
        with open(path, "rb") as f:
            elf = ELFFile(f)
            tables = _symbol_tables(elf)
            wanted = REQUIRED + OPTIONAL + BORINGSSL_MARKERS
            vaddrs: dict[str, int] = {}
            for name in wanted:
                sym = _lookup_hashed(tables, name)
                if sym is not None:
                    vaddrs[name] = sym["st_value"]
            if not set(REQUIRED) <= vaddrs.keys() and named:
                vaddrs.update(_lookup_symtab(elf, set(wanted) - vaddrs.keys()))
            if not set(REQUIRED) <= vaddrs.keys():
                # Naming SSL_write may only mean importing it (libcurl, libpq, servers): only the
                # implementation's own source-file strings say the code is in here, stripped.
                if _mentions(path, TLS_SOURCE_MARKERS):
                    return Unprobeable(path, "holds a TLS implementation but no SSL_read/SSL_write symbols (stripped)")
                return None
            offsets = {}
            for name in REQUIRED + OPTIONAL:
                if name in vaddrs:
                    off = vaddr_to_offset(elf, vaddrs[name])
                    if off is not None:
                        offsets[name] = off
            if not set(REQUIRED) <= offsets.keys():
                return Unprobeable(path, "SSL_read/SSL_write symbols lie outside every loadable segment")
            kind = "boringssl" if any(m in vaddrs for m in BORINGSSL_MARKERS) else "openssl"
            return TlsObject(path=path, dev=st.st_dev, ino=st.st_ino, tls_lib=kind, offsets=offsets)
    except (ELFError, ValueError, OSError):
        return None


class SymbolCache:
    """Per-file results keyed by (dev, inode, mtime, size): each file is read once per run."""

    def __init__(self) -> None:
        self._cache: dict[tuple[int, int, int, int], TlsObject | Unprobeable | None] = {}

    def forget(self, st: os.stat_result) -> None:
        """Drop the result for the file ``st`` described: it vanished while it was read (its process exited)."""
        self._cache.pop((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size), None)

    def inspect(self, path: str) -> TlsObject | Unprobeable | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        key = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
        if key not in self._cache:
            try:
                self._cache[key] = inspect(path)
            except OSError:
                self._cache[key] = None
        return self._cache[key]
