"""Bootable=yes: initrd, kernel command line, the ESP contents (UKI or Boot Loader Specification
entries with systemd-boot), GRUB for BIOS, the direct-kernel-boot files, Secure Boot signing."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.enums import BootProtocol, Verity
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.outputs import output_stem
from mkosi.run import run
from mkosi.sandbox import nspawn_command


@dataclasses.dataclass(frozen=True)
class VerityInfo:
    """A verity-protected root: its root hash and the partition UUIDs derived from it."""

    roothash: str
    data_partuuid: str
    hash_partuuid: str


EFI_ARCH = {"x86_64": "x64", "aarch64": "aa64", "x86": "ia32", "arm": "arm", "riscv64": "riscv64"}


def build_initrd(ctx: Context, version: str) -> Path:
    """dracut inside the image, for the image's kernel."""
    initrd = ctx.root / f"boot/initrd.img-{version}"
    if not (ctx.root / "usr/bin/dracut").exists():
        raise MkosiError("Bootable=yes needs dracut in the image", hint="add dracut to Packages=")
    flags = ["--hostonly"] if ctx.config.hostonly_initrd else ["--no-hostonly", "--no-hostonly-cmdline"]
    if ctx.config.verity != Verity.no:
        flags += ["--add", "systemd-veritysetup"]
    with log.step(f"Building the initrd for kernel {version} with dracut"):
        # zstd: the kernel unpacks it, and it is much faster than dracut's default gzip -9.
        run(nspawn_command(ctx.root, ["dracut", "--quiet", "--force", *flags, "--compress=zstd -q -T0 -10",
                                      "--kver", version,
                                      f"/boot/initrd.img-{version}"],
                           keep_unit=ctx.config.nspawn_keep_unit, network=False))
    return initrd


def command_line(ctx: Context, root_label: str, verity: Optional[VerityInfo] = None) -> str:
    from mkosi.boot import kernel_cmdline

    extra = []
    root = f"PARTLABEL={root_label}"
    if verity is not None:
        # The initrd's systemd-veritysetup-generator opens the protected root as /dev/mapper/root.
        root = "/dev/mapper/root"
        extra += [f"roothash={verity.roothash}", f"systemd.verity_root_data=PARTUUID={verity.data_partuuid}",
                  f"systemd.verity_root_hash=PARTUUID={verity.hash_partuuid}"]
    if ctx.config.format.root_filesystem() == "btrfs" and ctx.config.compress_fs not in ("no", "none"):
        # mkfs.btrfs cannot compress what it writes; the kernel compresses what is written later.
        extra.append(f"rootflags=compress={ctx.config.compress_fs}")
    return kernel_cmdline([*ctx.config.kernel_command_line, *extra], root=root,
                          serial_console=ctx.config.qemu_headless, read_only=ctx.config.root_readonly)


def _sign_all(ctx: Context, esp: Path) -> None:
    from mkosi.boot import sign_efi

    config = ctx.config
    assert config.secure_boot_key is not None and config.secure_boot_certificate is not None
    with log.step("Signing EFI binaries for Secure Boot"):
        for binary in sorted(esp.rglob("*")):
            if binary.suffix.lower() == ".efi" and binary.is_file():
                sign_efi(binary, config.secure_boot_key, config.secure_boot_certificate)


def prepare_esp(ctx: Context, root_label: str, verity: Optional[VerityInfo] = None) -> Path:
    """Fill a directory with what goes on the ESP; also writes the linux boot files to staging."""
    from mkosi.boot import build_uki, find_kernel, install_bls_entry, install_systemd_boot, write_grub_config

    config = ctx.config
    if verity is None and config.verity != Verity.no:
        raise MkosiError("Bootable=yes with Verity= needs the root hash of the root partition")
    kernel, version = find_kernel(ctx.root)
    initrd = ctx.root / f"boot/initrd.img-{version}"
    if not (config.cache_initrd and ctx.cached_image_reused and initrd.exists()):
        initrd = build_initrd(ctx, version)
    cmdline = command_line(ctx, root_label, verity)
    osr = ctx.root / "etc/os-release"
    if not osr.exists():
        osr = ctx.root / "usr/lib/os-release"
    esp = ctx.dir("esp")
    entry = config.image_id or "linux"
    efi_arch = EFI_ARCH.get(config.architecture, "x64")
    protocols = config.boot_protocols

    if BootProtocol.uefi in protocols:
        efi_dir = ctx.root / "usr/lib/systemd/boot/efi"
        if not (efi_dir / f"systemd-boot{efi_arch}.efi").exists():
            raise MkosiError("the image has no systemd-boot EFI binaries", hint="add systemd-boot-efi to Packages=")
        install_systemd_boot(esp, efi_arch, source_dir=efi_dir)
        if config.with_unified_kernel_images:
            name = f"{entry}_{config.image_version}.efi" if config.image_version else f"{entry}-{version}.efi"
            uki = esp / "EFI/Linux" / name
            with log.step("Building the unified kernel image"):
                build_uki(efi_dir / f"linux{efi_arch}.efi.stub", kernel, initrd, cmdline, osr, uki, uname=version)
            shutil.copyfile(uki, ctx.workspace / "uki.efi")
        else:
            install_bls_entry(esp, f"{entry}-{version}", config.image_id or "Linux", kernel, initrd, cmdline,
                              version=version)
        if config.secure_boot:
            _sign_all(ctx, esp)
            if (ctx.workspace / "uki.efi").exists():
                shutil.copyfile(next((esp / "EFI/Linux").glob("*.efi")), ctx.workspace / "uki.efi")

    if BootProtocol.bios in protocols:
        shutil.copyfile(kernel, esp / "vmlinuz")
        shutil.copyfile(initrd, esp / "initrd")
        write_grub_config(esp / "grub", title=config.image_id or "Linux", kernel="/vmlinuz", initrd="/initrd",
                          cmdline=cmdline, serial=True)

    if BootProtocol.linux in protocols:
        stem = output_stem(config)
        shutil.copyfile(kernel, ctx.staging / f"{stem}.vmlinuz")
        shutil.copyfile(initrd, ctx.staging / f"{stem}.initrd")
        (ctx.staging / f"{stem}.cmdline").write_text(cmdline + "\n")
        ctx.extra_artifacts += [ctx.staging / f"{stem}{s}" for s in (".vmlinuz", ".initrd", ".cmdline")]
    return esp


def install_bios_boot(ctx: Context, image: Path) -> None:
    from mkosi.boot import install_grub_bios

    with log.step("Installing GRUB for BIOS boot"):
        install_grub_bios(image, grub_dir="/grub")
