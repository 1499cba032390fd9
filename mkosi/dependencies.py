"""Which host programs (and the Debian packages providing them) a configuration needs: what
`mkosi dependencies` prints, so a fresh machine can be prepared before the first build."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from mkosi.config.enums import Bootloader, BootProtocol, SecureBootSignTool, Verity
from mkosi.config.settings import Config
from mkosi.distributions.registry import plugin
from mkosi.formats import FormatKind
from mkosi.run import HOST_PACKAGES, find_tool, require_tool
from mkosi.sandbox import Sandbox

# Every build: the sandbox, containers for scripts and archives of trees.
COMMON_TOOLS = ("bwrap", "systemd-nspawn", "tar", "cp")
# The programs that set up a sandbox run on the host, whether or not a tools tree supplies the rest.
WRAPPERS = ("bwrap", "systemd-nspawn")

FILESYSTEM_TOOLS = {"ext4": "mkfs.ext4", "xfs": "mkfs.xfs", "btrfs": "mkfs.btrfs", "squashfs": "mksquashfs",
                    "erofs": "mkfs.erofs"}
COMPRESSION_TOOLS = {"xz": "xz", "zstd": "zstd", "gzip": "gzip", "zlib": "gzip", "lz4": "lz4"}

# What indexes PackageDirectories= for each package manager (apt's may also be apt-ftparchive).
LOCAL_REPOSITORY_TOOLS = {"apt-get": "dpkg-scanpackages", "dnf": "createrepo_c", "zypper": "createrepo_c",
                          "pacman": "repo-add"}


def host_tools(config: Config, *, runtime: bool = True, sure: bool = False) -> list[str]:
    """The programs a build of this image runs on the host; with runtime, also those that `vm` and `ssh`
    need to use it. With `sure`, only those of a bootable image that is bootable for sure (Bootable=yes):
    whether Bootable=auto needs the boot tools is decided during the build (settle_bootable())."""
    if sure and config.bootable_auto:
        config = dataclasses.replace(config, bootable=False, bootable_auto=False)
    distribution = plugin(config.distribution)
    tools = [*COMMON_TOOLS, *([distribution.package_manager] if distribution.package_manager_on_host else [])]
    fmt = config.format.row
    if fmt.root_fs in FILESYSTEM_TOOLS:
        tools.append(FILESYSTEM_TOOLS[fmt.root_fs])
    if fmt.name == "cpio":
        tools.append("cpio")
    if fmt.kind is FormatKind.extension:
        tools += ["sfdisk", *(["veritysetup"] if config.verity != Verity.no else [])]
    if fmt.repart:
        tools.append("systemd-repart")
    elif fmt.is_disk:
        tools.append("sfdisk")
        if config.verity != Verity.no:
            tools.append("veritysetup")
        if config.encrypt is not None:
            tools.append("cryptsetup")
    if fmt.is_disk:
        if config.qcow2:
            tools.append("qemu-img")
        if config.bmap:
            tools.append("bmaptool")
    if fmt.name in ("uki", "esp"):
        # The whole image becomes the UKI's initrd: a zstd-compressed cpio.
        tools += ["cpio", "zstd"]
    if config.bootable or fmt.name == "esp":
        tools += ["mkfs.vfat", "mcopy"]
    if config.bootloader == Bootloader.grub and ((config.bootable and BootProtocol.uefi in config.boot_protocols)
                                                 or fmt.name == "esp"):
        tools.append("grub-mkimage")
    if (config.bootable or fmt.name == "uki") and runtime:
        tools.append(f"qemu-system-{config.architecture}")
    if config.secure_boot and (config.bootable or fmt.name in ("uki", "esp", "addon")):
        tools.append(efi_sign_tool(config))
    if config.compress_output in COMPRESSION_TOOLS:
        tools.append(COMPRESSION_TOOLS[config.compress_output])
    if config.sign:
        tools.append("gpg" if config.openpgp_tool == "gpg" else config.openpgp_tool)
    indexer = LOCAL_REPOSITORY_TOOLS.get(distribution.package_manager)
    if indexer and (config.package_directories or config.volatile_package_directories):
        if indexer == "dpkg-scanpackages" and not find_tool(indexer) and find_tool("apt-ftparchive"):
            indexer = "apt-ftparchive"
        tools.append(indexer)
    if config.ssh:
        tools += ["ssh-keygen", *(["ssh"] if runtime else [])]
    return list(dict.fromkeys(tools))


def efi_sign_tool(config: Config) -> str:
    """The program that signs EFI binaries: SecureBootSignTool=, auto being systemd-sbsign where it is."""
    if config.secure_boot_sign_tool != SecureBootSignTool.auto:
        return str(config.secure_boot_sign_tool.value)
    return "systemd-sbsign" if find_tool("systemd-sbsign") else "sbsign"


def host_packages(configs: list[Config]) -> list[tuple[str, str, bool]]:
    """(tool, Debian package, whether the tool is installed) for every image of a build."""
    tools = list(dict.fromkeys(t for c in configs for t in host_tools(c)))
    return [(t, HOST_PACKAGES.get(t, t), find_tool(t) is not None) for t in tools]


def check_host_tools(config: Config) -> None:
    """Before the build starts, not after the package installation: every program it will run is there."""
    host = Sandbox(search_paths=tuple(Path(p) for p in config.extra_search_paths))
    for tool in host_tools(config, runtime=False, sure=True):
        require_tool(tool, host if tool in WRAPPERS else None)
