"""Rows of the settings table that only the modern configuration language has.

They are fields of Config (which inherits them) declared with `setting(...)` like every other row; the
classic settings that the modern language renamed or moved are rows of mkosi/config/settings.py with
their modern name and section, their classic ones as aliases and `other_sections`. Most of these rows are
parsed, typed, defaulted and shown, but their effect is not built yet: `status=NOT_YET` says so in
`summary` and in mkosi.md.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Callable, Optional

from mkosi.config.enums import (
    BiosBootloader,
    Bootloader,
    BuildSourcesEphemeral,
    CacheOnly,
    ConfigLanguage,
    ConsoleMode,
    Distribution,
    Feature,
    Firmware,
    InitrdProfile,
    RuntimeNetwork,
    SecureBootSignTool,
    ShimBootloader,
    ToolsTreeProfile,
    Vmm,
)
from mkosi.config.types import (
    ConfigTree,
    Kind,
    PathRule,
    Resolving,
    Scope,
    parse_bool,
    parse_bool_or_enum,
    parse_enum,
    parse_int,
    parse_octal_mode,
    parse_path,
    parse_relative_tree,
    parse_size,
    parse_tree,
    resolve_trees,
    setting,
)
from mkosi.proxy import parse_proxy_exclude, parse_proxy_url, redacted_url

D, O, C, V, B, R = "Distribution", "Output", "Content", "Validation", "Build", "Runtime"  # noqa: E741
NOT_YET = "not implemented yet"
NOT_YET_DRACUT = ("not implemented yet: the default initrd is dracut's, made in the image from its own "
                  "packages, not an image of its own to install packages into")


def _default_cache_dir(r: Resolving) -> Optional[Path]:
    """mkosi.cache/ in a modern tree; in a classic one it is the package cache only (mkosi 14 kept the
    cached images next to the output)."""
    return r.found.get("mkosi.cache") if r.language == ConfigLanguage.modern else None


def choices(cls: Any) -> tuple[str, ...]:
    return tuple(str(m.value) for m in cls)


FEATURE_CHOICES = ("enabled", "disabled", "auto")
parse_feature = parse_bool_or_enum(Feature, Feature.enabled, Feature.disabled)


def parse_key_source(value: str) -> str:
    """Where a key comes from: 'file', or an OpenSSL engine or provider: 'engine:NAME', 'provider:NAME'."""
    v = value.strip()
    kind, sep, name = v.partition(":")
    if (kind == "file" and not sep) or (kind in ("engine", "provider") and sep and name):
        return v
    raise ValueError(f"invalid key source '{value}', expected file, engine:NAME or provider:NAME")


def parse_certificate_source(value: str) -> str:
    v = value.strip()
    kind, sep, name = v.partition(":")
    if (kind == "file" and not sep) or (kind == "provider" and sep and name):
        return v
    raise ValueError(f"invalid certificate source '{value}', expected file or provider:NAME")


def parse_tools_tree(value: str) -> Optional[str]:
    """A path, or a boolean: yes means the default tools tree ("default"), no means none."""
    v = value.strip()
    if v.lower() == "default":
        return "default"
    lowered = v.lower()
    if lowered in ("1", "yes", "true", "on", "y", "0", "no", "false", "off", "n"):
        return "default" if parse_bool(v) else None
    return str(parse_path(v))


def _tools_tree_path(value: Any, r: Resolving) -> Optional[str]:
    """mkosi.tools/ (a path default, so a Path) is used like ToolsTree=PATH."""
    return str(value) if isinstance(value, Path) else value


def parse_uki_format(value: str) -> str:
    """A file name pattern with &e, &k, &h and && (expanded when the UKI is installed)."""
    v = value.strip()
    if not v or "/" in v:
        raise ValueError(f"invalid value '{value}', expected a file name without directories")
    m = re.search(r"&([^&ekh]|$)", v.replace("&&", ""))
    if m:
        raise ValueError(f"unknown specifier '&{m.group(1)}' in '{value}', expected &e, &k, &h or &&")
    return v


def parse_output_extension(value: str) -> str:
    """OutputExtension=: a file name extension, with or without its leading dot ("img" and ".img" are the
    same); kept without the dot."""
    v = value.strip()
    ext = v[1:] if v.startswith(".") else v
    if not ext or "/" in ext or re.search(r"\s", ext) or ext.startswith(".") or ext.endswith("."):
        raise ValueError(f"invalid extension '{value}', expected a file name extension such as 'img'")
    return ext


def parse_sector_size(value: str) -> int:
    """SectorSize=: a power of two from 512 to 4096 bytes (what systemd-repart --sector-size= takes)."""
    n = parse_size(value)
    if n not in (512, 1024, 2048, 4096):
        raise ValueError(f"invalid sector size '{value}', expected 512, 1024, 2048 or 4096")
    return n


def parse_vsock_cid(value: str) -> str:
    v = value.strip().lower()
    if v in ("auto", "hash"):
        return v
    try:
        n = int(v, 0)
    except ValueError:
        raise ValueError(f"invalid vsock CID '{value}', expected a number, 'hash' or 'auto'")
    if not 3 <= n < 0xFFFFFFFF:
        raise ValueError(f"vsock CID {n} out of range [3, 0xFFFFFFFF)")
    return str(n)


def parse_drive(value: str) -> str:
    """ID:SIZE[:DIRECTORY[:OPTIONS[:FILE-ID[:FLAGS]]]], checked and kept as written."""
    parts = value.strip().split(":")
    if len(parts) < 2 or len(parts) > 6 or not parts[0]:
        raise ValueError(f"invalid drive '{value}', expected ID:SIZE[:DIRECTORY[:OPTIONS[:FILE-ID[:FLAGS]]]]")
    parse_size(parts[1])
    if len(parts) == 6:
        for flag in filter(None, parts[5].split(",")):
            if flag != "persist":
                raise ValueError(f"invalid drive flag '{flag}' in '{value}', expected persist")
    return value.strip()


def parse_firmware_variables(value: str) -> str:
    v = value.strip()
    if v in ("microsoft", "microsoft-mok", "custom"):
        return v
    return str(parse_path(v))


def parse_mirror_url(value: str) -> str:
    v = value.strip()
    if not v:
        raise ValueError("empty URL")
    return v


def parse_glob_list_item(value: str) -> str:
    v = value.strip()
    if not v or v == "-":
        raise ValueError(f"invalid pattern '{value}'")
    return v


def parse_credential(value: str) -> str:
    v = value.strip()
    if "=" in v:
        name = v.split("=", 1)[0]
        if not re.fullmatch(r"[A-Za-z0-9_.@-]+", name):
            raise ValueError(f"invalid credential name '{name}'")
        return v
    return str(parse_path(v))


# The names systemd-firstboot takes (Locale=, LocaleMessages=, Keymap=): one file name's worth of printable
# characters, nothing a shell or an environment file would read differently.
_FIRSTBOOT_NAME = re.compile(r"[A-Za-z0-9._@+-]+")


def _firstboot_name(value: str, what: str) -> str:
    v = value.strip()
    if not v or len(v) > 255 or v in (".", "..") or not _FIRSTBOOT_NAME.fullmatch(v):
        raise ValueError(f"invalid {what} '{value}', expected a name of letters, digits and . _ @ + -")
    return v


def parse_locale(value: str) -> str:
    """A locale name such as en_US.UTF-8 or C.UTF-8 (whether the image has it is not checked)."""
    return _firstboot_name(value, "locale")


def parse_keymap(value: str) -> str:
    return _firstboot_name(value, "keymap")


def parse_timezone(value: str) -> str:
    """A zone of the tz database, such as Europe/Berlin or UTC: names below /usr/share/zoneinfo."""
    v = value.strip()
    parts = v.split("/")
    if not v or len(v) > 255 or any(p in ("", ".", "..") or not re.fullmatch(r"[A-Za-z0-9._+-]+", p)
                                     for p in parts):
        raise ValueError(f"invalid time zone '{value}', expected a zone name such as Europe/Berlin or UTC")
    return v


def parse_root_shell(value: str) -> str:
    """An absolute path (inside the image) without what /etc/passwd cannot hold (':', whitespace)."""
    v = value.strip()
    if not v.startswith("/") or not re.fullmatch(r"/[A-Za-z0-9._+/-]*", v) or "/../" in f"{v}/" \
            or "/./" in f"{v}/" or v.endswith("/"):
        raise ValueError(f"invalid shell '{value}', expected an absolute path such as /bin/bash")
    return v


def _environment_files(value: list[Path], r: Resolving) -> list[Path]:
    """mkosi.env next to the configuration is read first, also when EnvironmentFiles= names other files
    (a list cleared with `!*` leaves it out too)."""
    default = r.found.get("mkosi.env")
    if value and default is not None and default not in value:
        return [default, *value]
    return value


def _default_repository_key_fetch(v: Resolving) -> bool:
    # Fetching keys over the network is the default where the host cannot have them installed (Ubuntu).
    return bool(v["distribution"] == Distribution.ubuntu)


def _default_secure_boot_key(v: Resolving) -> Optional[Path]:
    """The default of VerityKey= and SignExpectedPcrKey=: SecureBootKey=."""
    key: Optional[Path] = v["secure_boot_key"]
    return key


def _default_secure_boot_certificate(v: Resolving) -> Optional[Path]:
    """The default of VerityCertificate= and SignExpectedPcrCertificate=: SecureBootCertificate=."""
    cert: Optional[Path] = v["secure_boot_certificate"]
    return cert


def _inherited_source(key: str, source: str) -> Callable[[Resolving], str]:
    """The default source of a key or certificate that defaults to the Secure Boot one: that one's source
    while it is the same key (VerityKey= unset: SecureBootKeySource= applies to it too), else file."""
    base = "secure_boot_key" if key.endswith("_key") else "secure_boot_certificate"

    def default(v: Resolving) -> str:
        same = v[key] is not None and v[key] == v[base]
        return str(v[source]) if same else "file"
    return default


def _with_mkosi_packages(value: Any, r: Resolving) -> Any:
    """mkosi.packages/ is used in addition to the directories PackageDirectories= names (first, so
    theirs win where a file name is in both)."""
    found = r.found.get("mkosi.packages")
    if found is None or not isinstance(value, list) or any(Path(p).absolute() == found for p in value):
        return value
    return [found, *value]


def _tree_list(**extra: Any) -> Any:
    return setting(kind=Kind.LIST, parse=parse_tree, separator=r",", path_rule=PathRule.pair, resolve_fn=resolve_trees,
                   default_factory=list, metavar="SRC[:TARGET]", **extra)


def _path_list(**extra: Any) -> Any:
    return setting(kind=Kind.LIST, parse=parse_path, separator=r",", path_rule=PathRule.path,
                   default_factory=list, metavar="PATH", **extra)


def _flag(**extra: Any) -> Any:
    return setting(kind=Kind.BOOL, parse=parse_bool, const="yes", **extra)


def _feature(**extra: Any) -> Any:
    return setting(parse=parse_feature, choices=FEATURE_CHOICES, const="yes", default=Feature.auto, **extra)


@dataclasses.dataclass(frozen=True)
class ModernSettings:
    """The rows of the modern language without a classic counterpart (Config inherits them)."""

    # ---- [Distribution] ----
    snapshot: Optional[str] = setting(
        section=D, key="Snapshot", flags=("--snapshot",), metavar="ID",
        help="Install packages from this snapshot of the distribution's repositories.")
    local_mirror: Optional[str] = setting(
        section=D, key="LocalMirror", flags=("--local-mirror",), parse=parse_mirror_url, scope=Scope.universal,
        metavar="URL", help="RPM distributions (dnf): one flat local repository used for the build instead of "
        "the distribution's repositories.")
    repository_key_check: bool = _flag(
        section=D, key="RepositoryKeyCheck", flags=("--repository-key-check",), default=True,
        scope=Scope.universal, help="Check the signatures of the repositories ('no' is implemented for apt and dnf).")
    repository_key_fetch: bool = _flag(
        section=D, key="RepositoryKeyFetch", flags=("--repository-key-fetch",), default=False,
        default_fn=_default_repository_key_fetch, depends=("distribution",), scope=Scope.universal,
        help="Download the distribution's signing keys (default: on Ubuntu only).")

    # ---- [Output] ----
    output_extension: Optional[str] = setting(
        section=O, key="OutputExtension", flags=("--output-extension",), parse=parse_output_extension,
        metavar="EXTENSION", help="Extension of the output file instead of the format's (the compression's suffix "
        "is still added).")
    compress_level: Optional[int] = setting(
        section=O, key="CompressLevel", flags=("--compress-level",), parse=parse_int, scope=Scope.inherited,
        metavar="LEVEL", help="Level of the CompressOutput= compressor (xz 0-9, zstd 1-22, gzip 1-9).")
    output_mode: Optional[int] = setting(
        section=O, key="OutputMode", flags=("--output-mode",), parse=parse_octal_mode, scope=Scope.universal,
        metavar="MODE", help="Access mode (octal) of the output files.")
    repart_dirs: list[Path] = _path_list(
        section=O, key="RepartDirectories", flags=("--repart-directory",), path_default=("mkosi.repart/",),
        help="Directories of systemd-repart partition definitions for Format=disk (default: mkosi.repart/).")
    sector_size: Optional[int] = setting(
        section=O, key="SectorSize", flags=("--sector-size",), parse=parse_sector_size, scope=Scope.inherited,
        metavar="BYTES", help="Sector size of Format=disk images: 512, 1024, 2048 or 4096.")
    overlay: bool = _flag(
        section=O, key="Overlay", flags=("--overlay",), default=False,
        help="With BaseTrees=, the output holds only the changes to the base trees.")
    clean_scripts: list[Path] = _path_list(
        section=O, key="CleanScripts", flags=("--clean-script",), path_default=("mkosi.clean",),
        help="Scripts run by the clean verb (default: mkosi.clean).")

    # ---- [Content] ----
    volatile_packages: list[str] = setting(
        section=C, key="VolatilePackages", flags=("--volatile-package",), kind=Kind.LIST, default_factory=list,
        metavar="PACKAGES", help="Packages installed after the build scripts, never cached.")
    package_directories: list[Path] = _path_list(
        section=C, key="PackageDirectories", flags=("--package-directory",), path_default=("mkosi.packages/",),
        scope=Scope.universal, resolve_fn=_with_mkosi_packages,
        help="Directories of extra packages made available as a local repository (default: mkosi.packages/).")
    volatile_package_directories: list[Path] = _path_list(
        section=C, key="VolatilePackageDirectories", flags=("--volatile-package-directory",),
        scope=Scope.universal, help="Like PackageDirectories=, without invalidating caches.")
    with_recommends: bool = _flag(
        section=C, key="WithRecommends", flags=("--with-recommends",), default=False, cache=True,
        help="Install recommended (weak) dependencies too (apt, dnf and zypper).")
    base_trees: list[Path] = _path_list(
        section=C, key="BaseTrees", flags=("--base-tree",),
        help="Trees (directories, tar archives or images) the image starts from.")
    sync_scripts: list[Path] = _path_list(
        section=C, key="SyncScripts", flags=("--sync-script",), path_default=("mkosi.sync",),
        help="Scripts run before the build to update the sources (default: mkosi.sync).")
    postoutput_scripts: list[Path] = _path_list(
        section=C, key="PostOutputScripts", flags=("--postoutput-script",), path_default=("mkosi.postoutput",),
        help="Scripts run after the outputs are written (default: mkosi.postoutput).")
    bootloader: Bootloader = setting(
        section=C, key="Bootloader", flags=("--bootloader",), parse=parse_enum(Bootloader),
        choices=choices(Bootloader), default=Bootloader.systemd_boot,
        help="EFI boot loader to install.")
    bios_bootloader: BiosBootloader = setting(
        section=C, key="BiosBootloader", flags=("--bios-bootloader",), parse=parse_enum(BiosBootloader),
        choices=choices(BiosBootloader), default=BiosBootloader.none,
        help="BIOS boot loader to install.")
    shim_bootloader: ShimBootloader = setting(
        section=C, key="ShimBootloader", flags=("--shim-bootloader",), parse=parse_enum(ShimBootloader),
        choices=choices(ShimBootloader), default=ShimBootloader.none,
        help="Install shim and MokManager to the ESP.")
    unified_kernel_image_format: Optional[str] = setting(
        section=C, key="UnifiedKernelImageFormat", flags=("--unified-kernel-image-format",),
        parse=parse_uki_format,
        metavar="FORMAT", help="File name pattern of the installed unified kernel images.")
    uki_profiles: list[Path] = _path_list(
        section=C, key="UnifiedKernelImageProfiles", flags=("--uki-profile",), path_default=("mkosi.uki-profiles/",),
        help="UKI profile files ([UKIProfile]) added to every UKI (default: mkosi.uki-profiles/).")
    initrds: list[Path] = _path_list(
        section=C, key="Initrds", flags=("--initrd",),
        help="Initrds to use instead of building the default one.")
    initrd_profiles: list[InitrdProfile] = setting(
        section=C, key="InitrdProfiles", flags=("--initrd-profile",), kind=Kind.LIST,
        parse=parse_enum(InitrdProfile), choices=choices(InitrdProfile), default_factory=list,
        metavar="PROFILES", help="Profiles of the default initrd.")
    initrd_packages: list[str] = setting(
        section=C, key="InitrdPackages", flags=("--initrd-package",), kind=Kind.LIST, default_factory=list,
        status=NOT_YET_DRACUT, metavar="PACKAGES", help="Extra packages for the default initrd.")
    initrd_volatile_packages: list[str] = setting(
        section=C, key="InitrdVolatilePackages", flags=("--initrd-volatile-package",), kind=Kind.LIST,
        default_factory=list, status=NOT_YET_DRACUT, metavar="PACKAGES",
        help="Extra packages for the default initrd, never cached.")
    devicetrees: list[str] = setting(
        section=C, key="Devicetrees", flags=("--devicetrees",), kind=Kind.LIST, separator=r",",
        parse=parse_glob_list_item, default_factory=list, metavar="GLOBS",
        help="Devicetree patterns for the boot loader or the UKI.")
    splash: Optional[str] = setting(
        section=C, key="Splash", flags=("--splash",), metavar="PATH",
        help="Boot splash of the UKIs (a path inside the image).")
    microcode_host: bool = _flag(
        section=C, key="MicrocodeHost", flags=("--microcode-host",), default=False,
        help="Only include the microcode of the host's CPU.")
    kernel_modules: list[str] = setting(
        section=C, key="KernelModules", flags=("--kernel-modules",), kind=Kind.LIST, parse=parse_glob_list_item,
        default_factory=list, metavar="GLOBS", help="Kernel modules to keep in the image.")
    kernel_modules_initrd: bool = _flag(
        section=C, key="KernelModulesInitrd", flags=("--kernel-modules-initrd",), default=True,
        help="Append an initrd of kernel modules to the initrd of each UKI.")
    kernel_initrd_modules: list[str] = setting(
        section=C, key="KernelInitrdModules", flags=("--kernel-modules-initrd-include",), kind=Kind.LIST,
        parse=parse_glob_list_item, default_factory=list, metavar="GLOBS",
        help="Kernel modules to put in the initrd.")
    firmware_files: list[str] = setting(
        section=C, key="FirmwareFiles", flags=("--firmware-files",), kind=Kind.LIST, parse=parse_glob_list_item,
        default_factory=list, metavar="GLOBS", help="Firmware files to keep in the image.")
    locale: Optional[str] = setting(
        section=C, key="Locale", flags=("--locale",), parse=parse_locale, metavar="LOCALE",
        help="Locale of the image: LANG= in /etc/locale.conf (like systemd-firstboot --locale).")
    locale_messages: Optional[str] = setting(
        section=C, key="LocaleMessages", flags=("--locale-messages",), parse=parse_locale, metavar="LOCALE",
        help="Message locale of the image: LC_MESSAGES= in /etc/locale.conf.")
    keymap: Optional[str] = setting(
        section=C, key="Keymap", flags=("--keymap",), parse=parse_keymap, metavar="KEYMAP",
        help="Console keyboard map of the image: KEYMAP= in /etc/vconsole.conf.")
    timezone: Optional[str] = setting(
        section=C, key="Timezone", flags=("--timezone",), parse=parse_timezone, metavar="ZONE",
        help="Time zone of the image: /etc/localtime points at its zoneinfo file.")
    root_shell: Optional[str] = setting(
        section=C, key="RootShell", flags=("--root-shell",), parse=parse_root_shell, metavar="PATH",
        help="Login shell of root in /etc/passwd.")
    make_initrd: bool = _flag(
        section=C, key="MakeInitrd", flags=("--make-initrd",), default=False,
        help="Add /etc/initrd-release and /init so the image can serve as an initrd.")
    selinux_relabel: Feature = _feature(
        section=C, key="SELinuxRelabel", flags=("--selinux-relabel",),
        help="Relabel the files for the image's SELinux policy: yes, no or auto.")

    # ---- [Validation] ----
    secure_boot_auto_enroll: bool = _flag(
        section=V, key="SecureBootAutoEnroll", flags=("--secure-boot-auto-enroll",), default=True,
        help="Let systemd-boot enroll the Secure Boot keys in virtual machines.")
    secure_boot_sign_tool: SecureBootSignTool = setting(
        section=V, key="SecureBootSignTool", flags=("--secure-boot-sign-tool",),
        parse=parse_enum(SecureBootSignTool), choices=choices(SecureBootSignTool),
        default=SecureBootSignTool.auto, help="Tool that signs EFI binaries.")
    verity_key: Optional[Path] = setting(
        section=V, key="VerityKey", flags=("--verity-key",), parse=parse_path, path_rule=PathRule.path,
        scope=Scope.universal, default_fn=_default_secure_boot_key, depends=("secure_boot_key",), metavar="PATH",
        help="Private key (PEM) that signs the verity root hash (default: SecureBootKey=).")
    verity_certificate: Optional[Path] = setting(
        section=V, key="VerityCertificate", flags=("--verity-certificate",), parse=parse_path,
        path_rule=PathRule.path, scope=Scope.universal, default_fn=_default_secure_boot_certificate,
        depends=("secure_boot_certificate",), metavar="PATH",
        help="Certificate of the verity signature (default: SecureBootCertificate=).")
    sign_expected_pcr: Feature = _feature(
        section=V, key="SignExpectedPcr", flags=("--sign-expected-pcr",), other_sections=(O,),
        help="Embed systemd-measure's signature of the expected PCR 11 values in the UKIs: yes, no or auto "
             "(with SecureBoot=yes, a key and systemd-measure).")
    sign_expected_pcr_key: Optional[Path] = setting(
        section=V, key="SignExpectedPcrKey", flags=("--sign-expected-pcr-key",), parse=parse_path,
        path_rule=PathRule.path, scope=Scope.inherited, default_fn=_default_secure_boot_key,
        depends=("secure_boot_key",), metavar="PATH",
        help="Private key (PEM) that signs the expected PCR values (default: SecureBootKey=).")
    sign_expected_pcr_certificate: Optional[Path] = setting(
        section=V, key="SignExpectedPcrCertificate", flags=("--sign-expected-pcr-certificate",), parse=parse_path,
        path_rule=PathRule.path, scope=Scope.inherited, default_fn=_default_secure_boot_certificate,
        depends=("secure_boot_certificate",), metavar="PATH",
        help="Certificate or public key (PEM) put in the UKIs' .pcrpkey (default: SecureBootCertificate=, "
             "else derived from the key).")
    secure_boot_key_source: str = setting(
        section=V, key="SecureBootKeySource", flags=("--secure-boot-key-source",), parse=parse_key_source,
        default="file", scope=Scope.universal, metavar="SOURCE",
        help="Where the Secure Boot key comes from: file, engine:NAME or provider:NAME.")
    verity_key_source: str = setting(
        section=V, key="VerityKeySource", flags=("--verity-key-source",), parse=parse_key_source,
        default="file", default_fn=_inherited_source("verity_key", "secure_boot_key_source"),
        depends=("verity_key", "secure_boot_key", "secure_boot_key_source"), scope=Scope.universal,
        metavar="SOURCE", help="Where the verity key comes from.")
    sign_expected_pcr_key_source: str = setting(
        section=V, key="SignExpectedPcrKeySource", flags=("--sign-expected-key-source",), parse=parse_key_source,
        default="file", default_fn=_inherited_source("sign_expected_pcr_key", "secure_boot_key_source"),
        depends=("sign_expected_pcr_key", "secure_boot_key", "secure_boot_key_source"), scope=Scope.inherited,
        metavar="SOURCE",
        help="Where the PCR signing key comes from.")
    secure_boot_certificate_source: str = setting(
        section=V, key="SecureBootCertificateSource", flags=("--secure-boot-certificate-source",),
        parse=parse_certificate_source, default="file", scope=Scope.universal, metavar="SOURCE",
        help="Where the Secure Boot certificate comes from: file or provider:NAME.")
    verity_certificate_source: str = setting(
        section=V, key="VerityCertificateSource", flags=("--verity-certificate-source",),
        parse=parse_certificate_source, scope=Scope.universal, metavar="SOURCE",
        default="file", default_fn=_inherited_source("verity_certificate", "secure_boot_certificate_source"),
        depends=("verity_certificate", "secure_boot_certificate", "secure_boot_certificate_source"),
        help="Where the verity certificate comes from.")
    sign_expected_pcr_certificate_source: str = setting(
        section=V, key="SignExpectedPcrCertificateSource", flags=("--sign-expected-certificate-source",),
        parse=parse_certificate_source, scope=Scope.inherited, metavar="SOURCE",
        default="file", default_fn=_inherited_source("sign_expected_pcr_certificate", "secure_boot_certificate_source"),
        depends=("sign_expected_pcr_certificate", "secure_boot_certificate", "secure_boot_certificate_source"),
        help="Where the PCR signing certificate comes from.")
    passphrase: Optional[Path] = setting(
        section=V, key="Passphrase", flags=("--passphrase",), parse=parse_path, path_rule=PathRule.path,
        path_default=("mkosi.passphrase",), metavar="PATH",
        help="File with the LUKS passphrase, mode 0600 (default: mkosi.passphrase).")
    openpgp_tool: str = setting(
        section=V, key="OpenPGPTool", flags=("--openpgp-tool",), default="gpg", metavar="TOOL",
        help="OpenPGP tool that signs SHA256SUMS (gpg, or a Stateless OpenPGP tool).")

    # ---- [Build] ----
    tools_tree: Optional[str] = setting(
        section=B, key="ToolsTree", flags=("--tools-tree",), parse=parse_tools_tree,
        scope=Scope.universal, path_default=("mkosi.tools/",), resolve_fn=_tools_tree_path,
        metavar="PATH|yes", help="Tree whose programs build and boot the image ('yes': a default one is built).")
    tools_tree_distribution: Optional[Distribution] = setting(
        section=B, key="ToolsTreeDistribution", flags=("--tools-tree-distribution",), parse=parse_enum(Distribution),
        choices=choices(Distribution), scope=Scope.main,
        help="Distribution of the default tools tree.")
    tools_tree_release: Optional[str] = setting(
        section=B, key="ToolsTreeRelease", flags=("--tools-tree-release",), scope=Scope.main,
        help="Release of the default tools tree.")
    tools_tree_profiles: list[ToolsTreeProfile] = setting(
        section=B, key="ToolsTreeProfiles", flags=("--tools-tree-profile",), kind=Kind.LIST,
        parse=parse_enum(ToolsTreeProfile), choices=choices(ToolsTreeProfile), scope=Scope.main,
        default_factory=lambda: [ToolsTreeProfile.misc, ToolsTreeProfile.package_manager, ToolsTreeProfile.runtime],
        metavar="PROFILES", help="Profiles of the default tools tree.")
    tools_tree_mirror: Optional[str] = setting(
        section=B, key="ToolsTreeMirror", flags=("--tools-tree-mirror",), scope=Scope.main,
        metavar="URL", help="Mirror for the default tools tree.")
    tools_tree_repositories: list[str] = setting(
        section=B, key="ToolsTreeRepositories", flags=("--tools-tree-repository",), kind=Kind.LIST,
        default_factory=list, scope=Scope.main, metavar="REPOS",
        help="Repositories= of the default tools tree.")
    tools_tree_sandbox_trees: list[ConfigTree] = _tree_list(
        section=B, key="ToolsTreeSandboxTrees", aliases=("ToolsTreePackageManagerTrees",),
        flags=("--tools-tree-sandbox-tree",), scope=Scope.main,
        help="SandboxTrees= of the default tools tree.")
    tools_tree_packages: list[str] = setting(
        section=B, key="ToolsTreePackages", flags=("--tools-tree-package",), kind=Kind.LIST, default_factory=list,
        scope=Scope.main, metavar="PACKAGES", help="Extra packages of the default tools tree.")
    tools_tree_package_directories: list[Path] = _path_list(
        section=B, key="ToolsTreePackageDirectories", flags=("--tools-tree-package-directory",), scope=Scope.main,
        help="PackageDirectories= of the default tools tree.")
    tools_tree_certificates: bool = _flag(
        section=B, key="ToolsTreeCertificates", flags=("--tools-tree-certificates",), default=True,
        scope=Scope.universal, help="Use the certificates of the tools tree.")
    cache_only: CacheOnly = setting(
        section=B, key="CacheOnly", flags=("--cache-only",), parse=parse_enum(CacheOnly),
        choices=choices(CacheOnly), default=CacheOnly.auto, scope=Scope.universal,
        help="Whether the package manager may use the network: auto, metadata, always or never.")
    sandbox_trees: list[ConfigTree] = _tree_list(
        section=B, key="SandboxTrees", aliases=("PackageManagerTrees",), flags=("--sandbox-tree",),
        path_default=("mkosi.sandbox/",),
        scope=Scope.universal,
        help="Trees laid over the sandbox the tools run in (default: mkosi.sandbox/).")
    cache_dir: Optional[Path] = setting(
        section=B, key="CacheDirectory", flags=("--cache-directory",), parse=parse_path, path_rule=PathRule.path,
        default_fn=_default_cache_dir, scope=Scope.universal, metavar="PATH",
        help="Directory of the incremental cached images (default: mkosi.cache/).")
    cache_key: str = setting(
        section=B, key="CacheKey", flags=("--cache-key",), default="&d~&r~&a~&I", scope=Scope.inherited,
        metavar="KEY", help="Subdirectory of CacheDirectory= for this image's cache.")
    build_key: str = setting(
        section=B, key="BuildKey", flags=("--build-key",), default="&d~&r~&a", scope=Scope.inherited,
        metavar="KEY", help="Subdirectory of BuildDirectory= for this image ('-': none).")
    use_subvolumes: Feature = _feature(
        section=B, key="UseSubvolumes", flags=("--use-subvolumes",), scope=Scope.universal,
        help="Use btrfs subvolumes for directory trees: yes, no or auto.")
    repart_offline: bool = _flag(
        section=B, key="RepartOffline", flags=("--repart-offline",), default=True, scope=Scope.universal,
        help="systemd-repart builds Format=disk images without loop devices (no: with them, as root).")
    history: bool = _flag(
        section=B, key="History", flags=("--history",), default=False, scope=Scope.main,
        help="Remember the command line of the last build for later verbs.")
    build_sources_ephemeral: BuildSourcesEphemeral = setting(
        section=B, key="BuildSourcesEphemeral", flags=("--build-sources-ephemeral",),
        parse=parse_bool_or_enum(BuildSourcesEphemeral, BuildSourcesEphemeral.yes, BuildSourcesEphemeral.no),
        choices=choices(BuildSourcesEphemeral), const="yes", default=BuildSourcesEphemeral.no,
        scope=Scope.universal,
        help="Discard the scripts' changes to the sources: yes, no or buildcache.")
    environment_files: list[Path] = _path_list(
        section=B, key="EnvironmentFiles", flags=("--env-file",), path_default=("mkosi.env",),
        resolve_fn=_environment_files,
        help="Files of NAME=VALUE lines for the scripts, read before Environment= (mkosi.env first).")
    proxy_url: Optional[str] = setting(
        section=B, key="ProxyUrl", flags=("--proxy-url",), parse=parse_proxy_url, redact=redacted_url,
        scope=Scope.universal, metavar="URL",
        help="Proxy for the network connections of the build (without a scheme: http://).")
    proxy_exclude: list[str] = setting(
        section=B, key="ProxyExclude", flags=("--proxy-exclude",), kind=Kind.LIST, parse=parse_proxy_exclude,
        default_factory=list, scope=Scope.universal, metavar="HOSTS", help="Hosts reached without the proxy.")
    proxy_peer_certificate: Optional[Path] = setting(
        section=B, key="ProxyPeerCertificate", flags=("--proxy-peer-certificate",), parse=parse_path,
        path_rule=PathRule.path, scope=Scope.universal, metavar="PATH",
        help="Certificates that verify the proxy (dnf only).")
    proxy_client_certificate: Optional[Path] = setting(
        section=B, key="ProxyClientCertificate", flags=("--proxy-client-certificate",), parse=parse_path,
        path_rule=PathRule.path, scope=Scope.universal, metavar="PATH",
        help="Client certificate for the proxy (dnf only).")
    proxy_client_key: Optional[Path] = setting(
        section=B, key="ProxyClientKey", flags=("--proxy-client-key",), parse=parse_path, path_rule=PathRule.path,
        scope=Scope.universal, secret=True, metavar="PATH",
        help="Client key for the proxy (dnf only; default: the client certificate's file).")

    # ---- [Runtime] ----
    vmm: Vmm = setting(
        section=R, key="VirtualMachineMonitor", flags=("--vmm",), parse=parse_enum(Vmm), choices=choices(Vmm),
        default=Vmm.qemu, scope=Scope.main, help="Virtual machine monitor of the vm verb.")
    console: ConsoleMode = setting(
        section=R, key="Console", flags=("--console",), parse=parse_enum(ConsoleMode), choices=choices(ConsoleMode),
        default=ConsoleMode.interactive, scope=Scope.main, help="Console of the virtual machine.")
    max_mem: Optional[int] = setting(
        section=R, key="MaxMem", flags=("--maxmem",), parse=parse_size, scope=Scope.main,
        metavar="BYTES", help="Maximum memory of the virtual machine, hotplug included (default: RAM=).")
    cxl: bool = _flag(
        section=R, key="CXL", flags=("--cxl",), default=False, scope=Scope.main,
        help="Enable CXL devices in the virtual machine.")
    vsock: Feature = _feature(
        section=R, key="VSock", aliases=("QemuVsock",), flags=("--vsock",), scope=Scope.main,
        help="Give the virtual machine a vsock: yes, no or auto.")
    vsock_cid: str = setting(
        section=R, key="VSockCID", aliases=("QemuVsockConnectionId",), flags=("--vsock-cid",), parse=parse_vsock_cid,
        default="auto", scope=Scope.main, metavar="CID", help="vsock connection ID: a number, 'hash' or 'auto'.")
    tpm: Feature = _feature(
        section=R, key="TPM", aliases=("QemuSwtpm",), flags=("--tpm",), scope=Scope.main,
        help="Give the virtual machine a software TPM: yes, no or auto.")
    removable: bool = _flag(
        section=R, key="Removable", aliases=("QemuRemovable",), flags=("--removable",), default=False,
        scope=Scope.main, help="Attach the image as a removable USB device.")
    firmware: Firmware = setting(
        section=R, key="Firmware", aliases=("QemuFirmware",), flags=("--firmware",), parse=parse_enum(Firmware),
        choices=choices(Firmware),
        default=Firmware.auto, scope=Scope.main, help="Firmware of the virtual machine.")
    firmware_variables: Optional[str] = setting(
        section=R, key="FirmwareVariables", aliases=("QemuFirmwareVariables",), flags=("--firmware-variables",),
        parse=parse_firmware_variables,
        scope=Scope.main, metavar="PATH",
        help="UEFI variables file (or microsoft, microsoft-mok, custom).")
    linux: Optional[str] = setting(
        section=R, key="Linux", aliases=("QemuKernel",), flags=("--linux",), scope=Scope.main,
        metavar="PATH",
        help="Kernel for direct kernel boot.")
    drives: list[str] = setting(
        section=R, key="Drives", aliases=("QemuDrives",), flags=("--drive",), kind=Kind.LIST, parse=parse_drive,
        separator=r"\s+",
        default_factory=list, scope=Scope.main, metavar="ID:SIZE[:...]",
        help="Extra drives of the virtual machine.")
    credentials: list[str] = setting(
        section=R, key="Credentials", flags=("--credential",), kind=Kind.LIST, parse=parse_credential,
        separator=r"\s+", remove_by_key=True, default_factory=list, scope=Scope.main, secret=True,
        metavar="NAME=VALUE|PATH", help="systemd credentials passed to the container or virtual machine.")
    kernel_command_line_extra: list[str] = setting(
        section=R, key="KernelCommandLineExtra", flags=("--kernel-command-line-extra",), kind=Kind.LIST,
        separator=r"\s+", default_factory=list, scope=Scope.main, metavar="OPTIONS",
        help="Kernel command line added when the image is booted.")
    runtime_trees: list[ConfigTree] = setting(
        section=R, key="RuntimeTrees", flags=("--runtime-tree",), kind=Kind.LIST, parse=parse_relative_tree,
        separator=r",", path_rule=PathRule.pair, default_factory=list, scope=Scope.main,
        metavar="SRC[:TARGET]", help="Directories mounted into the container or virtual machine.")
    runtime_size: Optional[int] = setting(
        section=R, key="RuntimeSize", flags=("--runtime-size",), parse=parse_size, scope=Scope.main,
        metavar="BYTES", help="Grow disk images to this size before booting them.")
    runtime_network: RuntimeNetwork = setting(
        section=R, key="RuntimeNetwork", flags=("--runtime-network",), parse=parse_enum(RuntimeNetwork),
        choices=choices(RuntimeNetwork), default=RuntimeNetwork.user, scope=Scope.main,
        help="Network of the container or virtual machine: user, interface or none.")
    runtime_build_sources: bool = _flag(
        section=R, key="RuntimeBuildSources", flags=("--runtime-build-sources",), default=False, scope=Scope.main,
        help="Mount the build sources where the build scripts saw them.")
    bind_user: bool = _flag(
        section=R, key="BindUser", flags=("--bind-user",), default=False, scope=Scope.main,
        help="Bind the invoking user's home directory into the machine.")
    unit_properties: list[str] = setting(
        section=R, key="UnitProperties", flags=("--unit-property",), kind=Kind.LIST, separator=r"\s+",
        default_factory=list, scope=Scope.main, metavar="PROPERTY",
        help="systemd unit properties of the machine's scope.")
    ssh_certificate: Optional[Path] = setting(
        section=R, key="SshCertificate", flags=("--ssh-certificate",), parse=parse_path, path_rule=PathRule.path,
        path_default=("mkosi.crt",), scope=Scope.main, metavar="PATH",
        help="X.509 certificate whose key root accepts over ssh in the machine (default: mkosi.crt).")
    machine: Optional[str] = setting(
        section=R, key="Machine", flags=("--machine",), scope=Scope.main, metavar="NAME",
        help="Machine name of the container or virtual machine.")
    register: Feature = _feature(
        section=R, key="Register", flags=("--register",), scope=Scope.main,
        help="Register the machine with systemd-machined: yes, no or auto.")
    forward_journal: Optional[Path] = setting(
        section=R, key="ForwardJournal", flags=("--forward-journal",), parse=parse_path, path_rule=PathRule.path,
        scope=Scope.main, metavar="PATH", help="Where the machine's journal is written.")
    storage_target_mode: Feature = _feature(
        section=R, key="StorageTargetMode", flags=("--storage-target-mode",), scope=Scope.main,
        help="serve: also serve disk images over NVMe-TCP: yes, no or auto.")
    sysupdate_dir: Optional[Path] = setting(
        section=R, key="SysupdateDirectory", flags=("--sysupdate-directory",), parse=parse_path,
        path_rule=PathRule.path, path_default=("mkosi.sysupdate/",), scope=Scope.main,
        metavar="PATH", help="systemd-sysupdate transfer definitions (default: mkosi.sysupdate/).")
