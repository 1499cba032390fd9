"""Copying trees into the image: directories (files owned by root) and tar archives (ownership kept)."""

from __future__ import annotations

import os
from pathlib import Path

from mkosi.run import run


def is_tar(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tgz"))


def copy_tree_into(src: Path, dst: Path) -> None:
    """Copy a directory's contents into dst; files end up owned by root, modes are kept."""
    dst.mkdir(parents=True, exist_ok=True)
    run(["cp", "--recursive", "--no-dereference", "--preserve=mode,timestamps,links,xattr",
         "--no-preserve=ownership", "--reflink=auto", "--no-target-directory", f"{src}/.", f"{dst}/."])


def unpack_tar_into(src: Path, dst: Path) -> None:
    """Unpack an archive into dst keeping the ownership, modes, xattrs and ACLs recorded in it."""
    dst.mkdir(parents=True, exist_ok=True)
    run(["tar", "--extract", "--file", src, "--directory", dst, "--same-owner", "--same-permissions",
         "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "--keep-directory-symlink"])


def install_tree(src: Path, dst: Path) -> None:
    if is_tar(src):
        unpack_tar_into(src, dst)
    else:
        copy_tree_into(src, dst)


def chown_to_invoking_user(path: Path) -> None:
    """Give an artifact to the user who ran sudo."""
    uid = os.environ.get("SUDO_UID")
    gid = os.environ.get("SUDO_GID")
    if not uid or not gid or not path.exists():
        return
    if path.is_dir() and not path.is_symlink():
        # A directory image keeps its root-owned content; only the top directory changes hands.
        os.chown(path, int(uid), int(gid))
    else:
        os.chown(path, int(uid), int(gid), follow_symlinks=False)
