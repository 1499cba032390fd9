"""Filling an EFI system partition directory: systemd-boot with a unified kernel image or a Boot
Loader Specification entry, GRUB's configuration for BIOS boot, Secure Boot signatures. Takes the
boot files and options as plain values and writes files; no disk image is involved, so a disk
image's ESP and Format=esp can share it."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.grub import write_grub_config
from mkosi.boot.kernel import BootFiles
from mkosi.boot.signing import sign_tree
from mkosi.boot.systemd_boot import install_bls_entry, install_systemd_boot
from mkosi.boot.uki import make_uki, uki_file_name
from mkosi.config.enums import BootProtocol
from mkosi.config.settings import Config
from mkosi.errors import MkosiError


@dataclasses.dataclass(frozen=True)
class EspOptions:
    protocols: tuple[BootProtocol, ...]
    entry_id: str                    # names the UKI or the Type #1 entry
    title: str
    image_version: Optional[str] = None
    unified_kernel_image: bool = True
    secure_boot_key: Optional[Path] = None      # both set: sign every .efi file
    secure_boot_certificate: Optional[Path] = None

    @classmethod
    def from_config(cls, config: Config) -> EspOptions:
        sign = config.secure_boot
        return cls(protocols=tuple(config.boot_protocols), entry_id=config.image_id or "linux",
                   title=config.image_id or "Linux", image_version=config.image_version,
                   unified_kernel_image=config.with_unified_kernel_images,
                   secure_boot_key=config.secure_boot_key if sign else None,
                   secure_boot_certificate=config.secure_boot_certificate if sign else None)


def _install_uefi(esp: Path, files: BootFiles, options: EspOptions) -> Optional[Path]:
    """systemd-boot plus a UKI (returned) or a Type #1 entry."""
    if not files.systemd_boot.exists():
        raise MkosiError("the image has no systemd-boot EFI binaries", hint="add systemd-boot-efi to Packages=")
    install_systemd_boot(esp, files.efi_arch, source_dir=files.efi_dir)
    if not options.unified_kernel_image:
        install_bls_entry(esp, f"{options.entry_id}-{files.version}", options.title, files.kernel, files.initrd,
                          files.cmdline, version=files.version)
        return None
    uki = esp / "EFI/Linux" / uki_file_name(options.entry_id, options.image_version, files.version)
    with log.step("Building the unified kernel image"):
        make_uki(files, uki)
    return uki


def _install_bios(esp: Path, files: BootFiles, title: str) -> None:
    """The kernel, initrd and grub.cfg that GRUB's core image (in the BIOS boot partition) loads."""
    shutil.copyfile(files.kernel, esp / "vmlinuz")
    shutil.copyfile(files.initrd, esp / "initrd")
    write_grub_config(esp / "grub", title=title, kernel="/vmlinuz", initrd="/initrd", cmdline=files.cmdline,
                      serial=True)


def populate_esp(esp: Path, files: BootFiles, options: EspOptions) -> Optional[Path]:
    """Fill the directory `esp` for the boot protocols of `options`; returns the UKI if one was made."""
    uki = None
    if BootProtocol.uefi in options.protocols:
        uki = _install_uefi(esp, files, options)
        if options.secure_boot_key is not None and options.secure_boot_certificate is not None:
            sign_tree(esp, options.secure_boot_key, options.secure_boot_certificate)
    if BootProtocol.bios in options.protocols:
        _install_bios(esp, files, options.title)
    return uki
