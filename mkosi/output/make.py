"""Turning the finished image root into the configured output. Each format's registry row
(mkosi/formats.py) names its maker as "module:function"; a maker writes the image at
`staged(ctx, IMAGE)` (and any other artifact at its own staged path), never over the previous output."""

from __future__ import annotations

import importlib
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mkosi import log
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.formats import FORMATS, Format
from mkosi.output.archive import make_cpio, make_tar
from mkosi.output.artifacts import IMAGE, NSPAWN_SETTINGS, place_elsewhere, staged
from mkosi.output.compress import maybe_compress
from mkosi.output.diskimage import make_disk_image
from mkosi.output.filesystems import make_squashfs
from mkosi.run import run


def _staged(ctx: Context) -> Path:
    return staged(ctx, IMAGE)


def _uncompressed_name(ctx: Context, suffix: str) -> Path:
    return ctx.staging / f".{_staged(ctx).name}{suffix}.tmp"


def make_directory(ctx: Context) -> None:
    out = _staged(ctx)
    ctx.root.rename(out)
    ctx.root = out


def filesystem_type(path: Path) -> str:
    return str(run(["stat", "--file-system", "--format=%T", path], capture=True).stdout).strip()


# The subvolume format's nested subvolumes, parents first.
NESTED_SUBVOLUMES = ("var", "home", "srv", "var/tmp")


def check_subvolume_target(config: Config) -> None:
    """Before anything is built: the subvolume format needs its output directory on btrfs."""
    assert config.output is not None
    outdir = config.output.parent
    outdir.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(outdir)
    if fstype != "btrfs":
        raise MkosiError(f"the subvolume format needs the output directory on btrfs, but '{outdir}' is on {fstype}",
                         hint="use Format=directory, or OutputDirectory= on btrfs")


def make_subvolume(ctx: Context) -> None:
    assert ctx.config.output is not None
    check_subvolume_target(ctx.config)
    # Made next to its final place (same file system) and renamed into place after success.
    holder = Path(tempfile.mkdtemp(prefix=".mkosi-subvolume-", dir=ctx.config.output.parent))
    ctx.cleanup.append(holder)
    out = holder / ctx.config.output.name
    place_elsewhere(ctx, IMAGE, out)
    run(["btrfs", "subvolume", "create", out], capture=True)
    # /var, /home, /srv and /var/tmp are subvolumes of their own (snapshots of the image leave them
    # out); cp fills them and gives them the tree's owners and modes.
    for name in NESTED_SUBVOLUMES:
        if (ctx.root / name).is_dir() and not (ctx.root / name).is_symlink():
            run(["btrfs", "subvolume", "create", out / name], capture=True)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", f"{ctx.root}/.", f"{out}/."])
    if ctx.config.read_only:
        run(["btrfs", "property", "set", "-ts", out, "ro", "true"])


def make_tar_output(ctx: Context) -> None:
    tmp = _uncompressed_name(ctx, ".tar")
    with log.step("Creating tar archive"):
        make_tar(ctx.root, tmp, strip_selinux=ctx.config.tar_strip_selinux_context)
        maybe_compress(tmp, ctx.config.output_compression, _staged(ctx), level=ctx.config.compress_level)


def make_cpio_output(ctx: Context) -> None:
    tmp = _uncompressed_name(ctx, ".cpio")
    with log.step("Creating cpio archive"):
        make_cpio(ctx.root, tmp)
        maybe_compress(tmp, ctx.config.output_compression, _staged(ctx), for_initrd=True,
                       level=ctx.config.compress_level)


def make_plain_squashfs(ctx: Context) -> None:

    tmp = _uncompressed_name(ctx, ".raw")
    tool = str(ctx.config.mksquashfs_tool) if ctx.config.mksquashfs_tool else "mksquashfs"
    make_squashfs(ctx.root, tmp, ctx.config.compress_fs, tool)
    maybe_compress(tmp, ctx.config.output_compression, _staged(ctx), level=ctx.config.compress_level)


def make_disk(ctx: Context) -> None:

    make_disk_image(ctx)


def resolve(reference: str) -> Callable[..., Any]:
    """The function a registry row names as "module:function"."""
    module, _, name = reference.partition(":")
    function = getattr(importlib.import_module(module), name, None)
    if not callable(function):
        raise MkosiError(f"'{reference}' does not name a function (format registry)")
    return cast(Callable[..., Any], function)


def maker(row: Format) -> Callable[[Context], None]:
    if row.same_as is not None:
        return maker(FORMATS[row.same_as])
    if row.maker is None:
        raise MkosiError(f"format '{row.name}' is not implemented yet")
    return resolve(row.maker)


def check_target(config: Config) -> None:
    """The format's own check before a build starts (e.g. the subvolume format's output file system)."""
    row = config.format.row
    if row.precheck is not None:
        resolve(row.precheck)(config)


def copy_nspawn_settings(ctx: Context) -> None:
    src = ctx.config.nspawn_settings
    if src is not None:
        shutil.copy2(src, staged(ctx, NSPAWN_SETTINGS))


def make_outputs(ctx: Context) -> None:
    """Run the format's maker; the artifacts are then in the staging directory (see artifacts.collect())."""
    make = maker(ctx.config.format.row)
    with log.step(f"Writing {ctx.config.format} output"):
        make(ctx)
    copy_nspawn_settings(ctx)
