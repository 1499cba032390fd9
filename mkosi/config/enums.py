"""Closed choices of the configuration."""

from __future__ import annotations

import enum


class StrEnum(str, enum.Enum):
    def __str__(self) -> str:
        return str(self.value)

    @classmethod
    def values(cls) -> list[str]:
        return [str(m.value) for m in cls]


class Verb(StrEnum):
    build = "build"
    clean = "clean"
    summary = "summary"
    shell = "shell"
    boot = "boot"
    qemu = "qemu"
    vm = "vm"
    ssh = "ssh"
    serve = "serve"
    bump = "bump"
    genkey = "genkey"
    help = "help"
    cat_config = "cat-config"
    burn = "burn"
    journalctl = "journalctl"
    coredumpctl = "coredumpctl"
    sandbox = "sandbox"
    box = "box"
    dependencies = "dependencies"
    init = "init"
    documentation = "documentation"
    completion = "completion"
    latest_snapshot = "latest-snapshot"
    sysupdate = "sysupdate"

    def needs_build(self) -> bool:
        """Verbs that build the image first when it is missing (or when -f is given)."""
        return self in (Verb.build, Verb.shell, Verb.boot, Verb.qemu, Verb.vm, Verb.serve)

    def takes_cmdline(self) -> bool:
        """Verbs whose trailing arguments are passed on (to the build script, shell, kernel, ssh...)."""
        return self in (Verb.build, Verb.shell, Verb.boot, Verb.qemu, Verb.vm, Verb.ssh, Verb.burn, Verb.journalctl,
                        Verb.coredumpctl, Verb.sandbox, Verb.box, Verb.documentation, Verb.completion,
                        Verb.sysupdate)


class ConfigLanguage(StrEnum):
    """Which configuration language a tree is written in, decided once from its top-level files
    (mkosi/config/layout.py, tree_language()): `classic` for mkosi.default (or --default=FILE, or no
    settings file at all), the mkosi 14 man page's language; `modern` for mkosi.conf (or mkosi/mkosi.conf,
    mkosi.conf.d/, mkosi.images/), the language of the upstream v26 manual, and always for the images of
    mkosi.images/ and the builtin configurations. Where the two languages give a setting different
    meanings, the code asks this value (today: Output=, see finalize._place_output())."""
    classic = "classic"
    modern = "modern"


class Distribution(StrEnum):
    fedora = "fedora"
    debian = "debian"
    ubuntu = "ubuntu"
    arch = "arch"
    opensuse = "opensuse"
    mageia = "mageia"
    centos = "centos"
    centos_epel = "centos_epel"
    clear = "clear"
    photon = "photon"
    openmandriva = "openmandriva"
    rocky = "rocky"
    rocky_epel = "rocky_epel"
    alma = "alma"
    alma_epel = "alma_epel"
    gentoo = "gentoo"
    # Distributions of the modern manual without an installer here: recognised, not built.
    kali = "kali"
    rhel = "rhel"
    rhel_ubi = "rhel-ubi"
    azure = "azure"
    custom = "custom"


class Compression(StrEnum):
    none = "none"
    zlib = "zlib"
    gzip = "gzip"
    lzo = "lzo"
    lz4 = "lz4"
    xz = "xz"
    zstd = "zstd"


class ManifestFormat(StrEnum):
    json = "json"
    changelog = "changelog"
    spdx = "spdx"
    cyclonedx = "cyclonedx"


class BootProtocol(StrEnum):
    uefi = "uefi"
    bios = "bios"
    linux = "linux"


class SourceFileTransfer(StrEnum):
    copy_all = "copy-all"
    copy_git_cached = "copy-git-cached"
    copy_git_others = "copy-git-others"
    copy_git_more = "copy-git-more"
    mount = "mount"


class Encrypt(StrEnum):
    all = "all"
    data = "data"


class Verity(StrEnum):
    no = "no"
    yes = "yes"
    signed = "signed"


class BasePackages(StrEnum):
    no = "no"
    yes = "yes"
    conditional = "conditional"


class CleanPackageMetadata(StrEnum):
    auto = "auto"
    yes = "yes"
    no = "no"


class WithNetwork(StrEnum):
    no = "no"
    yes = "yes"
    never = "never"


class QemuKvm(StrEnum):
    auto = "auto"
    yes = "yes"
    no = "no"


# ---- closed choices of the modern settings ----

class Feature(StrEnum):
    """A boolean or 'auto' (enabled/disabled are the boolean values, as the modern JSON summary shows them)."""

    auto = "auto"
    enabled = "enabled"
    disabled = "disabled"


class SplitArtifact(StrEnum):
    uki = "uki"
    kernel = "kernel"
    initrd = "initrd"
    os_release = "os-release"
    pcrs = "pcrs"
    partitions = "partitions"
    roothash = "roothash"
    kernel_modules_initrd = "kernel-modules-initrd"
    repart_definitions = "repart-definitions"
    tar = "tar"


class Bootloader(StrEnum):
    none = "none"
    systemd_boot = "systemd-boot"
    uki = "uki"
    grub = "grub"
    systemd_boot_signed = "systemd-boot-signed"
    uki_signed = "uki-signed"
    grub_signed = "grub-signed"


class UnifiedKernelImages(StrEnum):
    """UnifiedKernelImages=: none boots Type #1 entries (kernel, initrd and an entry file); unsigned and signed
    always boot a UKI (mkosi builds it, except that signed takes the distribution's pre-built one with the
    signed boot loaders); auto a UKI when the EFI stub is there, else a Type #1 entry."""
    none = "none"
    auto = "auto"
    unsigned = "unsigned"
    signed = "signed"

    @property
    def enabled(self) -> bool:
        return self != UnifiedKernelImages.none


class BiosBootloader(StrEnum):
    none = "none"
    grub = "grub"


class ShimBootloader(StrEnum):
    none = "none"
    unsigned = "unsigned"
    signed = "signed"


class InitrdProfile(StrEnum):
    lvm = "lvm"
    network = "network"
    nfs = "nfs"
    pkcs11 = "pkcs11"
    plymouth = "plymouth"
    raid = "raid"


class SecureBootSignTool(StrEnum):
    auto = "auto"
    sbsign = "sbsign"
    systemd_sbsign = "systemd-sbsign"


class ToolsTreeProfile(StrEnum):
    devel = "devel"
    misc = "misc"
    package_manager = "package-manager"
    runtime = "runtime"


class CacheOnly(StrEnum):
    auto = "auto"
    metadata = "metadata"
    always = "always"
    never = "never"


class BuildSourcesEphemeral(StrEnum):
    no = "no"
    yes = "yes"
    buildcache = "buildcache"


class Vmm(StrEnum):
    qemu = "qemu"
    vmspawn = "vmspawn"


class ConsoleMode(StrEnum):
    interactive = "interactive"
    read_only = "read-only"
    native = "native"
    gui = "gui"


class Firmware(StrEnum):
    auto = "auto"
    uefi = "uefi"
    uefi_secure_boot = "uefi-secure-boot"
    bios = "bios"
    linux = "linux"
    linux_noinitrd = "linux-noinitrd"


class RuntimeNetwork(StrEnum):
    user = "user"
    interface = "interface"
    none = "none"
