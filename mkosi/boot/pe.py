"""Just enough PE/COFF parsing to lay out new sections after those of an existing EFI binary."""

from __future__ import annotations

import dataclasses
import re
import shutil
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi.errors import MkosiError

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B


@dataclasses.dataclass(frozen=True)
class PESection:
    name: str
    virtual_size: int
    virtual_address: int
    raw_size: int
    raw_offset: int
    characteristics: int

    @property
    def virtual_end(self) -> int:
        """The first RVA after this section once loaded (whichever of the two sizes is larger)."""
        return self.virtual_address + max(self.virtual_size, self.raw_size)


@dataclasses.dataclass(frozen=True)
class PEImage:
    machine: int
    magic: int
    image_base: int
    section_alignment: int
    file_alignment: int
    size_of_image: int
    size_of_headers: int
    sections: tuple[PESection, ...]

    def section(self, name: str) -> PESection | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None


def _parse_sections(data: bytes, table: int, count: int) -> tuple[PESection, ...]:
    """The section table: `count` entries of 40 bytes from offset `table`."""
    if table + count * 40 > len(data):
        raise MkosiError("truncated PE section table")
    sections = []
    for i in range(count):
        raw_name, vsize, vaddr, rsize, roff, _relocs, _lines, _nrelocs, _nlines, chars = struct.unpack_from(
            "<8sIIIIIIHHI", data, table + i * 40
        )
        name = raw_name.rstrip(b"\0").decode("ascii", errors="replace")
        sections.append(PESection(name, vsize, vaddr, rsize, roff, chars))
    return tuple(sections)


def parse_pe(data: bytes) -> PEImage:
    """Parse the DOS stub, COFF file header, optional header and section table of a PE image."""
    if len(data) < 0x40 or data[:2] != b"MZ":
        raise MkosiError("not a PE image: missing 'MZ' signature")
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    if pe_offset + 24 > len(data) or data[pe_offset : pe_offset + 4] != b"PE\0\0":
        raise MkosiError("not a PE image: missing 'PE' signature")
    coff = pe_offset + 4
    machine, nsections, _timestamp, _symtab, _nsyms, opt_size, _chars = struct.unpack_from(
        "<HHIIIHH", data, coff
    )
    opt = coff + 20
    if opt + opt_size > len(data):
        raise MkosiError("truncated PE optional header")
    (magic,) = struct.unpack_from("<H", data, opt)
    if magic == PE32PLUS_MAGIC:
        (image_base,) = struct.unpack_from("<Q", data, opt + 24)
    elif magic == PE32_MAGIC:
        (image_base,) = struct.unpack_from("<I", data, opt + 28)
    else:
        raise MkosiError(f"unknown PE optional header magic {magic:#x}")
    # These offsets are the same for PE32 and PE32+.
    section_alignment, file_alignment = struct.unpack_from("<II", data, opt + 32)
    size_of_image, size_of_headers = struct.unpack_from("<II", data, opt + 56)

    sections = _parse_sections(data, opt + opt_size, nsections)
    return PEImage(
        machine=machine,
        magic=magic,
        image_base=image_base,
        section_alignment=section_alignment,
        file_alignment=file_alignment,
        size_of_image=size_of_image,
        size_of_headers=size_of_headers,
        sections=sections,
    )


def read_pe(path: Path) -> PEImage:
    with path.open("rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:2] != b"MZ":
            raise MkosiError(f"{path}: not a PE image")
        (pe_offset,) = struct.unpack_from("<I", head, 0x3C)
        f.seek(pe_offset + 4)
        coff = f.read(20)
        if len(coff) < 20:
            raise MkosiError(f"{path}: truncated PE header")
        _machine, nsections = struct.unpack_from("<HH", coff, 0)
        (opt_size,) = struct.unpack_from("<H", coff, 16)
        f.seek(0)
        data = f.read(pe_offset + 4 + 20 + opt_size + nsections * 40)
    try:
        return parse_pe(data)
    except MkosiError as e:
        raise MkosiError(f"{path}: {e}")


# IMAGE_SCN_CNT_INITIALIZED_DATA | IMAGE_SCN_MEM_READ: what a UKI's data sections are.
DATA_SECTION_FLAGS = 0x40000040

_SECTION_HEADER = struct.Struct("<8sIIIIIIHHI")


def _header_offsets(data: bytes) -> tuple[int, int, int, int]:
    """(COFF header, optional header, optional header size, section table) offsets."""
    (pe_offset,) = struct.unpack_from("<I", data, 0x3C)
    coff = pe_offset + 4
    (opt_size,) = struct.unpack_from("<H", data, coff + 16)
    return coff, coff + 20, opt_size, coff + 20 + opt_size


def _align(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def header_room(pe: PEImage, data: bytes) -> int:
    """How many more section headers fit between the section table and the first section's data."""
    _, _, _, table = _header_offsets(data)
    end = table + 40 * len(pe.sections)
    limit = min([pe.size_of_headers, *(s.raw_offset for s in pe.sections if s.raw_size)])
    return max(0, (limit - end) // 40)


def append_sections(stub: Path, sections: Sequence[tuple[str, int, Path]], output: Path) -> None:
    """Write `output`: the PE image `stub` with one new initialized, read-only data section per
    (name, rva, file), in order, the file's contents as its data. Names may repeat (the sections of
    multi-profile UKIs do). The RVAs come from the caller (see uki_layout()); the file data is appended
    at the stub's file alignment, and the headers (section count, size of the image and of its
    initialized data) are updated. The checksum is cleared: nothing checks it, and signing sets it."""
    data = bytearray(stub.read_bytes())
    pe = parse_pe(bytes(data))
    coff, opt, opt_size, table = _header_offsets(bytes(data))
    if header_room(pe, bytes(data)) < len(sections):
        raise MkosiError(f"the EFI stub {stub} has room for {header_room(pe, bytes(data))} more PE sections, "
                         f"{len(sections)} are needed", hint="use a newer systemd EFI stub (ToolsTree=)")
    # A signed stub's certificate table would no longer match; the data directory entry 4 points at it.
    cert_dir = opt + (112 if pe.magic == PE32PLUS_MAGIC else 96) + 4 * 8
    if opt_size >= cert_dir - opt + 8 and struct.unpack_from("<II", data, cert_dir) != (0, 0):
        raise MkosiError(f"the EFI stub {stub} is signed; it must be unsigned to add sections to it")
    align = max(pe.file_alignment, 1)
    offset = _align(len(data), align)
    end_rva = pe.size_of_image
    initialized = 0
    headers = []
    for name, rva, path in sections:
        size = path.stat().st_size
        raw = _align(size, align)
        headers.append(_SECTION_HEADER.pack(name.encode(), size, rva, raw, offset, 0, 0, 0, 0, DATA_SECTION_FLAGS))
        offset += raw
        end_rva = max(end_rva, rva + size)
        initialized += raw
    first = table + 40 * len(pe.sections)
    for i, h in enumerate(headers):
        data[first + 40 * i : first + 40 * (i + 1)] = h
    struct.pack_into("<H", data, coff + 2, len(pe.sections) + len(sections))
    (size_init,) = struct.unpack_from("<I", data, opt + 8)
    struct.pack_into("<I", data, opt + 8, (size_init + initialized) & 0xFFFFFFFF)
    struct.pack_into("<I", data, opt + 56, _align(end_rva, max(pe.section_alignment, 1)))
    struct.pack_into("<I", data, opt + 64, 0)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("wb") as out:
        out.write(data)
        out.write(bytes(_align(len(data), align) - len(data)))
        for _name, _rva, path in sections:
            with path.open("rb") as f:
                shutil.copyfileobj(f, out)
            size = path.stat().st_size
            out.write(bytes(_align(size, align) - size))


def stub_version(path: Path) -> Optional[tuple[int, ...]]:
    """The systemd version of an EFI stub from its .sdmagic section ("#### LoaderInfo: systemd-stub 257.9 ####")."""
    data = path.read_bytes()
    pe = parse_pe(data)
    magic = pe.section(".sdmagic")
    if magic is None:
        return None
    text = data[magic.raw_offset : magic.raw_offset + magic.virtual_size].decode("ascii", errors="replace")
    m = re.search(r"systemd-(?:stub|addon) (\d+)(?:\.(\d+))?", text)
    if m is None:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)
