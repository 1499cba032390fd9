"""Just enough PE/COFF parsing to lay out new sections after those of an existing EFI binary."""

from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

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
