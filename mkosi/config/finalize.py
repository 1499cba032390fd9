"""Resolve defaults, detect the mkosi.* files of the working directory, validate, freeze."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.config.enums import BootProtocol, Distribution, OutputFormat, SourceFileTransfer, Verb, Verity
from mkosi.config.ini import Origin
from mkosi.config.parse import CommandLine, Merged, setting_label
from mkosi.config.settings import ARGS_FIELDS, CONFIG_FIELDS, Args, Config, by_dest
from mkosi.errors import ConfigError

# mkosi.* files looked up in the working directory: name -> whether it is a directory.
DETECTED_FILES: dict[str, bool] = {
    "mkosi.default": False, "mkosi.conf": False, "mkosi.default.d": True, "mkosi.conf.d": True,
    "mkosi.skeleton": True, "mkosi.skeleton.tar": False, "mkosi.extra": True, "mkosi.extra.tar": False,
    "mkosi.build": False, "mkosi.prepare": False, "mkosi.postinst": False, "mkosi.finalize": False,
    "mkosi.cache": True, "mkosi.builddir": True, "mkosi.includedir": True, "mkosi.installdir": True,
    "mkosi.output": True, "mkosi.workspace": True, "mkosi.rootpw": False, "mkosi.passphrase": False,
    "mkosi.secure-boot.crt": False, "mkosi.secure-boot.key": False, "mkosi.nspawn": False,
    "mkosi.version": False, "mkosi.reposdir": True, "mkosi.mksquashfs-tool": False, "mkosi.files": True,
}


def detect_files(directory: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for name, is_dir in DETECTED_FILES.items():
        p = directory / name
        if (p.is_dir() if is_dir else p.is_file()):
            found[name] = p.absolute()
    return found


def read_os_release(root: Path = Path("/")) -> dict[str, str]:
    for candidate in (root / "etc/os-release", root / "usr/lib/os-release"):
        try:
            text = candidate.read_text()
        except OSError:
            continue
        fields = {}
        for line in text.splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                fields[k.strip()] = v.strip().strip("\"'")
        return fields
    return {}


def host_distribution() -> tuple[Optional[Distribution], Optional[str]]:
    from mkosi.distributions import distribution_from_os_id

    osr = read_os_release()
    dist = distribution_from_os_id(osr.get("ID", ""), osr.get("ID_LIKE", ""))
    release = osr.get("VERSION_CODENAME") or osr.get("VERSION_ID")
    if dist == Distribution.arch:
        release = "rolling"
    return dist, release


def check_secret_file_mode(path: Path, setting: str) -> None:
    mode = path.stat().st_mode
    if stat.S_IMODE(mode) & 0o177:
        raise ConfigError(f"file mode {oct(stat.S_IMODE(mode))} is too permissive, it must be 0600 or stricter",
                          path=str(path), setting=setting, hint=f"chmod 600 {path}")


def _fail(v: Merged, dest: str, message: str, hint: Optional[str] = None) -> ConfigError:
    s = by_dest(dest)
    origin = v.origins.get(dest, Origin(None, None))
    return ConfigError(message, path=origin.path or ("command line" if dest in v.origins else None),
                       line=origin.line, setting=setting_label(s, origin), hint=hint)


def output_suffix(fmt: OutputFormat, compression: Optional[str], qcow2: bool) -> str:
    base = {
        OutputFormat.directory: "", OutputFormat.subvolume: "", OutputFormat.tar: ".tar",
        OutputFormat.cpio: ".cpio", OutputFormat.plain_squashfs: ".raw", OutputFormat.uki: ".efi",
        OutputFormat.oci: "",
    }.get(fmt, ".raw")
    if qcow2 and fmt.is_disk():
        base = ".qcow2"
    return base + compression_suffix(compression)


def compression_suffix(compression: Optional[str]) -> str:
    return {None: "", "xz": ".xz", "zstd": ".zst", "gzip": ".gz", "zlib": ".gz", "lz4": ".lz4",
            "lzo": ".lzo"}.get(compression, "")


def _detect_script(v: Merged, values: dict[str, Any], dest: str, name: str, found: dict[str, Path]) -> None:
    if values[dest] is None and dest not in v.explicit_empty and name in found:
        values[dest] = found[name]
    path = values[dest]
    if path is None:
        return
    if not Path(path).is_file():
        raise _fail(v, dest, f"script '{path}' does not exist")
    if not os.access(path, os.X_OK):
        raise _fail(v, dest, f"script '{path}' is not executable", hint=f"chmod +x {path}")


def _detect_dir(v: Merged, values: dict[str, Any], dest: str, name: str, found: dict[str, Path]) -> None:
    if values[dest] is None and dest not in v.explicit_empty and name in found:
        values[dest] = found[name]


def finalize(cli: CommandLine, v: Merged, config_files: list[Path], directory: Path) -> tuple[Args, Config]:
    from mkosi.distributions import host_architecture, normalize_architecture, plugin

    values = dict(v.values)
    found = detect_files(directory)
    values["verb"] = cli.verb
    values["cmdline"] = cli.cmdline
    values["config_files"] = [p.absolute() for p in config_files]
    values["detected"] = found

    # Distribution and release: the host's when neither is set; a recent release of a chosen one.
    host_dist, host_release = host_distribution()
    if values["distribution"] is None:
        if host_dist is None:
            raise ConfigError("cannot tell which distribution the host runs; set Distribution=")
        values["distribution"] = host_dist
        if values["release"] is None:
            values["release"] = host_release
    dist = plugin(values["distribution"])
    if values["release"] is None:
        values["release"] = dist.default_release
    values["architecture"] = normalize_architecture(values["architecture"] or host_architecture())
    if values["mirror"] is None:
        values["mirror"] = dist.default_mirror(values["architecture"])

    fmt: OutputFormat = values["format"]
    if fmt in (OutputFormat.oci, OutputFormat.uki):
        raise _fail(v, "format", f"format '{fmt.value}' is not implemented yet")
    if fmt == OutputFormat.disk:
        fmt = values["format"] = OutputFormat.gpt_ext4

    # Compression: Compress= picks the file system or the output, whichever fits the format.
    if values["compress"] is not None:
        target = "compress_fs" if (fmt.is_squashfs() or fmt.is_btrfs()) else "compress_output"
        if target not in v.origins:
            values[target] = values["compress"]
            v.origins[target] = v.origins["compress"]
    if values["compress_output"] is None:
        values["compress_output"] = "xz" if fmt.is_archive() else "no"
    if values["compress_output"] == "yes":
        values["compress_output"] = "xz"
    # What mkosi.output.compress can write: archives also take gzip, other outputs only xz and zstd.
    usable = ("xz", "zstd", "gzip", "zlib") if fmt.is_archive() else ("xz", "zstd")
    if values["compress_output"] != "no" and values["compress_output"] not in usable:
        raise _fail(v, "compress_output", f"compression '{values['compress_output']}' is not supported for "
                    f"{fmt.value} outputs, use {' or '.join(usable)}")
    if (fmt.is_squashfs() and values["compress_fs"] in ("yes", "no")) or values["compress_fs"] == "yes":
        values["compress_fs"] = "zstd"

    # Files of the working directory.
    # mkosi.output/ only applies when Output= is unset or a bare file name; a path with a slash wins.
    if values["output"] is None or not values["output"].is_absolute():
        _detect_dir(v, values, "output_dir", "mkosi.output", found)
    _detect_dir(v, values, "workspace_dir", "mkosi.workspace", found)
    _detect_dir(v, values, "cache_path", "mkosi.cache", found)
    _detect_dir(v, values, "build_dir", "mkosi.builddir", found)
    _detect_dir(v, values, "include_dir", "mkosi.includedir", found)
    _detect_dir(v, values, "install_dir", "mkosi.installdir", found)
    _detect_dir(v, values, "repository_directory", "mkosi.reposdir", found)
    _detect_dir(v, values, "nspawn_settings", "mkosi.nspawn", found)
    _detect_dir(v, values, "secure_boot_key", "mkosi.secure-boot.key", found)
    _detect_dir(v, values, "secure_boot_certificate", "mkosi.secure-boot.crt", found)
    if not values["skeleton_trees"] and "skeleton_trees" not in v.origins:
        values["skeleton_trees"] = [found[n] for n in ("mkosi.skeleton", "mkosi.skeleton.tar") if n in found]
    if not values["extra_trees"] and "extra_trees" not in v.origins:
        values["extra_trees"] = [found[n] for n in ("mkosi.extra", "mkosi.extra.tar") if n in found]
    for dest, name in (("build_script", "mkosi.build"), ("prepare_script", "mkosi.prepare"),
                       ("postinst_script", "mkosi.postinst"), ("finalize_script", "mkosi.finalize")):
        _detect_script(v, values, dest, name, found)
    if values["mksquashfs"] is None and "mkosi.mksquashfs-tool" in found:
        values["mksquashfs"] = found["mkosi.mksquashfs-tool"]
    values["mksquashfs_tool"] = values["mksquashfs"]
    if values["build_sources"] is None:
        values["build_sources"] = directory.absolute()

    for dest in ("skeleton_trees", "extra_trees"):
        for tree in values[dest]:
            if not tree.exists():
                raise _fail(v, dest, f"'{tree}' does not exist")
    for dest in ("nspawn_settings", "repository_directory", "base_image", "build_sources"):
        if values[dest] is not None and not values[dest].exists():
            raise _fail(v, dest, f"'{values[dest]}' does not exist")

    if values["password"] is None and "mkosi.rootpw" in found:
        check_secret_file_mode(found["mkosi.rootpw"], "mkosi.rootpw")
        values["password"] = found["mkosi.rootpw"].read_text().rstrip("\n")
    if "mkosi.passphrase" in found:
        check_secret_file_mode(found["mkosi.passphrase"], "mkosi.passphrase")
        values["passphrase_file"] = found["mkosi.passphrase"]

    if values["image_version"] is None and "mkosi.version" in found:
        values["image_version"] = found["mkosi.version"].read_text().strip() or None
    values["version_file"] = directory.absolute() / "mkosi.version"

    # Sizes and boot.
    if fmt.is_disk() and values["root_size"] is None:
        values["root_size"] = 3 * 1024**3
    if values["bootable"] and values["esp_size"] is None:
        values["esp_size"] = 256 * 1024**2
    if values["bootable"] and not values["boot_protocols"]:
        values["boot_protocols"] = [BootProtocol.uefi]
    if values["qemu_boot"] is None:
        protos = values["boot_protocols"] or [BootProtocol.uefi]
        values["qemu_boot"] = protos[0]
    if values["sign"]:
        values["checksum"] = True
    if values["gpt_first_lba"] is None:
        values["gpt_first_lba"] = 2048

    _resolve_outputs(values, fmt)
    _validate(cli, v, values, fmt)
    args = Args(**{k: val for k, val in values.items() if k in ARGS_FIELDS})
    return args, Config(**{k: val for k, val in values.items() if k in CONFIG_FIELDS})


def _resolve_outputs(values: dict[str, Any], fmt: OutputFormat) -> None:
    compression = None if values["compress_output"] == "no" else values["compress_output"]
    name = values["image_id"] or "image"
    if values["image_version"]:
        name += f"_{values['image_version']}"
    out: Optional[Path] = values["output"]
    outdir: Optional[Path] = values["output_dir"]
    if out is None:
        out = (outdir or Path.cwd()) / (name + output_suffix(fmt, compression, values["qcow2"]))
    elif not out.is_absolute():
        out = (outdir or Path.cwd()) / out
    values["output"] = out
    if outdir is None:
        outdir = values["output_dir"] = out.parent
    stem = out.name
    for suffix in (".xz", ".zst", ".gz", ".raw", ".qcow2", ".tar", ".cpio"):
        stem = stem.removesuffix(suffix)
    values["output_checksum"] = outdir / "SHA256SUMS"
    values["output_signature"] = outdir / "SHA256SUMS.gpg"
    values["output_bmap"] = outdir / f"{stem}.bmap" if values["bmap"] else None
    values["output_nspawn_settings"] = outdir / f"{stem}.nspawn" if values["nspawn_settings"] else None
    values["output_sshkey"] = outdir / "id_ed25519" if values["ssh"] and values["ssh_key"] is None else None
    hash_suffix = ".usrhash" if values["usr_only"] else ".roothash"
    if values["verity"] != Verity.no:
        values["output_root_hash"] = outdir / f"{stem}{hash_suffix}"
    if values["verity"] == Verity.signed:
        values["output_root_hash_p7s"] = outdir / f"{stem}{hash_suffix}.p7s"
    if "json" in [str(m) for m in values["manifest_format"]]:
        values["output_manifest_json"] = outdir / f"{stem}.manifest"
    if "changelog" in [str(m) for m in values["manifest_format"]]:
        values["output_changelog"] = outdir / f"{stem}.changelog"
    if values["split_artifacts"]:
        csuffix = compression_suffix(compression)
        values["output_split_root"] = values["output_split_root"] or outdir / f"{stem}.root{csuffix}"
        if values["verity"] != Verity.no:
            values["output_split_verity"] = values["output_split_verity"] or outdir / f"{stem}.verity{csuffix}"
        if values["bootable"]:
            values["output_split_kernel"] = values["output_split_kernel"] or outdir / f"{stem}.efi"


def _validate(cli: CommandLine, v: Merged, values: dict[str, Any], fmt: OutputFormat) -> None:
    disk_only = ("bootable", "encrypt", "split_artifacts", "qcow2", "usr_only")
    for dest in disk_only:
        if values[dest] and not fmt.is_disk():
            raise _fail(v, dest, f"only applies to GPT disk image formats, not '{fmt.value}'")
    if values["verity"] != Verity.no and not fmt.is_disk():
        raise _fail(v, "verity", f"only applies to GPT disk image formats, not '{fmt.value}'")
    if values["bootable"] and values["verity"] != Verity.no and values["usr_only"]:
        raise _fail(v, "verity", "together with Bootable=yes and UsrOnly=yes is not implemented yet")
    if values["encrypt"] is not None and str(values["encrypt"].value) == "all" and values["verity"] != Verity.no:
        raise _fail(v, "verity", "cannot protect a root that Encrypt=all encrypts; use Encrypt=data")
    if values["minimize"] and fmt not in (OutputFormat.gpt_ext4, OutputFormat.gpt_btrfs, OutputFormat.gpt_squashfs,
                                          OutputFormat.plain_squashfs):
        raise _fail(v, "minimize", f"is only supported for gpt_ext4 and gpt_btrfs, not '{fmt.value}'")
    for dest in ("home_size", "srv_size", "swap_size"):
        if values[dest] is not None and not fmt.is_disk():
            raise _fail(v, dest, f"only applies to GPT disk image formats, not '{fmt.value}'")
    if values["secure_boot"] and not values["bootable"]:
        raise _fail(v, "secure_boot", "requires Bootable=yes")
    # genkey makes the keys, summary only reports: only verbs that may build need them to exist.
    if (values["secure_boot"] or values["verity"] == Verity.signed) and cli.verb.needs_build():
        dest = "secure_boot" if values["secure_boot"] else "verity"
        for kdest, what in (("secure_boot_key", "key"), ("secure_boot_certificate", "certificate")):
            if values[kdest] is None:
                raise _fail(v, dest, f"needs a Secure Boot {what} (SecureBootKey=/SecureBootCertificate= or "
                            "mkosi.secure-boot.key/.crt)", hint="create them with 'mkosi genkey'")
            if not values[kdest].is_file():
                raise _fail(v, kdest, f"'{values[kdest]}' does not exist")
    if values["source_file_transfer_final"] == SourceFileTransfer.mount:
        raise _fail(v, "source_file_transfer_final", "'mount' is not possible for the final image")
    if values["ssh_key"] is not None:
        pub = Path(str(values["ssh_key"]) + ".pub")
        if not values["ssh_key"].is_file() or not pub.is_file():
            raise _fail(v, "ssh_key", f"needs both '{values['ssh_key']}' and '{pub}'")
    if values["password_is_hashed"] and values["password"] is None:
        raise _fail(v, "password_is_hashed", "is set but no password is given (Password= or mkosi.rootpw)")
    if values["tar_strip_selinux_context"] and fmt != OutputFormat.tar:
        log.warn("TarStripSELinuxContext= only applies to the tar format; ignored")
    compressed = values["compress_output"] != "no" and fmt.is_disk()
    if cli.verb in (Verb.shell, Verb.boot, Verb.qemu, Verb.vm) and compressed:
        raise _fail(v, "compress_output", f"the '{cli.verb.value}' verb cannot use a compressed image",
                    hint="build without CompressOutput= to run the image")
    if cli.verb in (Verb.shell, Verb.boot) and values["qcow2"]:
        raise _fail(v, "qcow2", f"the '{cli.verb.value}' verb cannot use a QCOW2 image; use 'qemu'")
    if cli.verb in (Verb.qemu, Verb.vm) and not values["bootable"] and values["qemu_boot"] != BootProtocol.linux:
        raise ConfigError("the qemu verb needs a bootable image", hint="build with --bootable")
    if values["qemu_boot"] not in (values["boot_protocols"] or [values["qemu_boot"]]):
        raise _fail(v, "qemu_boot", f"'{values['qemu_boot'].value}' is not in BootProtocols=")
