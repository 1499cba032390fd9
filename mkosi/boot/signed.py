"""The distribution's boot loader binaries of Bootloader=grub-signed and uki-signed and of ShimBootloader=:
EFI binaries the image's distribution ships (shim, MokManager, GRUB, unified kernel images), found in the
image tree and copied to the ESP as they are. mkosi signs none of the signed ones; the UKIs it builds
itself, and an unsigned shim, it signs with SecureBoot=."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi.boot.grub import GRUB_EFI_TARGETS, grub_shim_config_text
from mkosi.boot.kernel import version_key
from mkosi.errors import MkosiError

# Where distributions put their signed binaries, relative to the image root ({arch}: x64, aa64 ...;
# {target}: x86_64-efi ...; {uefi_arch}: x86_64, aarch64). Debian and Ubuntu first, then the EFI
# directories of Fedora and openSUSE (filled by their packages in /boot/efi), then openSUSE's share.
SIGNED_GRUB_PATHS = (
    "usr/lib/grub/{target}-signed/grub{arch}.efi.signed",
    "boot/efi/EFI/*/grub{arch}.efi",
    "usr/share/efi/{uefi_arch}/grub.efi",
)
SIGNED_SHIM_PATHS = (
    "usr/lib/shim/shim{arch}.efi.signed.latest",
    "usr/lib/shim/shim{arch}.efi.signed",
    "boot/efi/EFI/*/shim{arch}.efi",
    "usr/share/efi/{uefi_arch}/shim.efi",
)
SIGNED_MOK_MANAGER_PATHS = (
    "usr/lib/shim/mm{arch}.efi.signed",
    "boot/efi/EFI/*/mm{arch}.efi",
    "usr/share/efi/{uefi_arch}/MokManager.efi",
)
# Debian's shim-unsigned, Fedora's shim-unsigned-x64.
UNSIGNED_SHIM_PATHS = (
    "usr/lib/shim/shim{arch}.efi",
    "usr/share/shim/*/{arch}/shim{arch}.efi",
)
UNSIGNED_MOK_MANAGER_PATHS = (
    "usr/lib/shim/mm{arch}.efi",
    "usr/share/shim/*/{arch}/mm{arch}.efi",
)
# Pre-built signed UKIs: Fedora's kernel-uki-virt installs /usr/lib/modules/VERSION/vmlinuz-virt.efi.
SIGNED_UKI_GLOBS = ("usr/lib/modules/*/*.efi", "boot/efi/EFI/Linux/*.efi")

UEFI_ARCHES = {"x64": "x86_64", "aa64": "aarch64", "ia32": "i386"}


def _candidates(root: Path, patterns: Sequence[str], efi_arch: str) -> list[Path]:
    target = GRUB_EFI_TARGETS.get(efi_arch, f"{efi_arch}-efi")
    found: list[Path] = []
    for pattern in patterns:
        rel = pattern.format(arch=efi_arch, target=target, uefi_arch=UEFI_ARCHES.get(efi_arch, efi_arch))
        found += sorted(p for p in root.glob(rel) if p.is_file())
    return found


def find_binary(root: Path, patterns: Sequence[str], efi_arch: str) -> Optional[Path]:
    """The first EFI binary of the image matching `patterns` (a signed one, or the unsigned shim)."""
    found = _candidates(root, patterns, efi_arch)
    return found[0] if found else None


def install_grub_signed(esp: Path, root: Path, efi_arch: str, distribution_id: str, config_text: str) -> Path:
    """The distribution's signed GRUB as the firmware's default EFI/BOOT/BOOT<ARCH>.EFI (ShimBootloader=
    puts shim in front of it). Signed GRUB builds read EFI/<distribution>/grub.cfg (their prefix), or the
    grub.cfg next to them; both lead to grub/grub.cfg. Returns the installed binary."""
    grub = find_binary(root, SIGNED_GRUB_PATHS, efi_arch)
    if grub is None:
        raise MkosiError("Bootloader=grub-signed: the image has no signed GRUB EFI binary",
                         hint="add the distribution's signed GRUB to Packages= (grub-efi-amd64-signed on Debian)")
    boot = esp / "EFI/BOOT"
    boot.mkdir(parents=True, exist_ok=True)
    default = boot / f"BOOT{efi_arch.upper()}.EFI"
    shutil.copyfile(grub, default)
    grub_dir = esp / "grub"
    grub_dir.mkdir(parents=True, exist_ok=True)
    (grub_dir / "grub.cfg").write_text(config_text)
    vendor = esp / "EFI" / distribution_id
    vendor.mkdir(parents=True, exist_ok=True)
    (vendor / "grub.cfg").write_text(grub_shim_config_text())
    (boot / "grub.cfg").write_text(grub_shim_config_text())
    return default


def install_shim(esp: Path, root: Path, efi_arch: str, signed: bool) -> list[Path]:
    """ShimBootloader=: shim becomes the firmware's default binary EFI/BOOT/BOOT<ARCH>.EFI, and what the
    boot loader had put there moves to grub<arch>.efi next to it, the second stage shim starts; MokManager
    (mm<arch>.efi) beside them when the image has it. Returns the binaries mkosi may sign (the unsigned
    shim and MokManager; none of the signed ones)."""
    shims = SIGNED_SHIM_PATHS if signed else UNSIGNED_SHIM_PATHS
    managers = SIGNED_MOK_MANAGER_PATHS if signed else UNSIGNED_MOK_MANAGER_PATHS
    kind = "signed" if signed else "unsigned"
    shim = find_binary(root, shims, efi_arch)
    if shim is None:
        raise MkosiError(f"ShimBootloader={kind}: the image has no {kind} shim{efi_arch}.efi",
                         hint=f"add the distribution's {kind} shim to Packages= "
                              f"({'shim-signed' if signed else 'shim-unsigned'} on Debian)")
    boot = esp / "EFI/BOOT"
    default = boot / f"BOOT{efi_arch.upper()}.EFI"
    if not default.is_file():
        raise MkosiError("ShimBootloader= needs a boot loader for shim to start", hint="set Bootloader=")
    second = boot / f"grub{efi_arch}.efi"
    default.rename(second)
    shutil.copyfile(shim, default)
    installed = [default]
    manager = find_binary(root, managers, efi_arch)
    if manager is not None:
        shutil.copyfile(manager, boot / f"mm{efi_arch}.efi")
        installed.append(boot / f"mm{efi_arch}.efi")
    return [] if signed else installed


def _uki_version(path: Path) -> str:
    return path.parent.name if path.parent.parent.name == "modules" else path.stem


def find_signed_uki(root: Path, bootloader: str = "uki-signed",
                    hint: str = "use Bootloader=uki to have mkosi build one") -> Path:
    """The pre-built signed UKI of the image's newest kernel."""
    found = sorted((p for pattern in SIGNED_UKI_GLOBS for p in root.glob(pattern) if p.is_file()),
                   key=lambda p: version_key(_uki_version(p)))
    if not found:
        raise MkosiError(f"Bootloader={bootloader}: the image has no pre-built signed unified kernel image "
                         f"(looked for {' and '.join('/' + g for g in SIGNED_UKI_GLOBS)})",
                         hint=f"install the distribution's signed UKI package (kernel-uki-virt on Fedora), or {hint}")
    return found[-1]


def install_uki_signed(esp: Path, root: Path, efi_arch: str) -> Path:
    """The distribution's signed UKI as the firmware's default binary, like Bootloader=uki."""
    uki = find_signed_uki(root)
    target = esp / f"EFI/BOOT/BOOT{efi_arch.upper()}.EFI"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(uki, target)
    return target
