"""The ONE settings table.

Every setting is a field of Args (the invocation) or Config (one image) declared with `setting(...)`:
its INI section and key, its flags, parser, default and help live on that line. The argparse parser,
the INI reader, `summary`, `summary --json`, shell completion and the docs test all derive from them.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional, cast

from mkosi.config.enums import (
    BasePackages,
    BiosBootloader,
    BootProtocol,
    CleanPackageMetadata,
    ConfigLanguage,
    Distribution,
    Encrypt,
    ManifestFormat,
    QemuKvm,
    SourceFileTransfer,
    SplitArtifact,
    UnifiedKernelImages,
    Verb,
    Verity,
    WithNetwork,
)
from mkosi.config.envfile import merged_environment
from mkosi.config.modern import ModernSettings
from mkosi.config.types import (
    DEBUG_AREAS,
    ConfigTree,
    Kind,
    MatchKind,
    PathRule,
    Resolving,
    Scope,
    Setting,
    parse_bool,
    parse_bool_or_auto,
    parse_bool_or_enum,
    parse_compression,
    parse_debug,
    parse_enum,
    parse_environment_item,
    parse_epoch,
    parse_force,
    parse_hostname,
    parse_image_name,
    parse_machine_id,
    parse_output_path,
    parse_path,
    parse_port,
    parse_positive,
    parse_seed,
    parse_size,
    parse_tree,
    parse_uint,
    resolve_trees,
    setting,
    try_bool,
)
from mkosi.distributions import facts
from mkosi.errors import ConfigError
from mkosi.formats import FormatKind, OutputFormat, implemented_names, names, parse_format

D, O, C, P, V, H = "Distribution", "Output", "Content", "Partitions", "Validation", "Host"  # noqa: E741
CFG, INC, B, R = "Config", "Include", "Build", "Runtime"
NOT_YET = "not implemented yet"


# ---- defaults that depend on other settings or on the host (each row names what it depends on) ----

def _default_distribution(v: Resolving) -> Distribution:
    dist = facts.host_distribution()[0]
    if dist is None:
        raise ConfigError("cannot tell which distribution the host runs; set Distribution=")
    return dist


def _default_release(v: Resolving) -> str:
    host_dist, host_release = facts.host_distribution()
    if v["distribution"] == host_dist and host_release:
        return host_release
    return facts.default_release(v["distribution"])


def _parse_name(value: str) -> str:
    v = value.strip()
    if not v or "/" in v or v.startswith("."):
        raise ValueError(f"invalid name '{value}': a profile or image name cannot be empty, contain '/' or "
                         "start with '.'")
    return v


def _parse_architecture(value: str) -> str:
    return facts.normalize_architecture(value.strip())


def _default_architecture(v: Resolving) -> str:
    return facts.host_architecture()


def _default_output_dir(v: Resolving) -> Optional[Path]:
    # mkosi.output/ only applies when Output= is unset or a bare file name; a path with a slash wins.
    if v["output"] is None or not v["output"].is_absolute():
        return v.found.get("mkosi.output")
    return None


def _default_boot_protocols(v: Resolving) -> list[BootProtocol]:
    # BiosBootloader=grub adds BIOS boot to UEFI (Bootloader= says what boots on UEFI).
    if not v["bootable"]:
        return []
    bios = v["bios_bootloader"] == BiosBootloader.grub
    return [BootProtocol.uefi, BootProtocol.bios] if bios else [BootProtocol.uefi]


def _default_qemu_boot(v: Resolving) -> BootProtocol:
    protocols: list[BootProtocol] = v["boot_protocols"] or [BootProtocol.uefi]
    return protocols[0]


def _compress_target(fmt: OutputFormat) -> str:
    """Compress= compresses the file system of formats that can, otherwise the output file."""
    return "compress_fs" if fmt.row.compresses_fs else "compress_output"


# CentOS and its rebuilds up to release 8 have no zstd in their tools: the modern language's default is xz.
_XZ_BY_DEFAULT = (Distribution.centos, Distribution.centos_epel, Distribution.rocky, Distribution.rocky_epel,
                  Distribution.alma, Distribution.alma_epel, Distribution.rhel, Distribution.rhel_ubi)


def _format_compression(v: Resolving) -> Optional[str]:
    """The compression a format uses by default: the man page's xz (tar, cpio) in classic trees; in the
    modern language zstd instead of it, but xz for CentOS and derivatives up to 8 (OCI keeps gzip)."""
    default: Optional[str] = v["format"].row.default_compression
    if default != "xz" or v.language != ConfigLanguage.modern:
        return default
    if v["distribution"] in _XZ_BY_DEFAULT:
        major = str(v["release"] or "").split(".")[0]
        if major.isdigit() and int(major) <= 8:
            return "xz"
    return "zstd"


def _default_compress_output(v: Resolving) -> str:
    if v["compress"] is not None and _compress_target(v["format"]) == "compress_output":
        return str(v["compress"])
    return _format_compression(v) or "no"


def _resolve_compress_output(value: str, v: Resolving) -> str:
    """`yes` is the format's own default compression (xz where it has none: zstd in modern trees)."""
    if value != "yes":
        return value
    row = v["format"].row
    own = _format_compression(v)
    if own is not None:
        return own
    if v.language == ConfigLanguage.modern and "zstd" in row.compressions:
        return "zstd"
    return (row.compressions or ("xz",))[0]


def _default_compress_fs(v: Resolving) -> str:
    if v["compress"] is not None and _compress_target(v["format"]) == "compress_fs":
        return str(v["compress"])
    return "no"


def _resolve_compress_fs(value: str, v: Resolving) -> str:
    if (v["format"].row.root_fs == "squashfs" and value in ("yes", "no")) or value == "yes":
        return "zstd"
    return value


def _default_image_version(v: Resolving) -> Optional[str]:
    path = v.found.get("mkosi.version")
    version = read_text_file(path, "mkosi.version").strip() if path else ""
    try:
        return parse_image_name(version) if version else None
    except ValueError as e:
        raise ConfigError(str(e), path=str(path), setting="ImageVersion")


def _default_password(v: Resolving) -> Optional[str]:
    path = v.found.get("mkosi.rootpw")
    if path is None:
        return None
    check_secret_file_mode(path, "mkosi.rootpw")
    password = read_text_file(path, "mkosi.rootpw").rstrip("\r\n")
    if "\0" in password or "\n" in password or "\r" in password:
        raise ConfigError("must hold one line without NUL bytes", path=str(path), setting="mkosi.rootpw")
    return password


def _default_root_size(v: Resolving) -> Optional[int]:
    return 3 * 1024**3 if v["format"].row.is_disk else None


def _default_esp_size(v: Resolving) -> Optional[int]:
    return 256 * 1024**2 if v["bootable"] else None


def _default_seed(v: Resolving) -> Optional[str]:
    """Seed= falls back to the UUID in mkosi.seed."""
    path = v.found.get("mkosi.seed")
    if path is None:
        return None
    try:
        return parse_seed(read_text_file(path, "Seed").strip())
    except ValueError as e:
        raise ConfigError(str(e), path=str(path), setting="Seed")


def _default_source_date_epoch(v: Resolving) -> Optional[int]:
    """SourceDateEpoch= falls back to SOURCE_DATE_EPOCH from Environment=, then from mkosi's environment."""
    given = [item.partition("=")[2] for item in v["environment"] if item.startswith("SOURCE_DATE_EPOCH=")]
    where = "Environment=SOURCE_DATE_EPOCH"
    if not given and os.environ.get("SOURCE_DATE_EPOCH", "").strip():
        given, where = [os.environ["SOURCE_DATE_EPOCH"]], "$SOURCE_DATE_EPOCH"
    if not given:
        return None
    try:
        return parse_epoch(given[-1])
    except ValueError as e:
        raise ConfigError(f"{where}: {e}")


def _resolve_environment(value: list[str], v: Resolving) -> list[str]:
    """The variables of EnvironmentFiles= (mkosi.env first) join Environment=, which wins over them."""
    return merged_environment(v["environment_files"], value)


def read_text_file(path: Path, setting: str) -> str:
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise ConfigError("is not valid UTF-8 text", path=str(path), setting=setting)
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror}", path=str(path), setting=setting)


def check_secret_file_mode(path: Path, setting: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as e:
        raise ConfigError(f"cannot read it: {e.strerror or e}", path=str(path), setting=setting)
    if stat.S_IMODE(mode) & 0o177:
        raise ConfigError(f"file mode {oct(stat.S_IMODE(mode))} is too permissive, it must be 0600 or stricter",
                          path=str(path), setting=setting, hint=f"chmod 600 {path}")


def _choices(cls: Any) -> tuple[str, ...]:
    return tuple(str(m.value) for m in cls)


# ---- parsers of settings both languages have, accepting the modern values too ----

def parse_incremental(value: str) -> bool:
    """A boolean, or the modern 'strict' and 'relaxed' (both enable incremental mode here)."""
    if value.strip().lower() in ("strict", "relaxed"):
        return True
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"invalid value '{value}', expected a boolean, 'strict' or 'relaxed'")


def _default_with_docs(v: Resolving) -> bool:
    # The man page's images leave documentation out; the modern language's include it.
    return v.language == ConfigLanguage.modern


def _default_bootable(v: Resolving) -> Any:
    # Format=esp always has a boot loader; Bootable= only says whether the UKI goes next to it. Elsewhere
    # the modern language's default is auto, the man page's no.
    if v["format"].row.name == "esp":
        return True
    return "auto" if v.language == ConfigLanguage.modern else False


def _resolve_bootable(value: Any, v: Resolving) -> bool:
    # Bootable=auto: bootable where the format can boot (the GPT disk formats), not otherwise. That it was
    # auto is kept in bootable_auto: the build then makes the image not bootable, with a warning, instead
    # of failing when the image has no kernel or no boot loader (mkosi/boot/bootable.py settle_bootable()).
    auto = value == "auto"
    bootable = bool(v["format"].row.is_disk) if auto else bool(value)
    v.values["bootable_auto"] = auto and bootable
    return bootable


def _parse_verity(value: str) -> Verity:
    """A boolean or 'signed'; the modern 'hash' (a verity partition without a signature) is 'yes'."""
    if value.strip().lower() == "hash":
        return Verity.yes
    try:
        return parse_bool_or_enum(Verity, Verity.yes, Verity.no)(value)
    except ValueError:
        raise ValueError(f"invalid value '{value}', expected a boolean, 'signed' or 'hash' "
                         "('defer' and 'auto' are not implemented yet)")


def _default_verity(v: Resolving) -> Verity:
    """Extension images carry a verity hash partition, and sign its root hash when a key and a
    certificate are there (the modern manual's 'auto'); other formats have no verity unless asked."""
    if v["format"].row.kind is not FormatKind.extension:
        return Verity.no
    signed = v["verity_key"] is not None and v["verity_certificate"] is not None
    return Verity.signed if signed else Verity.yes


def _parse_machine_id_or_random(value: str) -> str:
    return "random" if value.strip().lower() == "random" else parse_machine_id(value)


def _resolve_machine_id(value: Optional[str], v: Resolving) -> Optional[str]:
    return uuid.uuid4().hex if value == "random" else value


def _parse_ukis(value: str) -> UnifiedKernelImages:
    """none, auto, unsigned or signed, or the classic boolean: yes always boots a UKI mkosi builds
    (unsigned), no never (none)."""
    v = value.strip().lower()
    try:
        return UnifiedKernelImages(v)
    except ValueError:
        pass
    try:
        return UnifiedKernelImages.unsigned if parse_bool(value) else UnifiedKernelImages.none
    except ValueError:
        raise ValueError(f"invalid value '{value}', expected a boolean or one of: none, auto, signed, unsigned")


_split_artifact = parse_enum(SplitArtifact)


def _parse_split_artifact(value: str) -> Any:
    """One item of SplitArtifacts=: an artifact kind, or a boolean (the classic form): yes stands for the
    root, verity and kernel images (partitions and uki), no for none. Booleans are expanded by
    _resolve_split_artifacts."""
    b = try_bool(value)
    if b is not None:
        return (SplitArtifact.partitions, SplitArtifact.uki) if b else ()
    return _split_artifact(value)


def _resolve_split_artifacts(value: list[Any], v: Resolving) -> list[SplitArtifact]:
    result: list[SplitArtifact] = []
    for item in value:
        if isinstance(item, tuple):
            result = list(item) if item else []  # a boolean replaces what came before it
        elif item not in result:
            result.append(item)
    return result


def _parse_one_script(value: str) -> Path:
    """One script; the modern lists of several scripts are not implemented yet."""
    items = [i for i in value.split(",") if i.strip()]
    if len(items) > 1:
        raise ValueError(f"'{value}': several scripts of one kind are not implemented yet; give one")
    return parse_path(items[0] if items else value)


def _parse_ssh(value: str) -> bool:
    """A boolean, or the modern always (yes), never, auto and runtime (no sshd is installed)."""
    v = value.strip().lower()
    if v == "always":
        return True
    if v in ("never", "auto", "runtime"):
        return False
    try:
        return parse_bool(value)
    except ValueError:
        raise ValueError(f"invalid value '{value}', expected a boolean or one of: always, never, auto, runtime")


@dataclasses.dataclass(frozen=True)
class Args:
    """What one invocation of mkosi does: the verb, its arguments and the options that apply to the
    whole run rather than to an image. The same for every image of a build."""

    verb: Verb = dataclasses.field(default=Verb.build)
    cmdline: list[str] = dataclasses.field(default_factory=list)
    directory: Optional[Path] = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--directory", "-C"), parse=parse_path, metavar="PATH",
        help="Change to this directory before doing anything; mkosi.* files are looked up there.")
    default_path: Optional[Path] = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--default",), flag_aliases=("--config",), parse=parse_path, metavar="PATH",
        help="Read settings from this file instead of mkosi.default / mkosi.conf.")
    all: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--all", "-a"), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Build every mkosi.* file found in mkosi.files/ (or --all-directory=).")
    all_directory: Optional[Path] = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--all-directory",), parse=parse_path, metavar="PATH",
        help="Where --all looks for settings files (default: mkosi.files/).")
    incremental: bool = setting(
        scope=Scope.invocation,
        section=B, key="Incremental", flags=("--incremental", "-i"), kind=Kind.BOOL, parse=parse_incremental,
        default=False, const="yes",
        help="Keep cached copies of the development and final images and reuse them on later runs.")
    debug: list[str] = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--debug",), kind=Kind.LIST, parse=parse_debug,
        default_factory=list, const="run", metavar="AREA[,AREA...]", choices=DEBUG_AREAS, reject_empty=True,
        help="Show debugging output: every command that runs, and tracebacks. "
             f"Areas: {', '.join(DEBUG_AREAS)}.")
    auto_bump: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--auto-bump", "-B"), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes", help="Bump the image version in mkosi.version after a successful build.")
    check_reproducible: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--check-reproducible",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="With build: build twice in separate workspaces and report whether the results are "
        "byte-identical.")
    json: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--json",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="With summary: print the configuration as JSON.")
    force: int = setting(
        scope=Scope.invocation,
        section=O, key="Force", flags=("--force", "-f"), kind=Kind.COUNT, parse=parse_force, default=0,
        help="Replace existing outputs; twice also drops incremental caches, thrice the package cache.")
    rerun_build_scripts: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--rerun-build-scripts", "-R"), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes",
        help="Run the build script again in the cached development image of an earlier -i build, without "
        "building any image.")
    wipe_build_dir: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--wipe-build-dir", "-w"), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes", help="Empty BuildDirectory= before the build script runs.")
    debug_shell: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--debug-shell",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="When a script fails, open an interactive shell in its container (needs a terminal).")
    debug_workspace: bool = setting(
        scope=Scope.invocation,
        section=None, key=None, flags=("--debug-workspace",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Keep the workspace of the build and print where it is.")


@dataclasses.dataclass(frozen=True)
class Config(ModernSettings):
    """Everything that describes one image: the settings of the files and the command line, resolved
    by finalize. Frozen; one per image."""

    # ---- [Config] and [Include] ----
    include: list[str] = setting(
        section=INC, key="Include", flags=("--include", "-I"), kind=Kind.LIST, default_factory=list,
        other_sections=(CFG,), metavar="PATH", summary=False,
        help="Read more configuration from this file or directory (or a built-in one: mkosi-vm, mkosi-initrd, "
        "mkosi-tools, mkosi-addon).")
    profiles: list[str] = setting(
        section=CFG, key="Profiles", flags=("--profile",), aliases=("Profile",), kind=Kind.LIST, default_factory=list,
        parse=_parse_name,
        scope=Scope.inherited, match=MatchKind.equal, metavar="NAME",
        help="Profiles to select: mkosi.profiles/NAME.conf or mkosi.profiles/NAME/ are read after mkosi.conf.d/.")
    dependencies: list[str] = setting(
        section=CFG, key="Dependencies", flags=("--dependency",), kind=Kind.LIST, default_factory=list,
        parse=_parse_name, metavar="IMAGE",
        help="Images of mkosi.images/ that are built before this one (for the main image: which ones are built).")
    minimum_version: Optional[str] = setting(
        section=CFG, key="MinimumVersion", flags=("--minimum-version",), scope=Scope.main, metavar="VERSION",
        help="The oldest mkosi version that can build this configuration (or commit:HASH).")
    pass_environment: list[str] = setting(
        section=CFG, key="PassEnvironment", flags=("--pass-environment",), kind=Kind.LIST, separator=r"\s+",
        default_factory=list, scope=Scope.main, metavar="NAMES",
        help="Environment variables passed on to sub-images as if they were universal settings.")
    configure_scripts: list[Path] = setting(
        section=CFG, key="ConfigureScripts", flags=("--configure-script",), kind=Kind.LIST, parse=parse_path,
        default_factory=list, path_default=("mkosi.configure",), path_rule=PathRule.path,
        metavar="PATH", help="Scripts that may rewrite the configuration before the build (JSON in, JSON out).")

    # ---- [Distribution] ----
    distribution: Distribution = setting(
        scope=Scope.universal, default_fn=_default_distribution, match=MatchKind.equal, specifier="d",
        section=D, key="Distribution", flags=("--distribution", "-d"), parse=parse_enum(Distribution),
        choices=_choices(Distribution), cache=True,
        help="Distribution to install (default: the host's).")
    release: str = setting(
        scope=Scope.universal, default_fn=_default_release, depends=("distribution",), match=MatchKind.equal,
        specifier="r",
        section=D, key="Release", flags=("--release", "-r"), cache=True,
        help="Release of the distribution (default: the host's, or a recent one of the chosen distribution).")
    mirror: Optional[str] = setting(
        scope=Scope.universal,
        section=D, key="Mirror", flags=("--mirror", "-m"), metavar="URL", cache=True,
        help="Mirror to download packages from.")
    repositories: list[str] = setting(
        scope=Scope.universal, match=MatchKind.equal,
        section=D, key="Repositories", flags=("--repositories",), kind=Kind.LIST, separator=r"[,\s]+",
        default_factory=list, metavar="REPOS", cache=True,
        help="Extra repositories (Debian: components or URLs; Arch: name::url).")
    use_host_repositories: bool = setting(
        scope=Scope.universal,
        section=D, key="UseHostRepositories", flags=("--use-host-repositories",), kind=Kind.BOOL,
        parse=parse_bool, default=False, const="yes", cache=True,
        help="RPM distributions: use the host's repository definitions.")
    repository_directory: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.reposdir/",), path_rule=PathRule.path,
        section=D, key="RepositoryDirectory", flags=("--repository-directory",), parse=parse_path,
        metavar="PATH", cache=True, help="Directory with extra repository definition files (mkosi.reposdir/).")
    architecture: str = setting(
        scope=Scope.universal, default_fn=_default_architecture, match=MatchKind.equal, specifier="a",
        section=D, key="Architecture", flags=("--architecture",), cache=True, parse=_parse_architecture,
        help="Architecture of the image (default: the host's). Must be runnable on the host.")

    # ---- [Output] ----
    format: OutputFormat = setting(
        match=MatchKind.equal, specifier="t",
        section=O, key="Format", flags=("--format", "-t"), parse=parse_format,
        choices=names(), default=OutputFormat("gpt_ext4"),
        help=f"Output format: {', '.join(implemented_names())}.")
    manifest_format: list[ManifestFormat] = setting(
        section=O, key="ManifestFormat", flags=("--manifest-format",), kind=Kind.LIST,
        parse=parse_enum(ManifestFormat), choices=_choices(ManifestFormat),
        default_factory=lambda: [ManifestFormat.json],
        help="Manifests to write: json, changelog, spdx (SPDX 2.3 JSON), cyclonedx (CycloneDX 1.5 JSON).")
    output: Optional[Path] = setting(
        specifier="o",
        section=O, key="Output", flags=("--output", "-o"), parse=parse_output_path, metavar="PATH",
        help="Path of the output image (default: image name from ImageId=/ImageVersion= and the format).")
    output_split_root: Optional[Path] = setting(
        section=O, key="OutputSplitRoot", flags=("--output-split-root",), parse=parse_path, metavar="PATH",
        help="Path of the split-out root partition (with SplitArtifacts=).")
    output_split_verity: Optional[Path] = setting(
        section=O, key="OutputSplitVerity", flags=("--output-split-verity",), parse=parse_path,
        aliases=("OutputSplitVerify",), flag_aliases=("--output-split-verify",), metavar="PATH",
        help="Path of the split-out verity partition (with SplitArtifacts=).")
    output_split_kernel: Optional[Path] = setting(
        section=O, key="OutputSplitKernel", flags=("--output-split-kernel",), parse=parse_path, metavar="PATH",
        help="Path of the split-out unified kernel image (with SplitArtifacts=).")
    output_split_verity_sig: Optional[Path] = setting(
        section=O, key="OutputSplitVeritySig", flags=("--output-split-verity-sig",), parse=parse_path,
        metavar="PATH",
        help="Path of the split-out verity signature partition (with SplitArtifacts= and Verity=signed).")
    output_dir: Optional[Path] = setting(
        scope=Scope.universal, default_fn=_default_output_dir, depends=("output",), specifier="O",
        path_rule=PathRule.path,
        section=O, key="OutputDirectory", flags=("--output-directory", "-O"), flag_aliases=("--output-dir",),
        parse=parse_path, metavar="PATH",
        aliases=("OutputDir",),
        help="Directory for all artifacts (default: mkosi.output/ if it exists).")
    workspace_dir: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.workspace/",), path_rule=PathRule.path,
        section=B, key="WorkspaceDirectory", flags=("--workspace-directory",), flag_aliases=("--workspace-dir",),
        other_sections=(O,), parse=parse_path, metavar="PATH",
        help="Directory for temporary build data (default: mkosi.workspace/, else $TMPDIR or /var/tmp).")
    gpt_first_lba: Optional[int] = setting(
        default_fn=lambda v: 2048,
        section=O, key="GPTFirstLBA", flags=("--gpt-first-lba",), parse=parse_uint, metavar="LBA",
        help="First usable LBA of the GPT (default 2048).")
    bootable: bool = setting(
        match=MatchKind.equal, default_fn=_default_bootable, resolve_fn=_resolve_bootable, depends=("format",),
        other_sections=(O,),
        section=C, key="Bootable", flags=("--bootable", "-b"), kind=Kind.BOOL, parse=parse_bool_or_auto, default=False,
        const="yes", cache=True, help="Make a bootable image (kernel, initrd, boot loader); auto: if the image has "
        "a kernel and boot loader (default: no in classic trees, auto in modern ones).")
    boot_protocols: list[BootProtocol] = setting(
        default_fn=_default_boot_protocols, depends=("bootable", "bios_bootloader"),
        section=O, key="BootProtocols", flags=("--boot-protocols",), kind=Kind.LIST, parse=parse_enum(BootProtocol),
        choices=_choices(BootProtocol), default_factory=list, cache=True,
        help="Boot protocols to support: uefi, bios, linux (default: uefi).")
    kernel_command_line: list[str] = setting(
        other_sections=(O,),
        section=C, key="KernelCommandLine", flags=("--kernel-command-line",), kind=Kind.LIST, separator=r"\s+",
        flag_aliases=("--kernel-commandline",),
        remove_by_key=True, default_factory=list, metavar="OPTIONS",
        help="Kernel command line of bootable images; '!*' clears, '!opt' removes an option.")
    secure_boot: bool = setting(
        other_sections=(O,),
        section=V, key="SecureBoot", flags=("--secure-boot",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Sign the EFI binaries for UEFI Secure Boot.")
    secure_boot_key: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.secure-boot.key",), path_rule=PathRule.path,
        other_sections=(O,),
        section=V, key="SecureBootKey", flags=("--secure-boot-key",), parse=parse_path, metavar="PATH",
        help="PEM private key for Secure Boot and verity signing (default: mkosi.secure-boot.key).")
    secure_boot_certificate: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.secure-boot.crt",), path_rule=PathRule.path,
        other_sections=(O,),
        section=V, key="SecureBootCertificate", flags=("--secure-boot-certificate",), parse=parse_path,
        metavar="PATH", help="X.509 certificate for Secure Boot (default: mkosi.secure-boot.crt).")
    secure_boot_common_name: str = setting(
        section=O, key="SecureBootCommonName", flags=("--secure-boot-common-name",), default="mkosi of %u",
        help="Common name of the certificate made by genkey; %%u is the user name.")
    secure_boot_valid_days: int = setting(
        section=O, key="SecureBootValidDays", flags=("--secure-boot-valid-days",), parse=parse_positive, default=730,
        help="Validity in days of the certificate made by genkey.")
    read_only: bool = setting(
        section=O, key="ReadOnly", flags=("--read-only",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Mark the root partition read-only (implied by squashfs and verity).")
    minimize: bool = setting(
        section=O, key="Minimize", flags=("--minimize", "-M"), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Shrink the root file system to its content (gpt_ext4, gpt_btrfs).")
    encrypt: Optional[Encrypt] = setting(
        section=O, key="Encrypt", flags=("--encrypt",), parse=parse_enum(Encrypt), choices=_choices(Encrypt),
        help="Encrypt with LUKS: 'all' (root, /home, /srv) or 'data' (/home, /srv).")
    verity: Verity = setting(
        other_sections=(O,),
        section=V, key="Verity", flags=("--verity",), parse=_parse_verity,
        choices=_choices(Verity), const="yes", default=Verity.no, default_fn=_default_verity,
        depends=("format", "verity_key", "verity_certificate"),
        help="Add a dm-verity partition for the root (or /usr); 'signed' also signs the root hash "
        "(extension images: 'signed' with a key and certificate, else 'yes').")
    compress_fs: str = setting(
        default_fn=_default_compress_fs, resolve_fn=_resolve_compress_fs, depends=("format", "compress"),
        section=O, key="CompressFs", flags=("--compress-fs",), parse=parse_compression, const="yes", default="no",
        help="Compression inside the file system (btrfs, squashfs): a boolean or zlib, lzo, zstd, lz4, xz.")
    compress_output: str = setting(
        default_fn=_default_compress_output, resolve_fn=_resolve_compress_output,
        depends=("format", "compress", "distribution", "release"),
        section=O, key="CompressOutput", flags=("--compress-output",), parse=parse_compression, const="yes",
        aliases=("XZ",), value_flags=(("--xz", "xz"),),
        help="Compress the output: a boolean, xz or zstd (implied for tar and cpio).")
    compress: Optional[str] = setting(
        section=O, key="Compress", flags=("--compress",), parse=parse_compression, const="yes",
        help="Compress the file system or the output, whichever suits the format.")
    mksquashfs: Optional[Path] = setting(
        path_default=("mkosi.mksquashfs-tool",), path_rule=PathRule.path,
        section=O, key="Mksquashfs", flags=("--mksquashfs",), parse=parse_path, metavar="PATH",
        help="mksquashfs executable to use (default: mkosi.mksquashfs-tool, else mksquashfs).")
    qcow2: bool = setting(
        section=O, key="QCow2", flags=("--qcow2",), kind=Kind.BOOL, parse=parse_bool, default=False, const="yes",
        help="Convert disk images to QCOW2.")
    hostname: Optional[str] = setting(
        other_sections=(O,),
        section=C, key="Hostname", flags=("--hostname",), parse=parse_hostname, cache=True,
        help="Host name of the image.")
    image_version: Optional[str] = setting(
        scope=Scope.inherited, default_fn=_default_image_version, match=MatchKind.version, specifier="v",
        section=O, key="ImageVersion", flags=("--image-version",), parse=parse_image_name,
        help="Version of the image (default: mkosi.version); part of the output name and os-release.")
    image_id: Optional[str] = setting(
        scope=Scope.inherited, match=MatchKind.glob, specifier="i",
        section=O, key="ImageId", flags=("--image-id",), parse=parse_image_name,
        help="Identifier of the image; names the output and the partitions, written to os-release.")
    with_unified_kernel_images: UnifiedKernelImages = setting(
        other_sections=(O,),
        section=C, key="UnifiedKernelImages", flags=("--unified-kernel-images",), kind=Kind.BOOL,
        aliases=("WithUnifiedKernelImages",), flag_aliases=("--with-unified-kernel-images",), parse=_parse_ukis,
        default=UnifiedKernelImages.auto, const="yes", negative_flags=("--without-unified-kernel-images",),
        cache=True, help="Boot through unified kernel images (auto: when the EFI stub is there; unsigned, "
                         "signed) or Type #1 entries (none).")
    hostonly_initrd: bool = setting(
        section=O, key="HostonlyInitrd", flags=("--hostonly-initrd",), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes", cache=True, help="Build a host-only initrd (dracut --hostonly).")
    cache_initrd: bool = setting(
        section=O, key="CacheInitrd", flags=("--cache-initrd",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", cache=True, help="Leave the image's dracut configuration files out of the cached initrd's key.")
    usr_only: bool = setting(
        section=O, key="UsrOnly", flags=("--usr-only",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Put only /usr in the image, in a /usr partition.")
    split_artifacts: list[SplitArtifact] = setting(
        section=O, key="SplitArtifacts", flags=("--split-artifacts",), kind=Kind.LIST, parse=_parse_split_artifact,
        resolve_fn=_resolve_split_artifacts, default_factory=list, const="yes", choices=_choices(SplitArtifact),
        metavar="ARTIFACTS", help="Also write the root, verity and kernel images as separate files.")
    no_chown: bool = setting(
        section=O, key="NoChown", flags=("--no-chown",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Leave outputs owned by root instead of the user who ran sudo.")
    tar_strip_selinux_context: bool = setting(
        section=O, key="TarStripSELinuxContext", flags=("--tar-strip-selinux-context",), kind=Kind.BOOL,
        parse=parse_bool, default=False, const="yes", help="Drop security.selinux xattrs from tar outputs.")
    machine_id: Optional[str] = setting(
        other_sections=(O,), resolve_fn=_resolve_machine_id,
        section=C, key="MachineId", flags=("--machine-id",), parse=_parse_machine_id_or_random,
        help="Machine ID to ship in the image (default: none is shipped).")
    seed: Optional[str] = setting(
        default_fn=_default_seed,
        section=O, key="Seed", flags=("--seed",), parse=parse_seed, metavar="UUID",
        help="UUID the partition table's and file systems' UUIDs are derived from, or 'random' "
        "(default: mkosi.seed if it exists, else derived from SourceDateEpoch= when set, else random).")

    # ---- [Content] ----
    base_packages: BasePackages = setting(
        section=C, key="BasePackages", flags=("--base-packages",),
        parse=parse_bool_or_enum(BasePackages, BasePackages.yes, BasePackages.no), choices=_choices(BasePackages),
        const="yes", default=BasePackages.yes, cache=True,
        help="Add the packages a working image needs (systemd, ...): yes, no or conditional.")
    packages: list[str] = setting(
        section=C, key="Packages", flags=("--package", "-p"), kind=Kind.LIST, default_factory=list,
        metavar="PACKAGES", cache=True, help="Packages to install; '!name' removes one, '!*' clears.")
    with_docs: bool = setting(
        section=C, key="WithDocs", flags=("--with-docs",), kind=Kind.BOOL, parse=parse_bool, default=False,
        default_fn=_default_with_docs, const="yes", cache=True,
        help="Install documentation (default: no in classic trees, yes in modern ones).")
    with_tests: bool = setting(
        other_sections=(C,),
        section=B, key="WithTests", flags=("--with-tests",), kind=Kind.BOOL, parse=parse_bool, default=True,
        const="yes", negative_flags=("--without-tests", "-T"),
        help="Tell the build script to run tests ($WITH_TESTS).")
    cache_path: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.pkgcache/", "mkosi.cache/"), path_rule=PathRule.path,
        other_sections=(C,), aliases=("Cache",), flag_aliases=("--cache",),
        section=B, key="PackageCacheDirectory", flags=("--package-cache-dir",), parse=parse_path, metavar="PATH",
        help="Package cache directory shared between builds (default: mkosi.cache/).")
    skeleton_trees: list[ConfigTree] = setting(
        path_default=("mkosi.skeleton/", "mkosi.skeleton.tar"), path_rule=PathRule.pair, resolve_fn=resolve_trees,
        section=C, key="SkeletonTrees", flags=("--skeleton-tree",), kind=Kind.LIST, parse=parse_tree,
        aliases=("SkeletonTree",), separator=r",", default_factory=list, metavar="SRC[:TARGET]", cache=True,
        help="Directory or tar archive copied into the image before packages (default: mkosi.skeleton/).")
    extra_trees: list[ConfigTree] = setting(
        path_default=("mkosi.extra/", "mkosi.extra.tar"), path_rule=PathRule.pair, resolve_fn=resolve_trees,
        section=C, key="ExtraTrees", flags=("--extra-tree",), kind=Kind.LIST, parse=parse_tree, separator=r",",
        aliases=("ExtraTree",), default_factory=list, metavar="SRC[:TARGET]",
        help="Directory or tar archive copied into the image after packages (default: mkosi.extra/).")
    clean_package_metadata: CleanPackageMetadata = setting(
        section=C, key="CleanPackageMetadata", flags=("--clean-package-metadata",),
        parse=parse_bool_or_enum(CleanPackageMetadata, CleanPackageMetadata.yes, CleanPackageMetadata.no),
        choices=_choices(CleanPackageMetadata), default=CleanPackageMetadata.auto,
        help="Remove package manager databases and caches: yes, no or auto.")
    remove_files: list[str] = setting(
        section=C, key="RemoveFiles", flags=("--remove-files",), kind=Kind.LIST, default_factory=list,
        metavar="GLOBS", help="Globs of files to delete from the image at the end.")
    remove_packages: list[str] = setting(
        section=C, key="RemovePackages", flags=("--remove-package",), kind=Kind.LIST, default_factory=list,
        metavar="PACKAGES", help="Packages to remove from the image at the end.")
    environment: list[str] = setting(
        match=MatchKind.equal, other_sections=(C,),
        section=B, key="Environment", flags=("--environment", "-E"), kind=Kind.LIST, parse=parse_environment_item,
        aliases=("BuildEnvironment",), flag_aliases=("--build-environment",),
        separator=r"\s+", default_factory=list, metavar="NAME[=VALUE]",
        depends=("environment_files",), resolve_fn=_resolve_environment,
        help="Variables for the scripts; a bare name passes the value from mkosi's environment.")
    source_date_epoch: Optional[int] = setting(
        scope=Scope.universal, default_fn=_default_source_date_epoch, depends=("environment",),
        section=C, key="SourceDateEpoch", flags=("--source-date-epoch",), parse=parse_epoch, metavar="SECONDS",
        cache=True,
        help="Clamp file times to this time and build reproducibly (default: $SOURCE_DATE_EPOCH from "
        "Environment=, then from mkosi's environment).")
    build_sources: list[ConfigTree] = setting(
        scope=Scope.universal, default_fn=lambda v: [ConfigTree(v.directory)], path_rule=PathRule.pair,
        other_sections=(C,), kind=Kind.LIST, parse=parse_tree, separator=r"[,\s]+", default_factory=list,
        section=B, key="BuildSources", flags=("--build-sources",), metavar="SRC[:TARGET]",
        help="Source trees for the build script: the first without a target (or at /) is $SRCDIR, the others go "
        "below it at their targets (default: the directory of the configuration).")
    build_dir: Optional[Path] = setting(
        scope=Scope.universal, path_default=("mkosi.builddir/",), path_rule=PathRule.path,
        other_sections=(C,), flag_aliases=("--build-dir",),
        section=B, key="BuildDirectory", flags=("--build-directory",), parse=parse_path, metavar="PATH",
        aliases=("BuildDir",),
        help="Out-of-tree build directory shared between builds (default: mkosi.builddir/).")
    include_dir: Optional[Path] = setting(
        path_default=("mkosi.includedir/",), path_rule=PathRule.path,
        section=C, key="IncludeDirectory", flags=("--include-directory",), parse=parse_path, metavar="PATH",
        help="Directory mounted at /usr/include in the build image (default: mkosi.includedir/).")
    install_dir: Optional[Path] = setting(
        path_default=("mkosi.installdir/",), path_rule=PathRule.path,
        section=C, key="InstallDirectory", flags=("--install-directory",), parse=parse_path, metavar="PATH",
        help="Directory used as $DESTDIR, shared between builds (default: mkosi.installdir/).")
    build_packages: list[str] = setting(
        section=C, key="BuildPackages", flags=("--build-package",), kind=Kind.LIST, default_factory=list,
        metavar="PACKAGES", cache=True, help="Packages installed only in the build image.")
    password: Optional[str] = setting(
        default_fn=_default_password,
        section=C, key="RootPassword", flags=("--root-password",), secret=True, cache=True, aliases=("Password",),
        flag_aliases=("--password",),
        help="Root password (default: mkosi.rootpw, else root is locked).")
    password_is_hashed: bool = setting(
        section=C, key="PasswordIsHashed", flags=("--password-is-hashed",), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes", cache=True, help="The password is already hashed (crypt(3) format).")
    autologin: bool = setting(
        section=C, key="Autologin", flags=("--autologin",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", cache=True, help="Log root in automatically on the console.")
    skip_final_phase: bool = setting(
        section=C, key="SkipFinalPhase", flags=("--skip-final-phase",), kind=Kind.BOOL, parse=parse_bool,
        default=False, const="yes", help="Stop after the build phase; make no final image.")
    build_script: Optional[Path] = setting(
        path_default=("mkosi.build",), path_rule=PathRule.path,
        section=C, key="BuildScripts", aliases=("BuildScript",), flags=("--build-script",), parse=_parse_one_script,
        metavar="PATH",
        help="Build script; makes the build two-phased (default: mkosi.build; empty disables).")
    prepare_script: Optional[Path] = setting(
        path_default=("mkosi.prepare",), path_rule=PathRule.path,
        section=C, key="PrepareScripts", aliases=("PrepareScript",), flags=("--prepare-script",),
        parse=_parse_one_script, metavar="PATH",
        cache=True, help="Script run in the image after packages are installed (default: mkosi.prepare).")
    postinst_script: Optional[Path] = setting(
        path_default=("mkosi.postinst",), path_rule=PathRule.path,
        section=C, key="PostInstallationScripts", aliases=("PostInstallationScript",), flags=("--postinst-script",),
        parse=_parse_one_script, metavar="PATH",
        help="Script run in the image at the end of each phase (default: mkosi.postinst).")
    finalize_script: Optional[Path] = setting(
        path_default=("mkosi.finalize",), path_rule=PathRule.path,
        section=C, key="FinalizeScripts", aliases=("FinalizeScript",), flags=("--finalize-script",),
        parse=_parse_one_script, metavar="PATH",
        help="Script run on the host with $BUILDROOT at the end of each phase (default: mkosi.finalize).")
    source_file_transfer: Optional[SourceFileTransfer] = setting(
        section=C, key="SourceFileTransfer", flags=("--source-file-transfer",), parse=parse_enum(SourceFileTransfer),
        choices=_choices(SourceFileTransfer),
        help="How sources enter the build image (default: copy-git-cached in git trees, else copy-all).")
    source_file_transfer_final: Optional[SourceFileTransfer] = setting(
        section=C, key="SourceFileTransferFinal", flags=("--source-file-transfer-final",),
        parse=parse_enum(SourceFileTransfer), choices=_choices(SourceFileTransfer),
        help="Copy sources into the final image too, this way (not 'mount'; default: not copied).")
    source_resolve_symlinks: bool = setting(
        section=C, key="SourceResolveSymlinks", flags=("--source-resolve-symlinks",), kind=Kind.BOOL,
        parse=parse_bool, default=False, const="yes", help="Copy what source symlinks point to (copy-all).")
    source_resolve_symlinks_final: bool = setting(
        section=C, key="SourceResolveSymlinksFinal", flags=("--source-resolve-symlinks-final",), kind=Kind.BOOL,
        parse=parse_bool, default=False, const="yes", help="Same as SourceResolveSymlinks=, for the final image.")
    with_network: WithNetwork = setting(
        scope=Scope.universal,
        other_sections=(C,),
        section=B, key="WithNetwork", flags=("--with-network",),
        parse=parse_bool_or_enum(WithNetwork, WithNetwork.yes, WithNetwork.no), choices=_choices(WithNetwork),
        const="yes", default=WithNetwork.no,
        help="Network for the build script; 'never' also keeps the package manager offline.")
    nspawn_settings: Optional[Path] = setting(
        path_default=("mkosi.nspawn",), path_rule=PathRule.path,
        other_sections=(C,),
        section=R, key="NSpawnSettings", flags=("--settings",), parse=parse_path, aliases=("Settings",),
        flag_aliases=("--nspawn-settings",), metavar="PATH",
        help=".nspawn file used by shell/boot and placed next to the output (default: mkosi.nspawn).")

    # ---- [Partitions] ----
    base_image: Optional[Path] = setting(
        section=P, key="BaseImage", flags=("--base-image",), parse=parse_path, metavar="PATH",
        help="Base image (directory or file system image); the output holds only the changes from it.")
    root_size: Optional[int] = setting(
        default_fn=_default_root_size, depends=("format",),
        section=P, key="RootSize", flags=("--root-size",), parse=parse_size, metavar="BYTES",
        help="Size of the root file system (default 3G).")
    esp_size: Optional[int] = setting(
        default_fn=_default_esp_size, depends=("bootable",),
        section=P, key="ESPSize", flags=("--esp-size",), parse=parse_size, metavar="BYTES",
        help="Size of the EFI system partition (default 256M).")
    swap_size: Optional[int] = setting(
        section=P, key="SwapSize", flags=("--swap-size",), parse=parse_size, metavar="BYTES",
        help="Size of a swap partition (default: none).")
    home_size: Optional[int] = setting(
        section=P, key="HomeSize", flags=("--home-size",), parse=parse_size, metavar="BYTES",
        help="Size of a separate /home partition (default: none).")
    srv_size: Optional[int] = setting(
        section=P, key="SrvSize", flags=("--srv-size",), parse=parse_size, metavar="BYTES",
        help="Size of a separate /srv partition (default: none).")
    var_size: Optional[int] = setting(
        section=P, key="VarSize", flags=("--var-size",), parse=parse_size, metavar="BYTES",
        help="Size of a separate /var partition (default: none).")
    tmp_size: Optional[int] = setting(
        section=P, key="TmpSize", flags=("--tmp-size",), parse=parse_size, metavar="BYTES",
        help="Size of a separate /var/tmp partition (default: none).")
    xbootldr_size: Optional[int] = setting(
        section=P, key="XBootLDRSize", flags=("--xbootldr-size",), parse=parse_size, metavar="BYTES",
        help="Size of an extended boot loader partition (XBOOTLDR) for /boot of bootable GPT images (default: none).")
    bios_size: Optional[int] = setting(
        section=P, key="BIOSSize", flags=("--bios-size",), parse=parse_size, metavar="BYTES",
        help="Size of the BIOS boot partition of images booted by BIOS (default 1M).")

    # ---- [Validation] ----
    checksum: bool = setting(
        default_fn=lambda v: v["sign"], depends=("sign",),
        section=V, key="Checksum", flags=("--checksum",), kind=Kind.BOOL, parse=parse_bool, default=False,
        const="yes", help="Write SHA256SUMS for the artifacts.")
    sign: bool = setting(
        section=V, key="Sign", flags=("--sign",), kind=Kind.BOOL, parse=parse_bool, default=False, const="yes",
        help="Sign SHA256SUMS with gpg (implies Checksum=).")
    key: Optional[str] = setting(
        section=V, key="Key", flags=("--key",), metavar="KEYID", help="gpg key to sign with.")
    bmap: bool = setting(
        section=V, key="BMap", flags=("--bmap",), kind=Kind.BOOL, parse=parse_bool, default=False, const="yes",
        help="Write a .bmap file for bmaptool.")

    # ---- [Host] ----
    extra_search_paths: list[Path] = setting(
        scope=Scope.universal,
        other_sections=(H,), flag_aliases=("--extra-search-paths",),
        section=B, key="ExtraSearchPaths", flags=("--extra-search-path",), kind=Kind.LIST, parse=parse_path,
        aliases=("ExtraSearchPath",),
        separator=r"[:,]", default_factory=list, metavar="PATHS",
        help="Directories searched for tools before $PATH (colon separated).")
    qemu_headless: bool = setting(
        other_sections=(H,), section=R, key="QemuHeadless", flags=("--qemu-headless",), kind=Kind.BOOL,
        parse=parse_bool, default=False,
        const="yes", cache=True, help="Serial console in the image; qemu without a window.")
    qemu_smp: str = setting(
        section=R, key="CPUs", flags=("--cpus",), aliases=("QemuSmp",), flag_aliases=("--qemu-smp",),
        other_sections=(H,), default="2", help="Number of VM CPUs (qemu -smp).")
    qemu_mem: str = setting(
        section=R, key="RAM", flags=("--ram",), aliases=("QemuMem",), flag_aliases=("--qemu-mem",),
        other_sections=(H,), default="1G", help="VM memory (qemu -m).")
    qemu_kvm: QemuKvm = setting(
        section=R, key="KVM", flags=("--kvm",), aliases=("QemuKvm",), flag_aliases=("--qemu-kvm",),
        other_sections=(H,),
        parse=parse_bool_or_enum(QemuKvm, QemuKvm.yes, QemuKvm.no), choices=_choices(QemuKvm),
        const="yes", default=QemuKvm.auto, help="Use KVM: yes, no or auto (auto probes that KVM really works).")
    qemu_args: list[str] = setting(
        other_sections=(H,), section=R, key="QemuArgs", flags=("--qemu-args",), kind=Kind.LIST, separator=r"\s+",
        default_factory=list,
        metavar="ARGS", help="Extra arguments for qemu.")
    nspawn_keep_unit: Optional[bool] = setting(
        other_sections=(H,), section=R, key="NspawnKeepUnit", flags=("--nspawn-keep-unit",), kind=Kind.BOOL,
        parse=parse_bool,
        const="yes", help="Run systemd-nspawn with --keep-unit (default: when there is no systemd/system bus).")
    qemu_boot: Optional[BootProtocol] = setting(
        scope=Scope.main, default_fn=_default_qemu_boot, depends=("boot_protocols",),
        other_sections=(H,), section=R, key="QemuBoot", flags=("--qemu-boot",), parse=parse_enum(BootProtocol),
        choices=_choices(BootProtocol), help="How qemu boots the image: uefi, bios or linux.")
    netdev: bool = setting(
        other_sections=(H,), section=R, key="Netdev", flags=("--netdev",), kind=Kind.BOOL, parse=parse_bool,
        default=False,
        aliases=("NetworkVeth",), flag_aliases=("--network-veth",),
        const="yes", help="Virtual network link between host and container/VM.")
    ephemeral: bool = setting(
        other_sections=(H,), section=R, key="Ephemeral", flags=("--ephemeral",), kind=Kind.BOOL, parse=parse_bool,
        default=False,
        const="yes", help="shell/boot/qemu run on a snapshot that is removed afterwards.")
    ssh: bool = setting(
        other_sections=(H,),
        section=C, key="Ssh", flags=("--ssh",), kind=Kind.BOOL, parse=_parse_ssh, default=False, const="yes",
        cache=True, help="Install and enable sshd, with a generated key for mkosi ssh.")
    ssh_key: Optional[Path] = setting(
        other_sections=(H,), section=R, key="SshKey", flags=("--ssh-key",), parse=parse_path, metavar="PATH",
        help="Private key for mkosi ssh (its .pub is installed in the image).")
    ssh_agent: Optional[str] = setting(
        other_sections=(H,), section=R, key="SshAgent", flags=("--ssh-agent",), metavar="PATH|true",
        help="ssh-agent socket whose keys are authorized in the image; 'true' uses $SSH_AUTH_SOCK.")
    ssh_port: int = setting(
        other_sections=(H,), section=R, key="SshPort", flags=("--ssh-port",), parse=parse_port, default=22,
        help="Port sshd listens on in the image.")
    ssh_timeout: int = setting(
        other_sections=(H,), section=R, key="SshTimeout", flags=("--ssh-timeout",), parse=parse_uint, default=0,
        help="Seconds mkosi ssh keeps retrying to connect.")

    # ---- derived by finalize (not settings) ----
    image: str = "main"          # the name of the image: main, or its name in mkosi.images/
    language: ConfigLanguage = ConfigLanguage.classic  # the language its files speak (layout.tree_language())
    # Bootable=auto on a format that can boot: bootable is True, but the build makes the image not bootable
    # (with a warning) when it has no kernel or boot loader, and no kernel or boot loader package is added.
    bootable_auto: bool = False
    output_link: Optional[str] = None  # the name of the link to the image in the output directory, if any
    passphrase_file: Optional[Path] = None
    version_file: Optional[Path] = None
    mksquashfs_tool: Optional[Path] = None
    config_files: list[Path] = dataclasses.field(default_factory=list)
    detected: dict[str, Path] = dataclasses.field(default_factory=dict)

    # ---- convenience ----
    @property
    def output_compression(self) -> Optional[str]:
        return None if self.compress_output in ("no", "none") else self.compress_output

    @property
    def root_readonly(self) -> bool:
        return self.read_only or self.format.row.read_only_root or self.verity != Verity.no

    @property
    def build_source(self) -> Optional[Path]:
        """The source tree the build script runs in ($SRCDIR): the first BuildSources= tree without a target
        below /, else the first one."""
        for tree in self.build_sources:
            if tree.target is None or tree.target == Path("/"):
                return tree.source
        return self.build_sources[0].source if self.build_sources else None

    @property
    def extra_build_sources(self) -> list[ConfigTree]:
        """The other BuildSources= trees, each copied to its target below $SRCDIR."""
        primary = self.build_source
        return [t for t in self.build_sources if t.source != primary and t.target not in (None, Path("/"))]

    @property
    def has_build_script(self) -> bool:
        return self.build_script is not None

    def setting_value(self, s: Setting) -> Any:
        if s.dest == "bootable" and self.bootable_auto:
            return "auto"
        return getattr(self, s.dest)

    @property
    def bootable_for_sure(self) -> bool:
        """Bootable=yes (not auto): what is decided before the build looks into the image (the kernel and
        boot loader packages, the host tools checked up front)."""
        return self.bootable and not self.bootable_auto


def _collect() -> tuple[Setting, ...]:
    rows = []
    for f in (*dataclasses.fields(Args), *dataclasses.fields(Config)):
        meta = f.metadata.get("setting")
        if meta is None:
            continue
        row = Setting(dest=f.name, **meta)
        if row.section == R and row.scope == Scope.image:
            row = dataclasses.replace(row, scope=Scope.main)  # [Runtime] settings are the main image's
        if row.section == R and H not in row.other_sections:
            row = dataclasses.replace(row, other_sections=(*row.other_sections, H))  # [Host] is its older name
        rows.append(row)
    return tuple(rows)


SETTINGS: tuple[Setting, ...] = _collect()
SECTIONS: tuple[str, ...] = (CFG, INC, D, O, C, P, V, B, H, R)


def by_dest(dest: str) -> Setting:
    for s in SETTINGS:
        if s.dest == dest:
            return s
    raise KeyError(dest)


_FIELDS = {f.name: f for f in (*dataclasses.fields(Args), *dataclasses.fields(Config))}
ARGS_FIELDS = frozenset(f.name for f in dataclasses.fields(Args))
CONFIG_FIELDS = frozenset(f.name for f in dataclasses.fields(Config))


def default_value(s: Setting) -> Any:
    f = _FIELDS[s.dest]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


# The defaults of every row, for a fresh merge: the static ones copied at once, the factories called.
_STATIC_DEFAULTS = {s.dest: default_value(s) for s in SETTINGS
                    if _FIELDS[s.dest].default_factory is dataclasses.MISSING}
_FACTORY_DEFAULTS = tuple((s.dest, cast(Callable[[], Any], _FIELDS[s.dest].default_factory)) for s in SETTINGS
                          if _FIELDS[s.dest].default_factory is not dataclasses.MISSING)


def all_defaults() -> dict[str, Any]:
    """{dest: default} for every row (new lists each time)."""
    values = dict(_STATIC_DEFAULTS)
    for dest, factory in _FACTORY_DEFAULTS:
        values[dest] = factory()
    return values


def setting_value(args: Args, config: Config, s: Setting) -> Any:
    """The value of a row, from the object that owns it."""
    return getattr(args, s.dest) if s.dest in ARGS_FIELDS else config.setting_value(s)


def plain_value(value: Any) -> Any:
    """A setting's value as JSON-friendly data (enums by value, paths as strings)."""
    if isinstance(value, enum.Enum):
        return str(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, ConfigTree):
        return value.plain()
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {k: plain_value(v) for k, v in value.items()}
    return value
