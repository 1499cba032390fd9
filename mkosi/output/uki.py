"""The EFI outputs: Format=uki (a unified kernel image whose initrd is the whole image, so the system
runs from memory), Format=esp (a GPT disk holding only an EFI system partition with a boot loader and
that UKI) and Format=addon (a PE addon carrying a kernel command line).

The UKIs are assembled by mkosi itself (mkosi/boot/uki.py appends the PE sections in Python): that works
with any systemd stub, writes the repeated sections of multi-profile UKIs, and needs no tool. The EFI
stub, the addon stub and systemd-boot come from the image, else from the tools tree (ToolsTree=), else
from the host, whichever has them first (UKI profiles need a stub of systemd 257 or newer)."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.bootable import uki_profiles
from mkosi.boot.cmdline import kernel_cmdline
from mkosi.boot.esp import EspOptions, install_uefi
from mkosi.boot.extras import find_devicetrees, uki_sections
from mkosi.boot.initrd import link_init
from mkosi.boot.kernel import EFI_DIR, BootFiles, efi_arch, find_kernel, find_os_release
from mkosi.boot.pcrsig import PcrSigner, pcr_signer
from mkosi.boot.pe import stub_version
from mkosi.boot.signing import SignTool, sign_efi
from mkosi.boot.uki import PROFILE_STUB_VERSION, UkiProfile, build_addon, build_uki, concat_initrds
from mkosi.config.enums import Bootloader, UnifiedKernelImages
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.output.archive import make_cpio
from mkosi.output.artifacts import BMAP, IMAGE, SPLIT_KERNEL, staged
from mkosi.output.bmap import write_bmap
from mkosi.output.compress import compress_file, maybe_compress
from mkosi.output.filesystems import make_vfat, populate_vfat, tree_size
from mkosi.output.gpt import Partition, assemble, seed_from_setting

MiB = 1024**2

# The ESP of Format=esp: its contents plus this much room (FAT's own structures, later updates).
ESP_SLACK = 32 * MiB
ESP_MIN_SIZE = 64 * MiB


def efi_search_dirs(root: Path, config: Config) -> list[Path]:
    """Where EFI stubs and systemd-boot are looked for, in order: the image, the tools tree, the host."""
    dirs = [root / EFI_DIR]
    if config.tools_tree not in (None, "default"):
        dirs.append(Path(str(config.tools_tree)) / EFI_DIR)
    dirs.append(Path("/") / EFI_DIR)
    return dirs


def find_efi_binary(dirs: Sequence[Path], name: str, *, min_version: Optional[int] = None,
                    what: str = "EFI binary") -> Path:
    """The first `name` in `dirs` (of at least systemd `min_version`)."""
    seen = []
    for d in dirs:
        candidate = d / name
        if not candidate.is_file():
            continue
        version = stub_version(candidate) if min_version is not None else None
        if min_version is not None and version is not None and version[0] < min_version:
            seen.append(f"{candidate} (systemd {'.'.join(map(str, version))})")
            continue
        return candidate
    if seen:
        raise MkosiError(f"no {what} {name} of systemd {min_version} or newer: found only {', '.join(seen)}",
                         hint="use a tools tree with a newer systemd (ToolsTree=)")
    raise MkosiError(f"no {what} {name} in the image, the tools tree or on the host",
                     hint="add systemd-boot-efi to Packages= or use a tools tree (ToolsTree=)")


def image_cmdline(config: Config) -> str:
    """The command line of a system that runs from memory: no root= (the initrd is the root)."""
    return kernel_cmdline(config.kernel_command_line, serial_console=config.qemu_headless)


def image_as_initrd(ctx: Context) -> Path:
    """The whole image as a zstd-compressed cpio. /init (what the kernel starts from an initrd) is linked to
    systemd unless the image has one."""
    link_init(ctx.root, "Format=uki")
    cpio = ctx.workspace / "image.cpio"
    with log.step("Archiving the image as the UKI's initrd"):
        make_cpio(ctx.root, cpio)
        out = ctx.workspace / "image.cpio.zst"
        compress_file(cpio, out, "zstd", for_initrd=True)
        cpio.unlink()
    return out


def whole_image_initrd(ctx: Context) -> Path:
    """Initrds= (if any) followed by the image itself."""
    for p in ctx.config.initrds:
        if not p.is_file():
            raise MkosiError(f"Initrds=: '{p}' does not exist")
    image = image_as_initrd(ctx)
    if not ctx.config.initrds:
        return image
    return concat_initrds([*ctx.config.initrds, image], ctx.workspace / "uki-initrd")


def whole_image_boot_files(ctx: Context, profiles: bool) -> BootFiles:
    """Kernel, os-release and the EFI binaries of the image whose initrd is the whole image."""
    kernel, version = find_kernel(ctx.root)
    arch = efi_arch(ctx.config.architecture)
    stub = find_efi_binary(efi_search_dirs(ctx.root, ctx.config), f"linux{arch}.efi.stub",
                           min_version=PROFILE_STUB_VERSION if profiles else None, what="EFI stub")
    # No initrd of its own: the whole image is given to build_uki() as the initrd.
    return BootFiles(kernel=kernel, version=version, initrd=Path("/nonexistent"), cmdline=image_cmdline(ctx.config),
                     os_release=find_os_release(ctx.root), efi_dir=stub.parent, efi_arch=arch,
                     extra_sections=tuple(uki_sections(ctx.root, ctx.config.splash,
                                                       find_devicetrees(ctx.root, version, ctx.config.devicetrees))))


def write_whole_image_uki(ctx: Context, files: BootFiles, initrd: Path, profiles: Sequence[UkiProfile],
                          output: Path, pcr: Optional[PcrSigner] = None) -> Path:
    return build_uki(files.stub, files.kernel, initrd, files.cmdline, files.os_release, output,
                     uname=files.version, extra_sections=files.extra_sections, profiles=profiles, pcr=pcr)


def _sign(config: Config, binary: Path) -> None:
    if config.secure_boot:
        assert config.secure_boot_key is not None and config.secure_boot_certificate is not None
        with log.step(f"Signing {binary.name} for Secure Boot"):
            sign_efi(binary, config.secure_boot_key, config.secure_boot_certificate,
                     how=SignTool.from_config(config))


def make_uki_output(ctx: Context) -> None:
    """Format=uki: the image's newest kernel with the whole image as its initrd, its expected PCR values
    signed with SignExpectedPcr=, then signed with SecureBoot=."""
    profiles_wanted = bool(ctx.config.uki_profiles)
    files = whole_image_boot_files(ctx, profiles_wanted)
    profiles = uki_profiles(ctx.config, files.cmdline)
    initrd = whole_image_initrd(ctx)
    with log.step("Building the unified kernel image"):
        write_whole_image_uki(ctx, files, initrd, profiles, staged(ctx, IMAGE), pcr_signer(ctx.config))
    _sign(ctx.config, staged(ctx, IMAGE))


def esp_boot_files(ctx: Context, profiles: bool) -> BootFiles:
    """For Format=esp: like whole_image_boot_files, with systemd-boot next to the stub when Bootloader= wants it."""
    files = whole_image_boot_files(ctx, profiles)
    if ctx.config.bootloader in (Bootloader.systemd_boot, Bootloader.systemd_boot_signed):
        suffix = ".signed" if ctx.config.bootloader == Bootloader.systemd_boot_signed else ""
        loader = find_efi_binary(efi_search_dirs(ctx.root, ctx.config), f"systemd-boot{files.efi_arch}.efi{suffix}",
                                 what="boot loader")
        if loader.parent != files.efi_dir:
            # The stub from one place, systemd-boot from another: both into one directory for install_uefi().
            both = ctx.dir("efi-binaries")
            shutil.copyfile(files.stub, both / files.stub.name)
            shutil.copyfile(loader, both / loader.name)
            files = BootFiles(files.kernel, files.version, files.initrd, files.cmdline, files.os_release, both,
                              files.efi_arch)
    return files


def esp_size(tree: Path) -> int:
    size = tree_size(tree) + ESP_SLACK
    return max(ESP_MIN_SIZE, (size + MiB - 1) // MiB * MiB)


def make_esp_output(ctx: Context) -> None:
    """Format=esp: a GPT disk with one partition, an ESP holding what Bootloader= installs and, with
    Bootable= (the default for this format), the UKI whose initrd is the whole image."""
    config = ctx.config
    if config.bootloader == Bootloader.none:
        raise MkosiError("Format=esp needs a boot loader, not Bootloader=none",
                         hint="use Bootloader=systemd-boot, uki or grub")
    if config.bootloader == Bootloader.uki and not config.bootable:
        raise MkosiError("Format=esp with Bootloader=uki and Bootable=no would leave the ESP empty")
    files = esp_boot_files(ctx, bool(config.uki_profiles))
    profiles = uki_profiles(config, files.cmdline)
    options = EspOptions.from_config(config, profiles, ctx.root)
    # The UKI is always one mkosi builds here (the image is its initrd; there is no Type #1 entry to write,
    # and no distribution ships this UKI pre-built).
    options = dataclasses.replace(options, unified_kernel_image=UnifiedKernelImages.unsigned)
    initrd = whole_image_initrd(ctx) if config.bootable else None
    esp = ctx.dir("esp")

    def write(path: Path) -> Path:
        assert initrd is not None
        return write_whole_image_uki(ctx, files, initrd, profiles, path, options.pcr)

    uki = install_uefi(esp, files, options, make=write, with_uki=config.bootable)
    if uki is not None and SPLIT_KERNEL.when(config):
        shutil.copyfile(uki, staged(ctx, SPLIT_KERNEL))
    if initrd is not None:
        initrd.unlink()
    vfat = ctx.workspace / "esp.vfat"
    seed = seed_from_setting(config.seed)
    make_vfat(vfat, esp_size(esp), label="ESP", seed=seed)
    populate_vfat(vfat, esp)
    disk = ctx.workspace / "esp.raw"
    assemble(disk, [Partition(role="esp", label="esp", source=vfat)], first_lba=config.gpt_first_lba or 2048,
             arch=config.architecture, seed=seed)
    vfat.unlink()
    if BMAP.when(config):
        write_bmap(disk, staged(ctx, BMAP))
    with log.step("Compressing" if config.output_compression else "Staging the image"):
        maybe_compress(disk, config.output_compression, staged(ctx, IMAGE), level=config.compress_level)


def make_addon_output(ctx: Context) -> None:
    """Format=addon: systemd's addon stub with KernelCommandLine= as its .cmdline section, signed with
    SecureBoot=."""
    config = ctx.config
    arch = efi_arch(config.architecture)
    stub = find_efi_binary(efi_search_dirs(ctx.root, config), f"addon{arch}.efi.stub", what="EFI addon stub")
    cmdline = " ".join(" ".join(config.kernel_command_line).split())
    if not cmdline:
        raise MkosiError("Format=addon needs KernelCommandLine= (the command line the addon carries)")
    with log.step("Building the UKI addon"):
        build_addon(stub, staged(ctx, IMAGE), cmdline=cmdline)
    _sign(config, staged(ctx, IMAGE))
    os.chmod(staged(ctx, IMAGE), 0o644)
