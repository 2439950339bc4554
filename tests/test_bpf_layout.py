"""bpf/tls_capture.c's records and enums against the decoders in apptrace.contract.events.

The C side is read from the C file itself: its enums and the two ring-buffer records are cut
out and compiled with gcc into a small program that prints every offset, size and value. No
layout is typed twice, so a change to one side alone fails here, naming the field. Needs gcc
(installed by scripts/setup.sh), not root or BCC.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from apptrace.contract import events

BPF_SOURCE = Path(__file__).resolve().parent.parent / "bpf" / "tls_capture.c"
RECORDS = ("data_event", "meta_event")
# Any power of two will do for the loader's placeholders: only data[] is sized by one, and
# it is the record's tail.
PLACEHOLDER_VALUE = 4096
# The Python names of the loss counters, by C name: the two sides name them differently.
LOSS_NAMES = {
    "LOSS_EVENTS": "lost_events",
    "LOSS_BYTES": "lost_bytes",
    "LOSS_TRUNCATED": "truncated_bytes",
    "LOSS_CALLS": "untracked_calls",
    "LOSS_READ_FAULTS": "read_faults",
    "LOSS_UNFOLLOWED_FORKS": "unfollowed_forks",
}
C_PRELUDE = """\
typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef signed char s8;
typedef short s16;
typedef int s32;
typedef long long s64;
int printf(const char *, ...);
"""


@dataclass(frozen=True)
class CField:
    name: str
    offset: int
    size: int
    is_array: bool
    signed: bool  # meaningless for arrays


@dataclass
class CLayout:
    sizes: dict[str, int] = field(default_factory=dict)
    fields: dict[str, list[CField]] = field(default_factory=dict)
    enums: dict[str, dict[str, int]] = field(default_factory=dict)
    defines: dict[str, int] = field(default_factory=dict)

    def field(self, record: str, name: str) -> CField:
        for f in self.fields[record]:
            if f.name == name:
                return f
        raise AssertionError(f"struct {record} has no field {name!r}")


@dataclass(frozen=True)
class PyItem:
    index: int  # among the format's items, pad bytes not counted
    code: str
    offset: int
    size: int


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def fill_placeholders(text: str) -> str:
    return re.sub(r"\b__[A-Z][A-Z0-9_]*__\b", str(PLACEHOLDER_VALUE), text)


def extract_struct(text: str, name: str) -> str:
    m = re.search(rf"^struct {name}\s*\{{.*?^\}};", text, flags=re.S | re.M)
    assert m, f"struct {name} not found in {BPF_SOURCE.name}"
    return m.group(0)


def extract_enums(text: str) -> list[tuple[str | None, str]]:
    """(name or None, whole definition) of every top-level enum."""
    return [(m.group(1), m.group(0))
            for m in re.finditer(r"^enum(?:\s+(\w+))?\s*\{[^}]*\}\s*;", text, flags=re.M)]


def enum_constants(definition: str) -> list[str]:
    body = definition[definition.index("{") + 1 : definition.rindex("}")]
    return [part.split("=")[0].strip() for part in body.split(",") if part.strip()]


def object_defines(text: str) -> list[tuple[str, str]]:
    """Single-line, object-like #defines: the ones the records and enums may use."""
    return re.findall(r"^#define\s+(\w+)[ \t]+([^\\\n]+)$", text, flags=re.M)


def struct_fields(definition: str) -> list[tuple[str, bool]]:
    """(name, is_array) of each field, in order."""
    body = definition[definition.index("{") + 1 : definition.rindex("}")]
    out = []
    for decl in body.split(";"):
        decl = " ".join(decl.split())
        if not decl:
            continue
        m = re.fullmatch(r"[\w ]+?\s(\w+)\s*(\[[^\]]+\])?", decl)
        assert m, f"cannot read the field declaration {decl!r}"
        out.append((m.group(1), m.group(2) is not None))
    return out


def c_program(source: str) -> str:
    """A C program printing the layout of the records and the values of the named enums."""
    text = fill_placeholders(strip_comments(source))
    defines = object_defines(text)
    enums = extract_enums(text)
    records = {name: extract_struct(text, name) for name in RECORDS}
    lines = [C_PRELUDE]
    lines += [f"#define {name} {value}" for name, value in defines]
    lines += [definition for _, definition in enums]
    lines += list(records.values())
    lines.append("int main(void) {")
    for record, definition in records.items():
        s = f"struct {record}"
        lines.append(f'    printf("size {record} %lu\\n", (unsigned long)sizeof({s}));')
        for name, is_array in struct_fields(definition):
            member = f"(({s} *)0)->{name}"
            signed = "0" if is_array else f"((__typeof__({member}))-1 < 0)"
            lines.append(f'    printf("field {record} {name} %lu %lu {int(is_array)} %d\\n", '
                         f"(unsigned long)__builtin_offsetof({s}, {name}), "
                         f"(unsigned long)sizeof({member}), (int){signed});")
    for enum_name, definition in enums:
        if enum_name is None:  # kernel values: no counterpart in Python
            continue
        for const in enum_constants(definition):
            lines.append(f'    printf("enum {enum_name} {const} %lld\\n", (long long){const});')
    for name, _ in defines:
        if name == "DATA_HDR_SIZE":
            lines.append(f'    printf("define {name} %lld\\n", (long long){name});')
    lines += ["    return 0;", "}", ""]
    return "\n".join(lines)


def c_layout(source: str, workdir: Path) -> CLayout:
    gcc = shutil.which("gcc") or shutil.which("cc")
    if gcc is None:
        pytest.fail("gcc is needed to read the C layouts (scripts/setup.sh installs it)")
    c_file, exe = workdir / "layout.c", workdir / "layout"
    c_file.write_text(c_program(source))
    build = subprocess.run([gcc, "-std=gnu11", "-o", str(exe), str(c_file)], capture_output=True, text=True)
    assert build.returncode == 0, f"the extracted C does not compile:\n{build.stderr}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    layout = CLayout()
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind == "size":
            layout.sizes[rest[0]] = int(rest[1])
        elif kind == "field":
            record, name, offset, size, is_array, signed = rest
            layout.fields.setdefault(record, []).append(
                CField(name, int(offset), int(size), is_array == "1", signed == "1"))
        elif kind == "enum":
            layout.enums.setdefault(rest[0], {})[rest[1]] = int(rest[2])
        elif kind == "define":
            layout.defines[rest[0]] = int(rest[1])
    return layout


def format_items(fmt: struct.Struct) -> list[PyItem]:
    spec = fmt.format
    assert spec[0] in "<>!=", f"{spec!r}: a format without a byte order aligns like the host, not like C"
    items: list[PyItem] = []
    offset = 0
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", spec[1:]):
        n = int(count) if count else 1
        if code == "x":
            offset += n
        elif code in "sp":
            items.append(PyItem(len(items), f"{n}{code}", offset, n))
            offset += n
        else:
            size = struct.calcsize("<" + code)
            for _ in range(n):
                items.append(PyItem(len(items), code, offset, size))
                offset += size
    assert offset == fmt.size
    return items


def compare_fields(record: str, c_fields: list[CField], fmt_name: str, fmt: struct.Struct) -> list[str]:
    """What differs between the C fields (pad fields left out) and the format's items, field by field."""
    fields = [f for f in c_fields if not f.name.startswith("pad")]
    items = format_items(fmt)
    problems = []
    for f, item in zip(fields, items, strict=False):  # the leftovers are reported below
        where = f"struct {record}.{f.name} vs {fmt_name} item {item.index} ({item.code!r})"
        if (f.offset, f.size) != (item.offset, item.size):
            problems.append(f"{where}: C has offset {f.offset} size {f.size}, "
                            f"Python offset {item.offset} size {item.size}")
        elif f.is_array != (item.code[-1] in "sp"):
            problems.append(f"{where}: C {'array' if f.is_array else 'integer'} decoded as {item.code!r}")
        elif not f.is_array and f.signed != item.code.islower():
            sign = {True: "signed", False: "unsigned"}
            problems.append(f"{where}: C is {sign[f.signed]}, Python's {item.code!r} is {sign[item.code.islower()]}")
    for f in fields[len(items):]:
        problems.append(f"struct {record}.{f.name} (offset {f.offset}) has no item in {fmt_name}")
    for item in items[len(fields):]:
        problems.append(f"{fmt_name} item {item.index} ({item.code!r}, offset {item.offset}) "
                        f"has no field in struct {record}")
    return problems


def python_constants(prefix: str) -> dict[str, int]:
    return {name: value for name, value in vars(events).items()
            if name.startswith(prefix) and isinstance(value, int)}


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> CLayout:
    return c_layout(BPF_SOURCE.read_text(), tmp_path_factory.mktemp("bpf_layout"))


def test_data_event_header_matches_DATA_HDR(layout: CLayout) -> None:
    header = [f for f in layout.fields["data_event"] if f.name != "data"]
    problems = compare_fields("data_event", header, "DATA_HDR", events.DATA_HDR)
    assert not problems, "\n".join(problems)


def test_data_header_ends_where_the_plaintext_starts(layout: CLayout) -> None:
    data = layout.field("data_event", "data")
    assert layout.fields["data_event"][-1] == data, "data[] must be the record's tail: records are sent cut short"
    assert data.offset == layout.defines["DATA_HDR_SIZE"]
    assert events.DATA_HDR_SIZE == data.offset, "DATA_HDR_SIZE differs from offsetof(struct data_event, data)"
    assert events.DATA_HDR.size == data.offset, "DATA_HDR does not end where data_event.data starts"


def test_data_flags_word(layout: CLayout) -> None:
    flags = layout.field("data_event", "flags")
    assert flags.size == 4 and flags.offset % 4 == 0
    assert events.DATA_FLAGS_WORD == flags.offset // 4, "DATA_FLAGS_WORD is not data_event.flags' u32 word"


def test_data_pid_fd_len(layout: CLayout) -> None:
    # The hot-path format skips what it does not read, so its items are matched by name here.
    wanted = [layout.field("data_event", name) for name in ("tgid", "fd", "len")]
    problems = compare_fields("data_event", wanted, "DATA_PID_FD_LEN", events.DATA_PID_FD_LEN)
    assert not problems, "\n".join(problems)


def test_meta_event_matches_META(layout: CLayout) -> None:
    problems = compare_fields("meta_event", layout.fields["meta_event"], "META", events.META)
    assert not problems, "\n".join(problems)
    assert events.META.size == layout.sizes["meta_event"], "META does not cover all of struct meta_event"


@pytest.mark.parametrize(("enum", "prefix"), [
    ("event_type", "EV_"),
    ("data_flags", "FLAG_"),
    ("fd_source", "FD_"),
    ("direction", "DIR_"),
])
def test_enum_same_names_and_values(layout: CLayout, enum: str, prefix: str) -> None:
    assert layout.enums[enum] == python_constants(prefix), f"enum {enum} vs the {prefix}* constants"


def test_roles(layout: CLayout) -> None:
    c = layout.enums["role"]
    expected: dict[int, str | None] = {v: name.removeprefix("ROLE_").lower() for name, v in c.items()}
    expected[c["ROLE_UNKNOWN"]] = None
    assert events.ROLES == expected, "enum role vs ROLES"


def test_tls_libs(layout: CLayout) -> None:
    c = dict(layout.enums["tls_lib"])
    # TLS_LIB_NONE tags a plaintext socket's records: no library, decoded as None.
    assert c.pop("TLS_LIB_NONE") == events.TLS_LIB_NONE
    assert events.TLS_LIBS == {v: name.removeprefix("TLS_LIB_").lower() for name, v in c.items()}, \
        "enum tls_lib vs TLS_LIBS"
    # The loader attaches probe_<name>_* for each TLS_LIBS name: the C must define them under it.
    source = strip_comments(BPF_SOURCE.read_text())
    probes = re.findall(r"^DEFINE_TLS_PROBES\(\s*(\w+)\s*,\s*(\w+)\s*\)", source, flags=re.M)
    # Go's probes are their own (entry and RET uprobes, per layout slot), tagged TLS_LIB_GO.
    assert re.search(r"^DEFINE_GO_PROBES\(0\)", source, flags=re.M) and "c.tls_lib = TLS_LIB_GO;" in source
    assert sorted([*(lib for lib, _ in probes), "go"]) == sorted(events.TLS_LIBS.values())
    for lib, const in probes:
        assert events.TLS_LIBS.get(c.get(const, -1)) == lib, f"DEFINE_TLS_PROBES({lib}, {const})"


def test_loss_kinds(layout: CLayout) -> None:
    c = dict(layout.enums["loss_kind"])
    count = c.pop("LOSS_KINDS")
    assert count == len(events.LOSS_KINDS), "enum loss_kind and LOSS_KINDS count different kinds"
    assert set(c) == set(LOSS_NAMES), "a loss kind without a Python name in LOSS_NAMES, or one gone"
    assert {v: LOSS_NAMES[name] for name, v in c.items()} == dict(enumerate(events.LOSS_KINDS)), \
        "enum loss_kind's order vs LOSS_KINDS"


def test_a_changed_field_is_named(tmp_path: Path) -> None:
    # The checks above pass on agreement; this one makes sure they can also fail, and say where.
    source = BPF_SOURCE.read_text()
    record = extract_struct(source, "meta_event")
    m = re.search(r"^(\s*)u32 (\w+);", record, flags=re.M)
    assert m, "struct meta_event has no u32 field left to widen"
    broken = source.replace(record, record.replace(m.group(0), f"{m.group(1)}u64 {m.group(2)};", 1))
    problems = compare_fields("meta_event", c_layout(broken, tmp_path).fields["meta_event"], "META", events.META)
    assert problems and f"struct meta_event.{m.group(2)} " in problems[0]
