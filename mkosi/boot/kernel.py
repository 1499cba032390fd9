"""Finding what a root tree boots with: its newest kernel, its os-release file, the systemd-boot
binaries it ships. Everything takes a root directory; nothing needs a disk image."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from mkosi.errors import MkosiError

# The EFI names of the architectures mkosi knows (systemd-boot<ARCH>.efi, BOOT<ARCH>.EFI).
EFI_ARCH = {"x86_64": "x64", "aarch64": "aa64", "x86": "ia32", "arm": "arm", "riscv64": "riscv64"}

# Where systemd ships systemd-boot and the EFI stub, relative to a root.
EFI_DIR = Path("usr/lib/systemd/boot/efi")


@dataclasses.dataclass(frozen=True)
class BootFiles:
    """What a boot loader entry or a unified kernel image is made of: plain files and strings."""

    kernel: Path
    version: str
    initrd: Path
    cmdline: str
    os_release: Path
    efi_dir: Path     # systemd-boot<ARCH>.efi and linux<ARCH>.efi.stub
    efi_arch: str     # x64, aa64, ...
    extra_sections: tuple[tuple[str, Path], ...] = ()   # UKI sections before .initrd (.splash, .dtb, .dtbauto)
    devicetrees: tuple[Path, ...] = ()                  # Devicetrees=: what matched (a Type #1 entry takes one)
    devicetree_patterns: tuple[str, ...] = ()

    @property
    def systemd_boot(self) -> Path:
        return self.efi_dir / f"systemd-boot{self.efi_arch}.efi"

    @property
    def stub(self) -> Path:
        return self.efi_dir / f"linux{self.efi_arch}.efi.stub"


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    parts: list[tuple[int, int | str]] = []
    for piece in re.findall(r"\d+|[A-Za-z]+|[~]", version):
        if piece.isdigit():
            parts.append((2, int(piece)))
        elif piece == "~":
            parts.append((0, ""))
        else:
            parts.append((1, piece))
    return tuple(parts)


def kernel_candidates(root: Path) -> dict[str, Path]:
    """Every kernel of a root tree by version: /usr/lib/modules/VERSION/vmlinuz and /boot/vmlinuz-VERSION
    (the latter wins for the same version)."""
    candidates: dict[str, Path] = {}
    modules = root / "usr/lib/modules"
    if modules.is_dir():
        for d in modules.iterdir():
            if (d / "vmlinuz").is_file():
                candidates[d.name] = d / "vmlinuz"
    boot = root / "boot"
    if boot.is_dir():
        for f in boot.glob("vmlinuz-*"):
            if f.is_file():
                candidates[f.name[len("vmlinuz-") :]] = f
    return candidates


def find_kernel(root: Path) -> tuple[Path, str]:
    """Find the newest kernel in a root tree: /boot/vmlinuz-VERSION (Debian, Ubuntu) or
    /usr/lib/modules/VERSION/vmlinuz (Fedora, Arch, ...). Returns (path, version)."""
    candidates = kernel_candidates(root)
    if not candidates:
        raise MkosiError(
            f"no kernel found in {root} (looked for boot/vmlinuz-* and usr/lib/modules/*/vmlinuz)",
            hint="add a kernel package (e.g. linux-image-amd64) to the image's packages",
        )
    version = max(candidates, key=version_key)
    return candidates[version], version


def find_os_release(root: Path) -> Path:
    """/etc/os-release of a root, or /usr/lib/os-release where /etc has none."""
    osr = root / "etc/os-release"
    return osr if osr.exists() else root / "usr/lib/os-release"


def efi_arch(architecture: str) -> str:
    return EFI_ARCH.get(architecture, "x64")


def boot_files(root: Path, initrd: Path, cmdline: str, architecture: str) -> BootFiles:
    """The newest kernel of `root` with the given initrd and command line, and the root's EFI binaries."""
    kernel, version = find_kernel(root)
    return BootFiles(kernel=kernel, version=version, initrd=initrd, cmdline=cmdline,
                     os_release=find_os_release(root), efi_dir=root / EFI_DIR, efi_arch=efi_arch(architecture))
