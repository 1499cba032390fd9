"""Resolve every setting of one image, validate, freeze.

A generic pass over the rows of the settings table in dependency order: a value assigned by a file or
the command line is kept; otherwise a mkosi.* file or directory named by the row's `path_default`
sets it, else its `default_fn` (computed from the settings it names in `depends`), else its static
default. A row's `resolve_fn` then adjusts the value to the settings it depends on. After the pass a
short list of cross-setting checks runs, each a small named function."""

from __future__ import annotations

import dataclasses
import graphlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.compressionlevels import level_error
from mkosi.config.enums import (
    Bootloader,
    BootProtocol,
    BuildSourcesEphemeral,
    ConfigLanguage,
    Feature,
    SourceFileTransfer,
    Verb,
    Verity,
)
from mkosi.config.ini import Origin
from mkosi.config.keys import NO_SUBDIRECTORY, expand_key
from mkosi.config.parse import CommandLine, Merged, setting_label
from mkosi.config.settings import (
    ARGS_FIELDS,
    CONFIG_FIELDS,
    SETTINGS,
    Args,
    Config,
    by_dest,
    check_secret_file_mode,
    default_value,
)
from mkosi.config.types import Kind, Resolving, Setting, check_path_length, short_message
from mkosi.config.ukiprofile import load_uki_profiles
from mkosi.distributions import facts
from mkosi.errors import ConfigError
from mkosi.formats import Format, FormatKind, OutputFormat

# mkosi.* names looked up next to the configuration that no row's path_default covers.
OTHER_FILES: dict[str, bool] = {
    "mkosi.default": False, "mkosi.conf": False, "mkosi.default.d": True, "mkosi.conf.d": True,
    "mkosi.output": True, "mkosi.rootpw": False, "mkosi.passphrase": False, "mkosi.version": False,
    "mkosi.files": True, "mkosi.seed": False,
}


def detected_names() -> dict[str, bool]:
    """Every mkosi.* file or directory whose presence means something: name -> whether a directory."""
    names = dict(OTHER_FILES)
    for s in SETTINGS:
        for name in s.path_default:
            names[name.rstrip("/")] = name.endswith("/")
    return names


def detect_files(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, is_dir in detected_names().items():
        p = directory / name
        if (p.is_dir() if is_dir else p.is_file()):
            found[name] = p.absolute()
    return found


def _fail(v: Merged, dest: str, message: str, hint: Optional[str] = None,
          fallback: Optional[str] = None) -> ConfigError:
    """An error about `dest`, naming where it was set, else where a setting it derives from was set
    (CompressOutput= from Compress=), else `fallback`."""
    s = by_dest(dest)
    source = next((d for d in (dest, *s.depends) if d in v.origins), None)
    origin = v.origins[source] if source is not None else Origin(None, None)
    path = origin.path or ("command line" if source is not None else fallback)
    return ConfigError(short_message(message), path=path, line=origin.line, setting=setting_label(s, origin),
                       hint=hint)


def row_order(rows: Sequence[Setting] = SETTINGS) -> list[Setting]:
    """The rows, each after the rows its default depends on."""
    by = {s.dest: s for s in rows}
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for s in rows:
        sorter.add(s.dest, *s.depends)
    return [by[d] for d in sorter.static_order()]


ROW_ORDER = row_order()


def _assigned(v: Merged, s: Setting) -> bool:
    """Whether a file or the command line gave the setting a value (an empty assignment resets it)."""
    if s.dest not in v.origins or s.dest in v.explicit_empty:
        return False
    return not (s.kind == Kind.LIST and not v.values[s.dest] and s.path_default)


def _path_default(v: Merged, s: Setting, found: dict[str, Path]) -> Any:
    if not s.path_default or s.dest in v.explicit_empty or s.dest in v.origins:
        return None
    present = [found[n] for n in (name.rstrip("/") for name in s.path_default) if n in found]
    if not present:
        return None
    return present if s.kind == Kind.LIST else present[0]


def resolve_value(v: Merged, s: Setting, r: Resolving) -> Any:
    """The value a row gets, given the finalized values of the rows it depends on (in r)."""
    if _assigned(v, s):
        value = v.values[s.dest]
    elif (found := _path_default(v, s, r.found)) is not None:
        value = found
    elif s.default_fn is not None:
        value = s.default_fn(r)
    else:
        value = default_value(s) if s.dest not in v.origins else v.values[s.dest]
    if s.resolve_fn is None:
        return value
    if s.dest in v.reset and s.path_default:
        # An empty assignment cleared the list, the mkosi.* default (mkosi.packages/) included.
        names = {name.rstrip("/") for name in s.path_default}
        r = dataclasses.replace(r, found={k: p for k, p in r.found.items() if k not in names})
    return s.resolve_fn(value, r)


def resolve_all(v: Merged, directory: Path, found: dict[str, Path], rows: Sequence[Setting] = ROW_ORDER,
                language: ConfigLanguage = ConfigLanguage.classic) -> dict[str, Any]:
    r = Resolving({}, directory, found, language)
    for s in rows:
        r.values[s.dest] = resolve_value(v, s, r)
    return r.values


def resolve_one(v: Merged, dest: str, directory: Path, found: dict[str, Path],
                language: ConfigLanguage = ConfigLanguage.classic) -> Any:
    """One setting's value as it would be built with what is assigned so far, defaults included
    (what [Match] compares with)."""
    r = Resolving({}, directory, found, language)
    by = {s.dest: s for s in SETTINGS}

    def visit(d: str) -> Any:
        if d not in r.values:
            for dep in by[d].depends:
                visit(dep)
            r.values[d] = resolve_value(v, by[d], r)
        return r.values[d]

    return visit(dest)


# ---- derived values that are not settings ----

def _hashed_root_password(values: dict[str, Any]) -> None:
    """RootPassword=hashed:HASH is an already hashed password (the modern form of PasswordIsHashed=yes)."""
    password = values["password"]
    if password is not None and password.startswith("hashed:"):
        values["password"] = password.removeprefix("hashed:")
        values["password_is_hashed"] = True


def _derived(values: dict[str, Any], found: dict[str, Path], directory: Path, config_files: list[Path]) -> None:
    values["config_files"] = [p.absolute() for p in config_files]
    values["detected"] = found
    values["mksquashfs_tool"] = values["mksquashfs"]
    values["version_file"] = directory.absolute() / "mkosi.version"
    if values["passphrase"] is not None:
        # Passphrase= (default: mkosi.passphrase) names the file with the LUKS passphrase.
        if not values["passphrase"].is_file():
            raise ConfigError(f"'{values['passphrase']}' does not exist", setting="Passphrase")
        check_secret_file_mode(values["passphrase"], values["passphrase"].name)
        values["passphrase_file"] = values["passphrase"]


def output_prefix(name: str, fmt: Format, compression: Optional[str], qcow2: bool,
                  extension: Optional[str] = None) -> str:
    """NAME without the format's and compression's suffixes it already ends in (image.raw.xz, image.raw
    and image all give image for Format=disk with CompressOutput=xz; with OutputExtension= its extension
    stands for the format's)."""
    full, base = fmt.file_suffix(compression, qcow2, extension), fmt.file_suffix(None, qcow2, extension)
    for suffix in (full, base):
        if suffix and name.endswith(suffix) and name != suffix:
            return name[: -len(suffix)]
    return name


def output_file_name(name: str, fmt: Format, compression: Optional[str], qcow2: bool,
                     extension: Optional[str] = None) -> str:
    """The modern language's Output=NAME as a file name: NAME with the format's suffix (or OutputExtension=)
    and the compression's appended, each unless NAME already ends in it (image -> image.raw.xz, image.raw ->
    image.raw.xz, image.raw.xz stays)."""
    return output_prefix(name, fmt, compression, qcow2, extension) + fmt.file_suffix(compression, qcow2, extension)


def _place_output(values: dict[str, Any]) -> None:
    """Output= and OutputDirectory=: the image's path, and the name of the link to it (output_link).

    The default name is ImageId= (else "image"; a sub-image's own name, since ImageId= is passed down to
    it and several sub-images would otherwise share the main image's name), then _ImageVersion=, then
    the format's and the compression's suffixes. An Output= with a slash is the image's full path in
    both languages. A bare Output=NAME is the file name in the classic language (the man page's), and
    a prefix in the modern one, completed by output_file_name() (ImageVersion= is not added to it).

    In the modern language the output directory also gets a link named after the bare name (NAME without
    the suffixes it was given, or the default name without version and suffixes) to the image, when the
    two names differ (artifacts.OUTPUT_LINK): `%O/initrd` then names the initrd image whatever its
    version and format.
    The other artifacts' paths follow from the image's (mkosi/output/artifacts.py)."""
    fmt: Format = values["format"].row
    compression = None if values["compress_output"] == "no" else values["compress_output"]
    extension: Optional[str] = values["output_extension"]
    qcow2: bool = values["qcow2"]
    modern = values["language"] == ConfigLanguage.modern
    name: str = (values["image_id"] or "image") if values["image"] == "main" else values["image"]
    bare: Optional[str] = name
    out: Optional[Path] = values["output"]
    outdir: Optional[Path] = values["output_dir"]
    if out is None:
        versioned = name + (f"_{values['image_version']}" if values["image_version"] else "")
        out = (outdir or Path.cwd()) / (versioned + fmt.file_suffix(compression, qcow2, extension))
    elif out.is_absolute():
        bare = None  # a full path: no link, in either language
    else:
        if modern:
            bare = output_prefix(str(out), fmt, compression, qcow2, extension)
            out = Path(output_file_name(str(out), fmt, compression, qcow2, extension))
        out = (outdir or Path.cwd()) / out
    values["output"] = out
    if outdir is None:
        values["output_dir"] = out.parent
    nothing = fmt.kind is FormatKind.nothing
    values["output_link"] = bare if modern and bare and bare != out.name and not nothing else None


# ---- cross-setting checks: each takes the command line, the merged assignments and the values ----

Check = Callable[[CommandLine, Merged, dict[str, Any]], None]


def check_format_implemented(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    # summary, cat-config and the other verbs that build nothing show such a format as it is written.
    if not cli.verb.needs_build():
        return
    fmt: Format = values["format"].row
    if fmt.status is not None:
        raise _fail(v, "format", f"format '{fmt.name}' is {fmt.status}")


def check_distribution_implemented(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    if cli.verb.needs_build() and not facts.has_installer(values["distribution"]):
        raise _fail(v, "distribution", f"distribution '{values['distribution'].value}' is not implemented yet")


def check_compression_fits_format(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """CompressOutput= must be one the format's registry row can write."""
    fmt: Format = values["format"].row
    usable = fmt.compressions
    if values["compress_output"] == "no" or values["compress_output"] in usable:
        return
    if not usable:
        raise _fail(v, "compress_output", f"{fmt.name} outputs are not compressed",
                    hint="leave CompressOutput= unset for this format")
    raise _fail(v, "compress_output", f"compression '{values['compress_output']}' is not supported for "
                f"{fmt.name} outputs, use {' or '.join(usable)}")


def check_compress_level(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """CompressLevel= must be a level the CompressOutput= compressor takes; without compression it does
    nothing (a sub-image inherits the main image's level whether or not it compresses its output)."""
    level, compression = values["compress_level"], values["compress_output"]
    if level is None or compression in ("no", "none") or values["format"].row.kind is FormatKind.nothing:
        return
    error = level_error(compression, level)
    if error is not None:
        raise _fail(v, "compress_level", error)


def check_output_extension(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    fmt: Format = values["format"].row
    if values["output_extension"] and not fmt.writes_file and fmt.kind is not FormatKind.nothing \
            and "output_extension" in v.origins:
        log.warn(f"OutputExtension= is ignored: Format={fmt.name} writes a directory, not a file")


def check_scripts_executable(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    for dest in ("build_script", "prepare_script", "postinst_script", "finalize_script"):
        path = values[dest]
        if path is None:
            continue
        if not Path(path).is_file():
            raise _fail(v, dest, f"script '{path}' does not exist")
        if not os.access(path, os.X_OK):
            raise _fail(v, dest, f"script '{path}' is not executable", hint=f"chmod +x {path}")


def _output_of_another_image(path: Path, values: dict[str, Any]) -> bool:
    """A tree below the output directory is what an image this one depends on builds (%O/base): it exists
    only once that image is built, so it is looked for when this one is built, not when the configuration
    is read."""
    outdir = values["output_dir"]
    return outdir is not None and Path(os.path.abspath(path)).is_relative_to(os.path.abspath(outdir))


def check_inputs_exist(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    for dest in ("skeleton_trees", "extra_trees"):
        for tree in values[dest]:
            if _output_of_another_image(tree.source, values):
                continue
            if not tree.source.exists():
                raise _fail(v, dest, f"'{tree.source}' does not exist")
    for base in values["base_trees"]:
        if not _output_of_another_image(base, values) and not base.exists():
            raise _fail(v, "base_trees", f"'{base}' does not exist")
    for tree in values["build_sources"]:
        if not tree.source.exists():
            raise _fail(v, "build_sources", f"'{tree.source}' does not exist")
    if values["passphrase"] is not None and not values["passphrase"].is_file():
        raise _fail(v, "passphrase", f"'{values['passphrase']}' does not exist")
    for dest in ("nspawn_settings", "repository_directory", "base_image"):
        if values[dest] is not None and not values[dest].exists():
            raise _fail(v, dest, f"'{values[dest]}' does not exist")


def check_proxy_files(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """The proxy's certificates and key must be files when a build may hand them to dnf."""
    if not cli.verb.needs_build():
        return
    for dest in ("proxy_peer_certificate", "proxy_client_certificate", "proxy_client_key"):
        path = values[dest]
        if path is not None and not Path(path).is_file():
            raise _fail(v, dest, f"'{path}' does not exist or is not a file")


def check_tools_tree(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """ToolsTree=PATH must be a tree with a /usr; ToolsTree=default is built (or taken from the cache) before
    the verb runs (mkosi/tools_tree.py)."""
    tree = values.get("tools_tree")
    if tree is None or tree == "default" or not cli.verb.needs_build():
        return
    if not (Path(tree) / "usr").is_dir():
        raise _fail(v, "tools_tree", f"'{tree}' is not a tools tree (it has no usr/ directory)")


def check_format_settings(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """What the format's registry row takes, needs and refuses (disk-only settings, Minimize=, ...)."""
    fmt: Format = values["format"].row
    for dest, message, fatal in fmt.check(values.__getitem__, lambda d: by_dest(d).name):
        if fatal:
            raise _fail(v, dest, message)
        log.warn(f"{by_dest(dest).name} {message}; ignored")


def check_verity_combinations(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    if values["bootable"] and values["verity"] != Verity.no and values["usr_only"] and values.get("bootable_auto"):
        # Bootable=auto (the modern default) does not turn a verity /usr image into an unsupported bootable one.
        log.warn("Bootable=auto: a bootable image with Verity= and UsrOnly=yes is not implemented yet, so the "
                 "image is not made bootable")
        values["bootable"] = values["bootable_auto"] = False
    if values["bootable"] and values["verity"] != Verity.no and values["usr_only"]:
        raise _fail(v, "verity", "together with Bootable=yes and UsrOnly=yes is not implemented yet")
    if values["encrypt"] is not None and str(values["encrypt"].value) == "all" and values["verity"] != Verity.no:
        raise _fail(v, "verity", "cannot protect a root that Encrypt=all encrypts; use Encrypt=data")


def _makes_efi_binaries(values: dict[str, Any]) -> bool:
    """Format=uki and Format=addon are EFI binaries, and Format=esp always has a boot loader."""
    fmt: Format = values["format"].row
    return fmt.kind is FormatKind.efi or fmt.name == "esp"


def check_secure_boot(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    if values["secure_boot"] and not values["bootable"] and not _makes_efi_binaries(values):
        # Nothing to sign; upstream accepts it (its Bootable= defaults to auto), so configurations have it.
        log.warn("SecureBoot= has no effect without Bootable=yes: the image has no boot loader to sign")
        return
    # genkey makes the keys, summary only reports: only verbs that may build need them to exist.
    if not ((values["secure_boot"] or values["verity"] == Verity.signed) and cli.verb.needs_build()):
        return
    checks = []
    if values["secure_boot"]:
        checks += [("secure_boot", "secure_boot_key", "secure_boot_key_source", "key"),
                   ("secure_boot", "secure_boot_certificate", "secure_boot_certificate_source", "certificate")]
    if values["verity"] == Verity.signed:
        checks += [("verity", "verity_key", "verity_key_source", "key"),
                   ("verity", "verity_certificate", "verity_certificate_source", "certificate")]
    for dest, kdest, source, what in checks:
        if values[kdest] is None:
            if dest == "secure_boot":
                raise _fail(v, dest, f"needs a Secure Boot {what} (SecureBootKey=/SecureBootCertificate= or "
                            "mkosi.secure-boot.key/.crt)", hint="create them with 'mkosi genkey'")
            raise _fail(v, dest, f"needs a verity {what} (VerityKey=/VerityCertificate=, "
                        "SecureBootKey=/SecureBootCertificate= or mkosi.secure-boot.key/.crt)",
                        hint="create them with 'mkosi genkey'")
        # With an engine or provider the key (or certificate) is a URI, not a file.
        if values.get(source, "file") == "file" and not values[kdest].is_file():
            raise _fail(v, kdest, f"'{values[kdest]}' does not exist")


def check_sign_expected_pcr(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """SignExpectedPcr=yes needs a private key (SignExpectedPcrKey=, else SecureBootKey=); auto goes without
    one. The key and the certificate must exist when a build may use them."""
    wanted = values["sign_expected_pcr"]
    if wanted == Feature.disabled or not cli.verb.needs_build():
        return
    key, cert = values["sign_expected_pcr_key"], values["sign_expected_pcr_certificate"]
    if key is None:
        if wanted == Feature.enabled:
            raise _fail(v, "sign_expected_pcr", "needs a private key to sign the expected PCR values "
                        "(SignExpectedPcrKey=, SecureBootKey= or mkosi.secure-boot.key)",
                        hint="create one with 'mkosi genkey'")
        return
    if wanted == Feature.auto and not values["secure_boot"]:
        return
    if values.get("sign_expected_pcr_key_source", "file") == "file" and not key.is_file():
        raise _fail(v, "sign_expected_pcr_key", f"'{key}' does not exist")
    if values.get("sign_expected_pcr_certificate_source", "file") == "file" and cert is not None and not cert.is_file():
        raise _fail(v, "sign_expected_pcr_certificate", f"'{cert}' does not exist")


def check_sources_and_keys(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    if values["source_file_transfer_final"] == SourceFileTransfer.mount:
        raise _fail(v, "source_file_transfer_final", "'mount' is not possible for the final image")
    if values["ssh_key"] is not None:
        # The public half is the key's .pub, or the key of SshCertificate= (an X.509 certificate).
        pub = Path(str(values["ssh_key"]) + ".pub")
        if not values["ssh_key"].is_file() or (not pub.is_file() and values.get("ssh_certificate") is None):
            raise _fail(v, "ssh_key", f"needs both '{values['ssh_key']}' and '{pub}' (or SshCertificate=)")
    if values["password_is_hashed"] and values["password"] is None:
        raise _fail(v, "password_is_hashed", "is set but no password is given (Password= or mkosi.rootpw)")
    if values["sign"] and not values["checksum"]:
        raise _fail(v, "checksum", "cannot be disabled with Sign=yes: the signature covers SHA256SUMS")


def check_verb_can_use_image(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    # shell, boot, vm and the others run the main image; the sub-images of mkosi.images/ (an initrd, a
    # base tree) are only built.
    if values["image"] != "main":
        return
    compressed = values["compress_output"] != "no" and values["format"].row.is_disk
    if cli.verb in (Verb.shell, Verb.boot, Verb.qemu, Verb.vm) and compressed:
        raise _fail(v, "compress_output", f"the '{cli.verb.value}' verb cannot use a compressed image",
                    hint="build without CompressOutput= to run the image", fallback="command line")
    if cli.verb in (Verb.shell, Verb.boot) and values["qcow2"]:
        raise _fail(v, "qcow2", f"the '{cli.verb.value}' verb cannot use a QCOW2 image; use 'qemu'",
                    fallback="command line")
    if cli.verb in (Verb.shell, Verb.boot) and _makes_efi_binaries(values):
        raise ConfigError(f"the '{cli.verb.value}' verb cannot run a {values['format'].row.name} image in a "
                          "container", path="command line", hint="boot it with 'mkosi vm'")
    bootable = values["bootable"] or values["format"].row.name == "uki"
    if cli.verb in (Verb.qemu, Verb.vm) and values["format"].row.name == "addon":
        raise ConfigError("an addon does not boot by itself; it goes next to a UKI", path="command line")
    if cli.verb in (Verb.qemu, Verb.vm) and not bootable and values["qemu_boot"] != BootProtocol.linux:
        raise ConfigError("the qemu verb needs a bootable image", path="command line", hint="build with --bootable")
    if values["qemu_boot"] not in (values["boot_protocols"] or [values["qemu_boot"]]):
        raise _fail(v, "qemu_boot", f"'{values['qemu_boot'].value}' is not in BootProtocols=")


def check_xbootldr(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    if values["xbootldr_size"] is not None and not values["bootable"] and values["format"].row.kind is FormatKind.disk:
        # mkosi 14 makes the partition only for bootable images too, and says nothing; a warning here.
        log.warn("XBootLDRSize= has no effect without Bootable=yes: the image gets no XBOOTLDR partition")


def check_boot_loader(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """Format=esp needs a boot loader; UKI profile files are read (errors name their file and line)."""
    esp = values["format"].row.name == "esp"
    if esp and values["bootloader"] == Bootloader.none:
        raise _fail(v, "bootloader", "Format=esp needs a boot loader: use systemd-boot, uki or grub")
    if values["uki_profiles"] and cli.verb.needs_build():
        load_uki_profiles(values["uki_profiles"])


def check_output_name(v: Merged, values: dict[str, Any]) -> None:
    """The output's path must be one the kernel accepts (each part of it fits, together they may not)."""
    try:
        check_path_length(values["output"])
    except ValueError as e:
        blame = next((d for d in ("output", "output_dir", "image_version", "image_id") if d in v.origins), "output")
        raise _fail(v, blame, f"the output {e}")


def check_keys(cli: CommandLine, v: Merged, values: dict[str, Any]) -> None:
    """CacheKey= and BuildKey= must expand to a subdirectory name; buildcache needs a build directory."""
    for dest in ("cache_key", "build_key"):
        if dest == "build_key" and values[dest] == NO_SUBDIRECTORY:
            continue
        try:
            expand_key(values[dest], values)
        except ValueError as e:
            raise _fail(v, dest, str(e))
    buildcache = values["build_sources_ephemeral"] == BuildSourcesEphemeral.buildcache
    if buildcache and values["build_dir"] is None and cli.verb.needs_build():
        raise _fail(v, "build_sources_ephemeral", "BuildSourcesEphemeral=buildcache keeps the sources' overlay in "
                    "the build directory, but none is configured", hint="set BuildDirectory= or create mkosi.builddir/")


CHECKS: tuple[Check, ...] = (
    check_format_implemented, check_distribution_implemented, check_compression_fits_format, check_compress_level,
    check_output_extension,
    check_scripts_executable, check_inputs_exist, check_proxy_files, check_tools_tree,
    check_format_settings, check_verity_combinations, check_secure_boot, check_sign_expected_pcr,
    check_sources_and_keys,
    check_verb_can_use_image, check_boot_loader, check_xbootldr, check_keys,
)


def finalize(cli: CommandLine, v: Merged, config_files: list[Path], directory: Path,
             image: str = "main", language: ConfigLanguage = ConfigLanguage.classic,
             main_output_dir: Optional[Path] = None) -> tuple[Args, Config]:
    """One image's Args and Config. A sub-image gets `main_output_dir`, the main image's output directory
    (a universal setting, also when it is the main image's mkosi.output/): its output is placed there."""
    found = detect_files(directory)
    values = resolve_all(v, directory, found, language=language)
    if main_output_dir is not None:
        values["output_dir"] = main_output_dir
    values["image"] = image
    values["language"] = language
    values["verb"] = cli.verb
    values["cmdline"] = cli.cmdline
    same_as = values["format"].row.same_as
    if same_as is not None:  # a format built exactly as another one (Format=disk is gpt_ext4 for now)
        values["format"] = OutputFormat(same_as)
    _hashed_root_password(values)
    for check in CHECKS:
        check(cli, v, values)
    _derived(values, found, directory, config_files)
    _place_output(values)
    check_output_name(v, values)
    args = Args(**{k: val for k, val in values.items() if k in ARGS_FIELDS})
    return args, Config(**{k: val for k, val in values.items() if k in CONFIG_FIELDS})
