"""BaseTrees=, Overlay= and the classic BaseImage=: images built on top of other images.

Without Overlay= the base trees are copied into the image root, in order, before anything else, and
only Packages= are installed on top of what they hold. With Overlay=yes (and always with
BaseImage=) the image root is an overlayfs mount during the build: the base trees are its read-only
lower layers (the last one on top) and an empty directory its upper layer. Whatever the build
writes lands in the upper layer; once the build steps are done the overlay is taken down and the
upper layer, cleaned by prune_against_bases(), becomes the image root that the output is made of:
exactly the files that are new or differ from the base.

A base tree is a directory, a tar archive (unpacked into the workspace) or an image: a GPT disk
image is mounted read-only with systemd-dissect, a file system image with a read-only loop mount.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.config.settings import Config
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError
from mkosi.run import run
from mkosi.sandbox import Sandbox
from mkosi.trees import install_tree, is_tar

OVERLAY_XATTR_PREFIX = "trusted.overlay."
GPT_SIGNATURE = b"EFI PART"

# Image roots that are overlay mounts right now (steps that would copy up every file skip them).
_OVERLAID: set[Path] = set()


def base_sources(config: Config) -> list[Path]:
    """The base trees in order (the last one wins); BaseImage= is one more."""
    return [*config.base_trees, *([config.base_image] if config.base_image is not None else [])]


def uses_overlay(config: Config) -> bool:
    return bool(base_sources(config)) and (config.overlay or config.base_image is not None)


def is_overlaid(ctx: Context) -> bool:
    return ctx.root in _OVERLAID


def _host(ctx: Context) -> Sandbox:
    # Mounts must outlive the command: mount and umount run on the host, never inside bubblewrap.
    return ctx.sandbox.on_host()


def kind_of(path: Path) -> str:
    """'directory', 'tar', 'disk' (a GPT disk image) or 'filesystem' (a file system image)."""
    if path.is_dir():
        return "directory"
    if not path.is_file():
        raise MkosiError(f"base tree '{path}' does not exist")
    if is_tar(path):
        return "tar"
    with open(path, "rb") as f:
        head = f.read(4096 + 8)
    for sector in (512, 4096):
        if head[sector:sector + 8] == GPT_SIGNATURE:
            return "disk"
    return "filesystem"


@contextlib.contextmanager
def base_directories(ctx: Context, sources: Sequence[Path]) -> Iterator[list[Path]]:
    """Each base tree as a directory: directories as they are, tar archives unpacked into the
    workspace, images mounted read-only (unmounted afterwards)."""
    dirs: list[Path] = []
    mounted: list[Path] = []
    try:
        for i, src in enumerate(sources):
            kind = kind_of(src)
            if kind == "directory":
                dirs.append(src.resolve())
                continue
            target = ctx.dir(f"bases/{ctx.phase.value}-{i}")
            if kind == "tar":
                with log.step(f"Unpacking base tree {src}"):
                    install_tree(src, target, "/")
            elif kind == "disk":
                with log.step(f"Mounting base image {src}"):
                    run(["systemd-dissect", "--read-only", "--mount", src, target], sandbox=_host(ctx), capture=True)
                mounted.append(target)
            else:
                with log.step(f"Mounting base image {src}"):
                    run(["mount", "-o", "loop,ro", src, target], sandbox=_host(ctx), capture=True)
                mounted.append(target)
            dirs.append(target)
        yield dirs
    finally:
        for point in reversed(mounted):
            run(["umount", "--recursive", point], sandbox=_host(ctx), check=False, capture=True)


@contextlib.contextmanager
def layered(ctx: Context) -> Iterator[None]:
    """The image root with its base trees: copied in, or (Overlay=yes, BaseImage=) an overlay that is
    replaced by the changes alone when the block ends without an error."""
    sources = base_sources(ctx.config)
    if not sources:
        yield
        return
    overlay = uses_overlay(ctx.config)
    with base_directories(ctx, sources) as dirs:
        if not overlay:
            ctx.root.mkdir(parents=True, exist_ok=True)
            for src, d in zip(sources, dirs):
                with log.step(f"Copying base tree {src}"):
                    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", f"{d}/.", f"{ctx.root}/."])
            yield
            return
        upper = ctx.dir(f"overlay-{ctx.phase.value}/upper")
        work = ctx.dir(f"overlay-{ctx.phase.value}/work")
        ctx.root.mkdir(parents=True, exist_ok=True)
        lower = ":".join(os.fspath(d) for d in reversed(dirs))
        # No redirects, metadata-only copies or index: the upper layer must be a plain tree of files.
        options = f"lowerdir={lower},upperdir={upper},workdir={work},redirect_dir=off,metacopy=off,index=off,xino=off"
        with log.step(f"Mounting the base trees under the image ({len(dirs)} layers)"):
            run(["mount", "-t", "overlay", "overlay", "-o", options, ctx.root], sandbox=_host(ctx), capture=True)
        _OVERLAID.add(ctx.root)
        try:
            yield
        finally:
            _OVERLAID.discard(ctx.root)
            if run(["umount", ctx.root], sandbox=_host(ctx), check=False, capture=True).returncode != 0:
                run(["umount", "--lazy", ctx.root], sandbox=_host(ctx), capture=True)
        if ctx.phase != Phase.final:
            return   # the development image is thrown away after the build script
        with log.step("Keeping only what the image adds to its base trees"):
            stats = prune_against_bases(upper, dirs)
        log.info(f"The image adds or changes {stats.kept} entries of its base trees"
                 + (f"; {stats.deletions} deletions cannot be expressed and were dropped" if stats.deletions else ""))
        ctx.root.rmdir()
        os.rename(upper, ctx.root)


# ---------------------------------------------------------------- the upper layer against the bases


@dataclasses.dataclass
class PruneStats:
    kept: int = 0             # entries left in the tree (new or changed)
    unchanged: int = 0        # files and links equal to the base's, removed
    deletions: int = 0        # whiteouts (files the build deleted from the base), removed
    directories: int = 0      # directories left empty that the base has, removed


def is_whiteout(st: os.stat_result) -> bool:
    """overlayfs marks a deleted lower file with a character device 0:0 in the upper layer."""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def lower_entry(base: Path, rel: str) -> Optional[os.stat_result]:
    """lstat of `rel` in a base tree, only through real directories (a link in the path would lead
    elsewhere, possibly onto the host): None when the base has no such entry."""
    current = base
    parts = rel.split("/")
    for i, part in enumerate(parts):
        current = current / part
        try:
            st = os.lstat(current)
        except OSError:
            return None
        if i < len(parts) - 1 and not stat.S_ISDIR(st.st_mode):
            return None
    return st


def _xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    values = {}
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIX):
            continue
        with contextlib.suppress(OSError):
            values[name] = os.getxattr(path, name, follow_symlinks=False)
    return values


def strip_overlay_xattrs(path: Path) -> None:
    """overlayfs's own attributes (opaque directories, origins) mean nothing outside the overlay."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(OVERLAY_XATTR_PREFIX):
            with contextlib.suppress(OSError):
                os.removexattr(path, name, follow_symlinks=False)


def _same_content(a: Path, b: Path, size: int) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1024 * 1024), fb.read(1024 * 1024)
            if x != y:
                return False
            if not x:
                return True


def same_entry(path: Path, st: os.stat_result, base_path: Path, bst: os.stat_result) -> bool:
    """Whether an entry of the upper layer is what the base holds already: same type, mode, owner,
    contents (or link target, or device) and extended attributes. Times do not count."""
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(bst.st_mode) or stat.S_IMODE(st.st_mode) != stat.S_IMODE(bst.st_mode):
        return False
    if (st.st_uid, st.st_gid) != (bst.st_uid, bst.st_gid):
        return False
    if stat.S_ISLNK(st.st_mode):
        if os.readlink(path) != os.readlink(base_path):
            return False
    elif stat.S_ISREG(st.st_mode):
        if st.st_size != bst.st_size or not _same_content(path, base_path, st.st_size):
            return False
    elif (stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode)) and st.st_rdev != bst.st_rdev:
        return False
    return _xattrs(path) == _xattrs(base_path)


def _base_of(bases: Sequence[Path], rel: str) -> Optional[tuple[Path, os.stat_result]]:
    """The entry the image would see below the upper layer: the topmost base holding it."""
    for base in reversed(bases):
        bst = lower_entry(base, rel)
        if bst is not None:
            return base / rel, bst
    return None


def prune_against_bases(tree: Path, bases: Sequence[Path]) -> PruneStats:
    """Reduce an overlay's upper layer (or any tree built on top of `bases`) to what it adds: remove
    whiteouts, files and links equal to the base's, and directories the base has that are left empty
    with the base's mode and owner; strip overlayfs's attributes from what stays."""
    stats = PruneStats()
    for dirpath, dirnames, filenames in os.walk(tree, topdown=False):
        d = Path(dirpath)
        for name in [*filenames, *(n for n in dirnames if os.path.islink(os.path.join(dirpath, n)))]:
            path = d / name
            rel = os.fspath(path.relative_to(tree))
            st = os.lstat(path)
            if is_whiteout(st):
                path.unlink()
                stats.deletions += 1
                log.debug(f"dropped the deletion of /{rel} (an image cannot express it)")
                continue
            found = _base_of(bases, rel)
            if found is not None and same_entry(path, st, *found):
                path.unlink()
                stats.unchanged += 1
                continue
            strip_overlay_xattrs(path)
            stats.kept += 1
        if d == tree:
            strip_overlay_xattrs(d)
            continue
        rel = os.fspath(d.relative_to(tree))
        found = _base_of(bases, rel)
        st = os.lstat(d)
        if found is not None and stat.S_ISDIR(found[1].st_mode) and \
                stat.S_IMODE(st.st_mode) == stat.S_IMODE(found[1].st_mode) and \
                (st.st_uid, st.st_gid) == (found[1].st_uid, found[1].st_gid):
            try:
                d.rmdir()
                stats.directories += 1
                continue
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
        strip_overlay_xattrs(d)
        stats.kept += 1
    return stats
