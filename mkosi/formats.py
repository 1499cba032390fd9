"""The output format registry: one row per value of Format=.

A row says what kind of output the format is, its file suffix, the file system of its root, which
compressions it can write, which settings it needs or refuses, and which function makes it. Everything
that asks "what does this format do?" reads the row: the configuration (defaults, checks, output
name), the makers' dispatch (mkosi/output/make.py), the verbs (shell/boot/qemu/burn) and the disk
and boot code. Adding a format is one `Format(...)` row here plus its maker module.

This module is a leaf: it imports nothing of mkosi, so the configuration layer may read it without
importing the makers (they are named by "module:function" and imported only when a build runs).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Iterator
from typing import Any, Optional


class FormatKind(enum.Enum):
    tree = "tree"                       # a directory tree (directory, btrfs subvolume)
    archive = "archive"                 # one archive of the tree (tar, cpio)
    filesystem = "file system image"    # one file system, no partition table
    disk = "disk"                       # a GPT disk image
    efi = "EFI binary"                  # a unified kernel image
    extension = "extension image"       # a system or configuration extension
    container = "container image"       # an OCI image layout: a directory of content-addressed blobs
    nothing = "no output"               # Format=none: only the build scripts run


# What CompressOutput= algorithms add to a file name.
COMPRESSION_SUFFIXES: dict[str, str] = {
    "xz": ".xz", "zstd": ".zst", "gzip": ".gz", "zlib": ".gz", "lz4": ".lz4", "lzo": ".lzo",
}

# Settings that act on GPT disk images only, in the order they are checked.
DISK_SETTINGS = ("bootable", "encrypt", "split_artifacts", "qcow2", "usr_only", "verity", "home_size",
                 "srv_size", "var_size", "tmp_size", "xbootldr_size", "swap_size")

# Settings a few formats take. Given with a format that does not take it, a setting is an error
# (True) or ignored with a warning (False). Bootable= and SplitArtifacts= only warn: upstream accepts them
# with every format (a directory tree may be made bootable elsewhere), and configurations rely on that.
FORMAT_SETTINGS: dict[str, bool] = {
    **dict.fromkeys(DISK_SETTINGS, True),
    "bootable": False,
    "split_artifacts": False,
    "minimize": True,
    "tar_strip_selinux_context": False,
}

NOT_IMPLEMENTED = "not implemented yet"


@dataclasses.dataclass(frozen=True)
class Format:
    """One row of the registry."""

    name: str                           # the value of Format=
    kind: FormatKind
    help: str                           # one line for mkosi.md-style listings
    suffix: str = ""                    # file suffix before the compression suffix ("" for trees)
    root_fs: Optional[str] = None       # file system of the root (of the root partition, for disks)
    compressions: tuple[str, ...] = ()  # what CompressOutput= may pick; () means never compressed
    default_compression: Optional[str] = None
    takes: tuple[str, ...] = ()         # which of FORMAT_SETTINGS it acts on
    needs: tuple[str, ...] = ()         # settings that must be set with this format (e.g. "bootable")
    refuses: tuple[str, ...] = ()       # further settings that must not be set (e.g. "verity")
    maker: Optional[str] = None         # "module:function" taking the Context; None: not implemented
    precheck: Optional[str] = None      # "module:function" taking the Config, run before a build starts
    aliases: tuple[str, ...] = ()       # older names, accepted with a warning
    same_as: Optional[str] = None       # built exactly as that format
    repart: bool = False                # made by systemd-repart from partition definitions
    matches: tuple[str, ...] = ()       # further names a [Match] Format= condition on this format holds for

    @property
    def status(self) -> Optional[str]:
        return None if self.maker is not None or self.same_as is not None else NOT_IMPLEMENTED

    @property
    def is_disk(self) -> bool:
        return self.kind is FormatKind.disk

    @property
    def compresses_fs(self) -> bool:
        """Compress= compresses the root file system (CompressFs=) rather than the output file."""
        return self.root_fs in ("squashfs", "btrfs")

    @property
    def read_only_root(self) -> bool:
        return self.root_fs in ("squashfs", "erofs")

    @property
    def compresses_inside(self) -> bool:
        """CompressOutput= compresses what the output holds (an OCI image's layers), not the output itself,
        so the compression is no part of its name."""
        return self.kind is FormatKind.container

    @property
    def writes_file(self) -> bool:
        """The output is one file (with a suffix), not a directory or nothing."""
        return bool(self.suffix)

    def file_suffix(self, compression: Optional[str], qcow2: bool = False, extension: Optional[str] = None) -> str:
        """The output's suffix: the format's (or `extension`, OutputExtension=, for a format that writes a
        file), then the compression's."""
        if extension and self.writes_file:
            base = f".{extension}"
        else:
            base = ".qcow2" if qcow2 and self.is_disk else self.suffix
        return base if self.compresses_inside else base + compression_suffix(compression)

    def check(self, value: Callable[[str], Any], label: Callable[[str], str]) -> Iterator[tuple[str, str, bool]]:
        """The settings this format does not accept, as (setting, message, fatal); `value` reads a
        setting's value, `label` gives its name (e.g. "Bootable=")."""
        for dest, fatal in FORMAT_SETTINGS.items():
            if dest not in self.takes and dest not in self.refuses and is_set(value(dest)):
                yield dest, f"only applies to {_takers(dest)}, not '{self.name}'", fatal
        for dest in self.refuses:
            if is_set(value(dest)):
                yield dest, f"cannot be used with Format={self.name}", True
        for dest in self.needs:
            if not is_set(value(dest)):
                yield "format", f"'{self.name}' needs {label(dest)}", True


def _takers(dest: str) -> str:
    if dest in DISK_SETTINGS:
        return "GPT disk image formats"
    users = [name for name in implemented_names() if dest in FORMATS[name].takes]
    return ", ".join(users[:-1]) + " and " + users[-1] if len(users) > 1 else "".join(users)


def is_set(value: Any) -> bool:
    """Whether a setting's value asks for something (not unset, not "no", not empty)."""
    return value is not None and value is not False and value != "no" and value != []


def compression_suffix(compression: Optional[str]) -> str:
    return COMPRESSION_SUFFIXES.get(compression, "") if compression else ""


class OutputFormat(str):
    """The name of a format, as Format= takes it; `row` is its registry row."""

    @property
    def value(self) -> str:
        return str(self)

    @property
    def row(self) -> Format:
        return FORMATS[self]


FORMATS: dict[str, Format] = {}


def register(row: Format) -> Format:
    """Add a row (the built-in rows below, and test-only formats)."""
    if row.name in FORMATS or any(row.name in r.aliases for r in FORMATS.values()):
        raise ValueError(f"format '{row.name}' is already registered")
    FORMATS[row.name] = row
    return row


def unregister(name: str) -> None:
    del FORMATS[name]


def rows() -> list[Format]:
    return list(FORMATS.values())


def names() -> tuple[str, ...]:
    return tuple(FORMATS)


def implemented_names() -> list[str]:
    """The formats a build can make under their own name (no aliases, nothing pending)."""
    return [r.name for r in rows() if r.status is None and r.same_as is None]


def alias_of(name: str) -> Optional[str]:
    """The current name for an older one (raw_gpt -> gpt_ext4), or None."""
    for r in rows():
        if name in r.aliases:
            return r.name
    return None


def parse_format(value: str) -> OutputFormat:
    v = value.strip()
    if v in FORMATS:
        return OutputFormat(v)
    current = alias_of(v)
    if current is not None:
        return OutputFormat(current)
    raise ValueError(f"invalid value '{value}', expected one of: {', '.join(FORMATS)}")


def known_suffixes() -> tuple[str, ...]:
    """Format and compression suffixes the implemented formats can give an output name; what is left
    of the name without them is the STEM of the other artifacts' names."""
    found: list[str] = []
    for r in rows():
        if r.status is not None:
            continue
        found += [r.suffix, *(compression_suffix(c) for c in r.compressions if not r.compresses_inside)]
        if r.is_disk:
            found.append(".qcow2")
    return tuple(dict.fromkeys(s for s in found if s))


_MAKE = "mkosi.output.make"
_UKI = "mkosi.output.uki"
_ARCHIVE_COMPRESSIONS = ("xz", "zstd", "gzip", "zlib")
_IMAGE_COMPRESSIONS = ("xz", "zstd")


def _gpt(name: str, root_fs: str, minimize: bool = True, **extra: Any) -> Format:
    return Format(name, FormatKind.disk, f"a GPT disk image with {'an' if root_fs[0] in 'ex' else 'a'} {root_fs} root",
                  suffix=".raw", root_fs=root_fs, compressions=_IMAGE_COMPRESSIONS,
                  takes=(*DISK_SETTINGS, "minimize") if minimize else DISK_SETTINGS, maker=f"{_MAKE}:make_disk",
                  **extra)


def _extension(name: str, help: str) -> Format:
    # A disk image (DDI) with an erofs root, its verity hash and, when signed, signature partition.
    return Format(name, FormatKind.extension, help, suffix=".raw", root_fs="erofs", takes=_EXTENSION_TAKES,
                  maker="mkosi.output.extension:make_extension")


_EXTENSION_TAKES = ("verity", "split_artifacts")


for _row in (
    Format("directory", FormatKind.tree, "a plain directory tree", maker=f"{_MAKE}:make_directory"),
    Format("subvolume", FormatKind.tree, "a btrfs subvolume (the output directory must be on btrfs)",
           root_fs="btrfs", maker=f"{_MAKE}:make_subvolume", precheck=f"{_MAKE}:check_subvolume_target"),
    Format("tar", FormatKind.archive, "a tar archive", suffix=".tar", compressions=_ARCHIVE_COMPRESSIONS,
           default_compression="xz", takes=("tar_strip_selinux_context",), maker=f"{_MAKE}:make_tar_output"),
    Format("cpio", FormatKind.archive, "a cpio archive (newc)", suffix=".cpio", compressions=_ARCHIVE_COMPRESSIONS,
           default_compression="xz", maker=f"{_MAKE}:make_cpio_output"),
    _gpt("gpt_ext4", "ext4", aliases=("raw_gpt",)),
    _gpt("gpt_xfs", "xfs", minimize=False, aliases=("raw_xfs",)),
    _gpt("gpt_btrfs", "btrfs", aliases=("raw_btrfs",)),
    _gpt("gpt_squashfs", "squashfs", aliases=("raw_squashfs",)),
    Format("plain_squashfs", FormatKind.filesystem, "a squashfs file system image", suffix=".raw",
           root_fs="squashfs", compressions=_IMAGE_COMPRESSIONS, takes=("minimize",),
           maker=f"{_MAKE}:make_plain_squashfs"),
    # systemd-repart builds it from partition definitions (RepartDirectories=, mkosi.repart/). A [Match]
    # Format=disk condition also holds for gpt_ext4, the default format, which stands for disk images.
    Format("disk", FormatKind.disk, "a GPT disk image made by systemd-repart from partition definitions",
           suffix=".raw", compressions=_IMAGE_COMPRESSIONS, takes=("bootable", "split_artifacts", "qcow2", "verity"),
           refuses=("encrypt", "usr_only", "home_size", "srv_size", "swap_size", "minimize"), repart=True,
           matches=("gpt_ext4",), maker="mkosi.output.repart:make_repart_disk",
           precheck="mkosi.output.repart:check_repart"),
    # Later additions of the specification.
    Format("uki", FormatKind.efi, "a unified kernel image whose initrd is the whole image", suffix=".efi",
           maker=f"{_UKI}:make_uki_output"),
    Format("esp", FormatKind.disk, "a GPT disk image with only an EFI system partition", suffix=".raw",
           compressions=_IMAGE_COMPRESSIONS, takes=("bootable", "split_artifacts"), maker=f"{_UKI}:make_esp_output"),
    # Layers are gzip-compressed unless CompressOutput= picks zstd or no; the directory's name has no
    # compression suffix. Architecture= becomes the image's platform; ImageVersion= its tag.
    Format("oci", FormatKind.container, "an OCI image layout directory", compressions=("gzip", "zstd"),
           default_compression="gzip", maker="mkosi.output.oci:make_oci", precheck="mkosi.output.oci:check_oci"),
    _extension("sysext", "a system extension image (/usr and /opt)"),
    _extension("confext", "a configuration extension image (/etc)"),
    _extension("portable", "a portable service image (the whole tree)"),
    Format("addon", FormatKind.efi, "a unified kernel image addon carrying a kernel command line", suffix=".efi",
           maker=f"{_UKI}:make_addon_output"),
    Format("none", FormatKind.nothing, "no image: only the build scripts run", maker="mkosi.scripts:finish_build_only"),
):
    register(_row)
