"""UseSubvolumes=: image roots and cached images as btrfs subvolumes, copied by snapshots.

On btrfs a snapshot of a subvolume costs next to nothing where a copy of the tree takes seconds, so
with subvolumes the incremental cache is saved and reused by snapshots. `auto` uses them where the
file system is btrfs and the btrfs tool is there; `yes` fails the build where they cannot be made;
`no` never uses them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mkosi import log
from mkosi.config.enums import Feature
from mkosi.config.settings import Config
from mkosi.errors import MkosiError
from mkosi.run import find_tool, run

# The root directory of a btrfs subvolume always has this inode number.
SUBVOLUME_INODE = 256


def filesystem_type(path: Path) -> str:
    return str(run(["stat", "--file-system", "--format=%T", path], capture=True).stdout).strip()


def use_subvolumes(config: Config, where: Path) -> bool:
    """Whether trees made in `where` are subvolumes; an error for UseSubvolumes=yes where they cannot be."""
    if config.use_subvolumes == Feature.disabled:
        return False
    where.mkdir(parents=True, exist_ok=True)
    why = None
    if not find_tool("btrfs"):
        why = "the btrfs tool is not installed"
    elif (fstype := filesystem_type(where)) != "btrfs":
        why = f"'{where}' is on {fstype}, not btrfs"
    if why is None:
        return True
    if config.use_subvolumes == Feature.enabled:
        raise MkosiError(f"UseSubvolumes=yes, but subvolumes cannot be made: {why}",
                         hint="set UseSubvolumes=auto or no, or put the workspace and caches on btrfs")
    return False


def is_subvolume(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and os.stat(path).st_ino == SUBVOLUME_INODE
    except OSError:
        return False


def make_tree(config: Config, path: Path) -> None:
    """An empty directory for an image tree: a subvolume where UseSubvolumes= allows one."""
    if path.exists():
        return
    if use_subvolumes(config, path.parent):
        result = run(["btrfs", "subvolume", "create", path], check=False, capture=True)
        if result.returncode == 0:
            return
        if config.use_subvolumes == Feature.enabled:
            raise MkosiError(f"UseSubvolumes=yes, but 'btrfs subvolume create {path}' failed: "
                             f"{str(result.stderr).strip()}")
        log.debug(f"not a subvolume: {path}: {str(result.stderr).strip()}")
    path.mkdir(parents=True)


def copy_tree(config: Config, src: Path, dst: Path) -> None:
    """dst as a copy of src: a snapshot when src is a subvolume and subvolumes are used there, else cp."""
    if is_subvolume(src) and use_subvolumes(config, dst.parent):
        result = run(["btrfs", "subvolume", "snapshot", src, dst], check=False, capture=True)
        if result.returncode == 0:
            return
        if config.use_subvolumes == Feature.enabled:
            raise MkosiError(f"UseSubvolumes=yes, but snapshotting '{src}' failed: {str(result.stderr).strip()}")
    make_tree(config, dst)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", src, dst])


def remove_tree(path: Path) -> None:
    """Remove a tree, deleting it as a subvolume when it is one."""
    deleted = is_subvolume(path) and find_tool("btrfs") is not None and \
        run(["btrfs", "subvolume", "delete", path], check=False, capture=True).returncode == 0
    if deleted:
        return
    shutil.rmtree(path)
