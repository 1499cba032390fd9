"""Bootable=yes for a disk image: gathers the image's kernel, initrd and command line, fills the ESP
directory, writes the direct-kernel-boot files and installs GRUB into the finished disk."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.boot.cmdline import VerityInfo, image_cmdline
from mkosi.boot.esp import EspOptions, populate_esp
from mkosi.boot.extras import find_devicetrees, uki_sections
from mkosi.boot.grub import install_grub_bios
from mkosi.boot.initrd import (
    dracut_driver_flags,
    dracut_flags,
    initrd_key,
    load_cached_initrd,
    modules_initrd,
    run_dracut,
    save_cached_initrd,
)
from mkosi.boot.kernel import EFI_DIR, BootFiles, boot_files, efi_arch, find_kernel, kernel_candidates
from mkosi.boot.kmod import Selection, select
from mkosi.boot.microcode import host_microcode_initrd
from mkosi.boot.uki import UkiProfile, concat_initrds
from mkosi.config.enums import Bootloader, BootProtocol, Verity
from mkosi.config.settings import Config
from mkosi.config.ukiprofile import load_uki_profiles
from mkosi.context import Context
from mkosi.dependencies import host_tools
from mkosi.distributions.registry import plugin
from mkosi.errors import MkosiError
from mkosi.output.artifacts import LINUX_CMDLINE, LINUX_INITRD, LINUX_KERNEL, SPLIT_KERNEL, staged
from mkosi.run import find_tool

__all__ = ["VerityInfo", "install_bios_boot", "prepare_esp", "settle_bootable", "unbootable_reason"]


def unbootable_reason(config: Config, root: Path) -> Optional[str]:
    """What the image tree `root` lacks to be made bootable as `config` asks (None when nothing): a kernel,
    and on UEFI the boot loader's binaries from the image (systemd-boot, or the EFI stub of the UKI that
    Bootloader=uki and grub boot). The distribution's signed binaries (the *-signed loaders) and the host
    tools are not looked at here."""
    if not kernel_candidates(root):
        return "the image has no kernel (no /boot/vmlinuz-* nor /usr/lib/modules/*/vmlinuz)"
    if BootProtocol.uefi not in config.boot_protocols:
        return None
    arch = efi_arch(config.architecture)
    efi = root / EFI_DIR
    loaders = plugin(config.distribution).uefi_packages
    bring = f"; {', '.join(loaders)} in Packages= would bring it" if loaders else ""
    if config.bootloader == Bootloader.systemd_boot and not (efi / f"systemd-boot{arch}.efi").is_file():
        return f"the image has no systemd-boot EFI binary (/{EFI_DIR}/systemd-boot{arch}.efi){bring}"
    if config.bootloader == Bootloader.systemd_boot_signed and \
            not (efi / f"systemd-boot{arch}.efi.signed").is_file():
        return f"the image has no signed systemd-boot (/{EFI_DIR}/systemd-boot{arch}.efi.signed)"
    if config.bootloader in (Bootloader.uki, Bootloader.grub) and not (efi / f"linux{arch}.efi.stub").is_file():
        return f"the image has no EFI stub for the unified kernel image (/{EFI_DIR}/linux{arch}.efi.stub){bring}"
    return None


def missing_boot_tools(config: Config) -> list[str]:
    """The host programs a bootable build of `config` runs that are not there."""
    plain = set(host_tools(dataclasses.replace(config, bootable=False, bootable_auto=False), runtime=False))
    return [t for t in host_tools(config, runtime=False) if t not in plain and find_tool(t) is None]


def settle_bootable(config: Config, root: Path) -> Config:
    """Bootable=auto, once the image tree is complete: the configuration unchanged when the image can be made
    bootable, else the same one with Bootable=no, and a warning saying why. Bootable=yes is left alone (its
    build fails on what is missing, as before)."""
    if not config.bootable_auto:
        return config
    reason = unbootable_reason(config, root)
    if reason is None and (missing := missing_boot_tools(config)):
        reason = f"the host has no {', '.join(missing)}"
    if reason is None:
        return config
    log.warn(f"Bootable=auto: {reason}, so the image is not made bootable (Bootable=no says so without this "
             "warning, Bootable=yes makes it an error)")
    return dataclasses.replace(config, bootable=False, bootable_auto=False)


def build_initrd(ctx: Context, version: str) -> Path:
    """dracut inside the image, for its kernel; the initrd lands in the workspace, not in the image."""
    flags = [*dracut_flags(ctx.config), *dracut_driver_flags(ctx.config, ctx.root, version)]
    return run_dracut(ctx.root, version, ctx.workspace / f"initrd-{version}", flags,
                      ctx.config.nspawn_keep_unit)


def initrd_cache_key(ctx: Context, kernel: Path, version: str) -> Optional[str]:
    """The key of the image's initrd; None when the package database lists nothing to key it on."""
    installed = plugin(ctx.config.distribution).installed_packages(ctx)
    packages = [f"{p.name}={p.version}:{p.architecture}" for p in installed]
    if not packages:
        log.info("The package database lists no packages: the initrd is built again and not cached")
        return None
    return initrd_key(ctx.config, ctx.root, kernel, version, packages)


def user_initrd(ctx: Context, version: str) -> Path:
    """Initrds=: the given initrds one after the other, and with KernelModulesInitrd= (the default) an
    initrd of the image's kernel modules for `version` after them."""
    parts = list(ctx.config.initrds)
    for p in parts:
        if not p.is_file():
            raise MkosiError(f"Initrds=: '{p}' does not exist")
    if ctx.config.kernel_modules_initrd:
        with log.step(f"Building the kernel modules initrd for kernel {version}"):
            parts.append(modules_initrd(ctx.root, version, ctx.workspace / f"modules-{version}.initrd",
                                        initrd_selection(ctx.config, ctx.root, version), ctx.config.nspawn_keep_unit))
    return concat_initrds(parts, ctx.workspace / f"initrd-{version}")


def initrd_selection(config: Config, root: Path, version: str) -> Optional[Selection]:
    """KernelInitrdModules=: the modules (with what they need) and firmware of the kernel modules initrd;
    None (every module of the image, no firmware) when it is empty."""
    if not config.kernel_initrd_modules:
        return None
    selection = select(root, version, config.kernel_initrd_modules, config.firmware_files)
    log.info(f"KernelInitrdModules=: {len(selection.modules)} modules and {len(selection.firmware)} firmware "
             f"files of kernel {version} go into the kernel modules initrd")
    return selection


def image_initrd(ctx: Context, kernel: Path, version: str) -> Path:
    """The initrd for the image's kernel (see base_initrd()), with MicrocodeHost= the host CPU's early
    microcode in front of it."""
    initrd = base_initrd(ctx, kernel, version)
    if not ctx.config.microcode_host:
        return initrd
    with log.step("Adding the host CPU's early microcode to the initrd (MicrocodeHost=yes)"):
        early = host_microcode_initrd(ctx.root, ctx.workspace / "microcode.initrd")
        if early is None:
            return initrd
        return concat_initrds([early, initrd], ctx.workspace / f"initrd-{version}-with-microcode")


def base_initrd(ctx: Context, kernel: Path, version: str) -> Path:
    """The initrd for the image's kernel: Initrds= when given, else dracut's. With -i, dracut's initrd of an
    earlier build is reused when nothing that shapes it changed, and a newly built one is kept for the next
    build."""
    if ctx.config.initrds:
        return user_initrd(ctx, version)
    if not ctx.args.incremental:
        return build_initrd(ctx, version)
    key = initrd_cache_key(ctx, kernel, version)
    cached = load_cached_initrd(ctx.config, key) if key is not None else None
    if cached is not None:
        log.info(f"Reusing the cached initrd for kernel {version} (nothing that shapes it changed)")
        return cached
    initrd = build_initrd(ctx, version)
    if key is not None:
        save_cached_initrd(ctx.config, initrd, key)
    return initrd


def uki_profiles(config: Config, cmdline: str) -> list[UkiProfile]:
    """UnifiedKernelImageProfiles=: one profile per file, booting with the base command line plus its Cmdline=."""
    return [UkiProfile(p.profile_text(), " ".join([cmdline, *p.cmdline]) if p.cmdline else "", p.sign_expected_pcr)
            for p in load_uki_profiles(config.uki_profiles)]


def with_extras(root: Path, config: Config, files: BootFiles) -> BootFiles:
    """Splash= and Devicetrees=: the UKI's extra sections and the devicetrees a Type #1 entry takes one of."""
    dtbs = find_devicetrees(root, files.version, config.devicetrees)
    return dataclasses.replace(files, extra_sections=tuple(uki_sections(root, config.splash, dtbs)),
                               devicetrees=tuple(dtbs), devicetree_patterns=tuple(config.devicetrees))


def write_linux_boot_files(ctx: Context, files: BootFiles) -> None:
    """STEM.vmlinuz, STEM.initrd and STEM.cmdline, for booting the kernel directly (QemuBoot=linux)."""
    shutil.copyfile(files.kernel, staged(ctx, LINUX_KERNEL))
    shutil.copyfile(files.initrd, staged(ctx, LINUX_INITRD))
    staged(ctx, LINUX_CMDLINE).write_text(files.cmdline + "\n")


def prepare_esp(ctx: Context, root_label: str, verity: Optional[VerityInfo] = None,
                boot: Optional[Path] = None) -> Path:
    """Fill a directory with what goes on the ESP; also writes the linux boot files to staging. With `boot`
    (the directory of an XBOOTLDR partition), the UKIs or Type #1 entries go there (see populate_esp())."""
    config = ctx.config
    if verity is None and config.verity != Verity.no:
        raise MkosiError("Bootable=yes with Verity= needs the root hash of the root partition")
    kernel, version = find_kernel(ctx.root)
    initrd = image_initrd(ctx, kernel, version)
    files = boot_files(ctx.root, initrd, image_cmdline(config, root_label, verity), config.architecture)
    files = with_extras(ctx.root, config, files)
    esp = ctx.dir("esp")
    uki = populate_esp(esp, files, EspOptions.from_config(config, uki_profiles(config, files.cmdline), ctx.root),
                       boot=boot)
    if SPLIT_KERNEL.when(config):
        # SplitArtifacts=: the (signed) unified kernel image also as a file of its own.
        if uki is None:
            raise MkosiError("SplitArtifacts=uki: the image boots a Type #1 entry, there is no unified kernel image "
                             "to split off", hint="install systemd-boot-efi (the EFI stub) into the image, or leave "
                             "uki out of SplitArtifacts=")
        shutil.copyfile(uki, staged(ctx, SPLIT_KERNEL))
    if LINUX_KERNEL.when(config):
        write_linux_boot_files(ctx, files)
    return esp


def install_bios_boot(ctx: Context, image: Path) -> None:
    with log.step("Installing GRUB for BIOS boot"):
        install_grub_bios(image, grub_dir="/grub")
