"""ELF inspection (pyelftools): which architecture the binaries in an image are built for."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

# pyelftools' e_machine names -> the architecture names mkosi uses (uname -m style).
E_MACHINE = {
    "EM_X86_64": "x86_64", "EM_386": "x86", "EM_AARCH64": "aarch64", "EM_ARM": "arm",
    "EM_RISCV": "riscv64", "EM_PPC64": "ppc64le", "EM_S390": "s390x",
}

# Binaries every image with a userspace has, looked for in order.
PROBES = ("usr/lib/systemd/systemd", "usr/bin/sh", "bin/sh", "usr/bin/dash", "usr/bin/bash")


def elf_architecture(path: Path) -> Optional[str]:
    """The architecture an ELF file is built for, or None if it is not an ELF file."""

    try:
        with open(path, "rb") as f:
            machine = ELFFile(f).header["e_machine"]
    except (ELFError, OSError):
        return None
    return E_MACHINE.get(str(machine), str(machine))


def image_architecture(root: Path) -> Optional[str]:
    for rel in PROBES:
        p = root / rel
        if p.is_symlink():
            target = p.readlink()
            p = root / str(target).lstrip("/") if target.is_absolute() else p.parent / target
        if p.is_file():
            arch = elf_architecture(p)
            if arch is not None:
                return arch
    return None
