"""Turning the finished image root into the configured output. Each format is one function,
registered in MAKERS; all write into the staging directory, never over the previous output."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from mkosi import log
from mkosi.config.enums import OutputFormat
from mkosi.config.settings import Config
from mkosi.context import Context
from mkosi.errors import MkosiError
from mkosi.output.archive import make_cpio, make_tar
from mkosi.output.compress import maybe_compress
from mkosi.run import run


def _staged(ctx: Context) -> Path:
    assert ctx.config.output is not None
    return ctx.staging / ctx.config.output.name


def _uncompressed_name(ctx: Context, suffix: str) -> Path:
    return ctx.staging / f".{_staged(ctx).name}{suffix}.tmp"


def make_directory(ctx: Context) -> list[Path]:
    out = _staged(ctx)
    ctx.root.rename(out)
    ctx.root = out
    return [out]


def filesystem_type(path: Path) -> str:
    return str(run(["stat", "--file-system", "--format=%T", path], capture=True).stdout).strip()


# The subvolume format's nested subvolumes, parents first.
NESTED_SUBVOLUMES = ("var", "home", "srv", "var/tmp")


def check_subvolume_target(config: Config) -> None:
    """Before anything is built: the subvolume format needs its output directory on btrfs."""
    if config.format != OutputFormat.subvolume:
        return
    assert config.output is not None
    outdir = config.output.parent
    outdir.mkdir(parents=True, exist_ok=True)
    fstype = filesystem_type(outdir)
    if fstype != "btrfs":
        raise MkosiError(f"the subvolume format needs the output directory on btrfs, but '{outdir}' is on {fstype}",
                         hint="use Format=directory, or OutputDirectory= on btrfs")


def make_subvolume(ctx: Context) -> list[Path]:
    assert ctx.config.output is not None
    check_subvolume_target(ctx.config)
    # Made next to its final place (same file system) and renamed into place after success.
    holder = Path(tempfile.mkdtemp(prefix=".mkosi-subvolume-", dir=ctx.config.output.parent))
    ctx.cleanup.append(holder)
    out = holder / ctx.config.output.name
    run(["btrfs", "subvolume", "create", out], capture=True)
    # /var, /home, /srv and /var/tmp are subvolumes of their own (snapshots of the image leave them
    # out); cp fills them and gives them the tree's owners and modes.
    for name in NESTED_SUBVOLUMES:
        if (ctx.root / name).is_dir() and not (ctx.root / name).is_symlink():
            run(["btrfs", "subvolume", "create", out / name], capture=True)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", f"{ctx.root}/.", f"{out}/."])
    if ctx.config.read_only:
        run(["btrfs", "property", "set", "-ts", out, "ro", "true"])
    return [out]


def make_tar_output(ctx: Context) -> list[Path]:
    tmp = _uncompressed_name(ctx, ".tar")
    with log.step("Creating tar archive"):
        make_tar(ctx.root, tmp, strip_selinux=ctx.config.tar_strip_selinux_context)
        return [maybe_compress(tmp, ctx.config.output_compression, _staged(ctx))]


def make_cpio_output(ctx: Context) -> list[Path]:
    tmp = _uncompressed_name(ctx, ".cpio")
    with log.step("Creating cpio archive"):
        make_cpio(ctx.root, tmp)
        return [maybe_compress(tmp, ctx.config.output_compression, _staged(ctx), for_initrd=True)]


def make_plain_squashfs(ctx: Context) -> list[Path]:
    from mkosi.output.filesystems import make_squashfs

    tmp = _uncompressed_name(ctx, ".raw")
    tool = str(ctx.config.mksquashfs_tool) if ctx.config.mksquashfs_tool else "mksquashfs"
    make_squashfs(ctx.root, tmp, ctx.config.compress_fs, tool)
    return [maybe_compress(tmp, ctx.config.output_compression, _staged(ctx))]


def make_disk(ctx: Context) -> list[Path]:
    from mkosi.output.diskimage import make_disk_image

    return make_disk_image(ctx)


MAKERS: dict[OutputFormat, Callable[[Context], list[Path]]] = {
    OutputFormat.directory: make_directory,
    OutputFormat.subvolume: make_subvolume,
    OutputFormat.tar: make_tar_output,
    OutputFormat.cpio: make_cpio_output,
    OutputFormat.plain_squashfs: make_plain_squashfs,
    OutputFormat.gpt_ext4: make_disk,
    OutputFormat.gpt_xfs: make_disk,
    OutputFormat.gpt_btrfs: make_disk,
    OutputFormat.gpt_squashfs: make_disk,
}


def copy_nspawn_settings(ctx: Context) -> list[Path]:
    src = ctx.config.nspawn_settings
    if src is None or ctx.config.output_nspawn_settings is None:
        return []
    dst = ctx.staging / ctx.config.output_nspawn_settings.name
    shutil.copy2(src, dst)
    return [dst]


def make_outputs(ctx: Context) -> list[Path]:
    maker = MAKERS.get(ctx.config.format)
    if maker is None:
        raise MkosiError(f"format '{ctx.config.format.value}' is not implemented yet")
    with log.step(f"Writing {ctx.config.format.value} output"):
        artifacts = maker(ctx)
    return artifacts + copy_nspawn_settings(ctx)
