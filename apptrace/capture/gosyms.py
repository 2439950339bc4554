"""Find crypto/tls.(*Conn).Read and (*Conn).Write in a Go executable, stripped or not.

Function names, entry addresses and bounds come from ``.gopclntab``: the runtime needs it for
tracebacks, so ``-ldflags="-s -w"`` keeps it, and one reader serves stripped and unstripped
binaries alike. Each function is disassembled (capstone) to find its RET instructions: Go
moves goroutine stacks, so the return is probed there instead of with a uretprobe.

The BPF side walks *tls.Conn → net.Conn → *net.netFD → pfd.Sysfd to find the socket; the field
offsets come from the binary's DWARF when it has some, else from ``LAYOUTS_BY_VERSION``.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

import capstone
from elftools.common.exceptions import DWARFError, ELFError
from elftools.elf.elffile import ELFFile

READ, WRITE = "crypto/tls.(*Conn).Read", "crypto/tls.(*Conn).Write"
# .gopclntab header magics of the layouts this reader knows (runtime/symtab.go, pcHeader).
PCLNTAB_GO118, PCLNTAB_GO120 = 0xFFFFFFF0, 0xFFFFFFF1
EM_X86_64 = 62


@dataclass(frozen=True)
class GoLayout:
    """Byte offsets of the fields from a *tls.Conn to its socket fd (struct go_layout in the BPF)."""

    conn_iface: int  # crypto/tls.Conn.conn (a net.Conn interface)
    netconn_fd: int  # net.TCPConn.conn.fd (*net.netFD)
    netfd_sysfd: int  # net.netFD.pfd.Sysfd


# For binaries without DWARF (stripped). The 1.19 entry was read from go1.19.8's DWARF (the
# version Debian ships, which the tests build); the others are the same fields of the same
# structs in the Go sources of those releases (tls.Conn.conn first, net.conn{fd},
# netFD{pfd}, poll.FD{fdmu fdMutex (16 bytes), Sysfd}), not run here.
_STABLE = GoLayout(conn_iface=0, netconn_fd=0, netfd_sysfd=16)
LAYOUTS_BY_VERSION = {f"go1.{minor}": _STABLE for minor in range(18, 24)}
VERIFIED_VERSIONS = ("go1.19",)


@dataclass(frozen=True)
class GoTls:
    """The probe points of one Go executable, as file offsets."""

    entries: dict[str, int]  # function name -> file offset of its first instruction
    returns: dict[str, tuple[int, ...]]  # function name -> file offsets of its RET instructions
    layout: GoLayout
    layout_source: str  # 'dwarf' or 'version table'


class GoUnsupported(Exception):
    """A Go binary apptrace cannot probe; the message says why."""


@dataclass(frozen=True)
class GoFunction:
    name: str
    entry: int  # virtual address
    end: int  # virtual address past its last byte (the next function's entry)


def release(version: str) -> str:
    """'go1.19' from 'go1.19.8' (and from 'go1.21rc2'): the table's key."""
    m = re.match(r"go1\.(\d+)", version)
    return f"go1.{m.group(1)}" if m else version


def pclntab_functions(elf: ELFFile, names: set[str]) -> dict[str, GoFunction]:
    """Entry and end of the functions called ``names``, from .gopclntab (Go 1.18+ layout)."""
    sec = elf.get_section_by_name(".gopclntab")
    if sec is None:
        raise GoUnsupported("no .gopclntab section")
    tab = sec.data()
    if len(tab) < 8:
        raise GoUnsupported(".gopclntab is truncated")
    magic, _pad1, _pad2, _min_lc, ptr_size = struct.unpack_from("<IBBBB", tab, 0)
    if magic not in (PCLNTAB_GO118, PCLNTAB_GO120):
        raise GoUnsupported(f".gopclntab magic {magic:#x}: a layout before Go 1.18, not read by apptrace")
    if ptr_size != 8:
        raise GoUnsupported(f".gopclntab of a {ptr_size * 8}-bit program")
    nfunc, _nfiles, text_start, funcname_off, _cu, _filetab, _pctab, pcln_off = struct.unpack_from("<8Q", tab, 8)
    if not text_start:
        # Position-independent builds fill it in by relocation at run time; .text is where it points.
        text = elf.get_section_by_name(".text")
        text_start = text["sh_addr"] if text is not None else 0
    wanted: dict[int, str] = {}
    for name in names:
        needle = name.encode() + b"\0"
        start = funcname_off
        while (i := tab.find(needle, start)) != -1:
            if tab[i - 1] == 0 or i == funcname_off:  # a whole name, not the tail of a longer one
                wanted[i - funcname_off] = name
            start = i + 1
    found: dict[str, GoFunction] = {}
    if not wanted:
        return found
    functab_end = pcln_off + (nfunc + 1) * 8
    if functab_end > len(tab):
        raise GoUnsupported(".gopclntab function table runs past the section")
    pairs = list(struct.iter_unpack("<II", tab[pcln_off:functab_end]))
    for i in range(nfunc):
        entry_off, func_off = pairs[i]
        name_off = struct.unpack_from("<i", tab, pcln_off + func_off + 4)[0]
        name = wanted.get(name_off)
        if name is not None:
            found[name] = GoFunction(name, text_start + entry_off, text_start + pairs[i + 1][0])
    return found


def return_addresses(code: bytes, address: int) -> tuple[int, ...]:
    """Addresses of the RET instructions in one function's machine code (x86-64)."""
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    rets = []
    decoded = 0
    for insn_address, size, mnemonic, _ops in md.disasm_lite(code, address):
        decoded += size
        if mnemonic == "ret":
            rets.append(insn_address)
    if decoded != len(code):
        # A RET past an undecodable byte would be missed, and its return never seen.
        raise GoUnsupported(f"cannot decode the instruction at {address + decoded:#x}")
    return tuple(rets)


def dwarf_layout(elf: ELFFile) -> GoLayout | None:
    """The field offsets from the binary's DWARF, or None when it has none (stripped).

    Go puts every type in one compile unit; walking all of its DIEs takes seconds, and a
    program started after the tracer must be probed within milliseconds. Go writes a type's
    name inline (DW_FORM_string) right after its one-byte abbreviation code, so each struct is
    found by its name's bytes and parsed alone, then checked to be that struct.
    """
    if not elf.has_dwarf_info():
        return None
    try:
        # An executable's DWARF needs no relocation, and looking for relocations costs a third of the time.
        dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False, follow_links=False)
        if dwarf.debug_info_sec is None:  # some DWARF sections (.debug_line, .debug_frame) but no types
            return None
        stream = dwarf.debug_info_sec.stream
        stream.seek(0)
        info = stream.read()
    except (DWARFError, ELFError, ValueError, OSError):
        return None

    def members(struct_name: str) -> dict[str, int]:
        needle = struct_name.encode() + b"\0"
        start = 0
        while (i := info.find(needle, start)) != -1:
            start = i + 1
            try:
                die = dwarf.get_DIE_from_refaddr(i - 1)
            except (DWARFError, KeyError, ValueError, IndexError, AssertionError):
                continue
            name = die.attributes.get("DW_AT_name")
            if die.tag != "DW_TAG_structure_type" or name is None or name.value != needle[:-1]:
                continue
            out = {}
            for child in die.iter_children():
                loc = child.attributes.get("DW_AT_data_member_location")
                child_name = child.attributes.get("DW_AT_name")
                if child.tag == "DW_TAG_member" and loc is not None and child_name is not None:
                    out[child_name.value.decode()] = loc.value
            return out
        raise KeyError(struct_name)

    try:
        tls_conn = members("crypto/tls.Conn")
        tcp_conn = members("net.TCPConn")
        net_conn = members("net.conn")
        net_fd = members("net.netFD")
        poll_fd = members("internal/poll.FD")
        return GoLayout(conn_iface=tls_conn["conn"], netconn_fd=tcp_conn["conn"] + net_conn["fd"],
                        netfd_sysfd=net_fd["pfd"] + poll_fd["Sysfd"])
    except KeyError:
        return None  # a struct or field missing: the version table decides


def find_go_tls(f, version: str, vaddr_to_offset) -> GoTls:
    """The probe points of the Go executable open as ``f``, built with Go ``version`` ('' if unknown).

    Raises GoUnsupported naming why it cannot be probed."""
    try:
        elf = ELFFile(f)
        if elf["e_machine"] != "EM_X86_64":
            raise GoUnsupported(f"{elf['e_machine']} binaries are not probed (x86-64 only)")
        functions = pclntab_functions(elf, {READ, WRITE})
        missing = {READ, WRITE} - functions.keys()
        if missing:
            raise GoUnsupported(f"{', '.join(sorted(missing))} not in .gopclntab")
        entries: dict[str, int] = {}
        returns: dict[str, tuple[int, ...]] = {}
        for name, fn in functions.items():
            entry = vaddr_to_offset(elf, fn.entry)
            if entry is None or fn.end <= fn.entry:
                raise GoUnsupported(f"{name} lies outside every loadable segment")
            f.seek(entry)
            rets = return_addresses(f.read(fn.end - fn.entry), fn.entry)
            if not rets:
                raise GoUnsupported(f"{name} has no RET instruction to probe")
            entries[name] = entry
            returns[name] = tuple(entry + (r - fn.entry) for r in rets)
        layout = dwarf_layout(elf)
        source = "dwarf"
        if layout is None:
            layout = LAYOUTS_BY_VERSION.get(release(version))
            source = "version table"
            if layout is None:
                raise GoUnsupported(f"no DWARF, and the struct layout of {version or 'an unknown Go version'} "
                                    f"is not known (tested: {', '.join(VERIFIED_VERSIONS)})")
        return GoTls(entries, returns, layout, source)
    except (ELFError, struct.error) as exc:
        raise GoUnsupported(f"unreadable Go binary: {exc}") from None
