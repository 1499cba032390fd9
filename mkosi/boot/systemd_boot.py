"""systemd-boot and Boot Loader Specification Type #1 entries in an ESP directory tree."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from mkosi.boot.uki import SYSTEMD_BOOT_EFI_DIR
from mkosi.errors import MkosiError

_ENTRY_ID_RE = re.compile(r"^[A-Za-z0-9._+-]+$")


def loader_conf_text(timeout: int = 0, default: str | None = None) -> str:
    lines = [f"timeout {timeout}"]
    if default:
        lines.append(f"default {default}")
    lines.append("editor no")
    return "\n".join(lines) + "\n"


def install_systemd_boot(
    esp_dir: Path,
    efi_arch: str = "x64",
    *,
    timeout: int = 0,
    default: str | None = None,
    source_dir: Path = SYSTEMD_BOOT_EFI_DIR,
    binary_name: str | None = None,
) -> None:
    """Copy systemd-boot into an ESP tree as EFI/systemd/systemd-boot<arch>.efi and as the
    removable-media fallback EFI/BOOT/BOOT<ARCH>.EFI, and write loader/loader.conf."""
    binary = source_dir / (binary_name or f"systemd-boot{efi_arch}.efi")
    if not binary.is_file():
        raise MkosiError(
            f"systemd-boot binary {binary} not found",
            hint="install it with: apt-get install systemd-boot-efi",
        )
    for d in ("EFI/systemd", "EFI/BOOT", "EFI/Linux", "loader/entries"):
        (esp_dir / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(binary, esp_dir / f"EFI/systemd/systemd-boot{efi_arch}.efi")
    shutil.copyfile(binary, esp_dir / f"EFI/BOOT/BOOT{efi_arch.upper()}.EFI")
    (esp_dir / "loader/loader.conf").write_text(loader_conf_text(timeout, default))


def bls_entry_text(
    title: str,
    linux: str,
    initrds: Sequence[str],
    cmdline: str,
    *,
    version: str | None = None,
    machine_id: str | None = None,
    sort_key: str | None = None,
    devicetree: str | None = None,
) -> str:
    """The text of a Boot Loader Specification Type #1 entry."""
    lines = [f"title {title}"]
    if version:
        lines.append(f"version {version}")
    if machine_id:
        lines.append(f"machine-id {machine_id}")
    if sort_key:
        lines.append(f"sort-key {sort_key}")
    lines.append(f"linux {linux}")
    lines += [f"initrd {i}" for i in initrds]
    if devicetree:
        lines.append(f"devicetree {devicetree}")
    if cmdline.strip():
        lines.append(f"options {' '.join(cmdline.split())}")
    return "\n".join(lines) + "\n"


def install_bls_entry(
    esp_dir: Path,
    entry_id: str,
    title: str,
    kernel: Path,
    initrd: Path | None,
    cmdline: str,
    *,
    version: str | None = None,
    machine_id: str | None = None,
    devicetree: Path | None = None,
) -> Path:
    """Copy kernel and initrd to /<entry_id>/ on the ESP and write loader/entries/<entry_id>.conf
    (Boot Loader Specification Type #1) referencing them. Returns the entry file."""
    if not _ENTRY_ID_RE.match(entry_id):
        raise MkosiError(f"invalid boot entry id {entry_id!r}", hint="use letters, digits and . _ + -")
    dest = esp_dir / entry_id
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(kernel, dest / "linux")
    initrds = []
    if initrd is not None:
        shutil.copyfile(initrd, dest / "initrd")
        initrds.append(f"/{entry_id}/initrd")
    dtb = None
    if devicetree is not None:
        shutil.copyfile(devicetree, dest / devicetree.name)
        dtb = f"/{entry_id}/{devicetree.name}"
    entries = esp_dir / "loader/entries"
    entries.mkdir(parents=True, exist_ok=True)
    entry = entries / f"{entry_id}.conf"
    entry.write_text(
        bls_entry_text(title, f"/{entry_id}/linux", initrds, cmdline, version=version, machine_id=machine_id,
                       devicetree=dtb)
    )
    return entry
