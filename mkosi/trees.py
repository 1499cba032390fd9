"""Copying trees into the image: directories (files owned by root) and tar archives (ownership kept).

Every path written into the image is resolved inside the image root, the way the image itself would see
it: a symbolic link in the image (`var/run -> /run`, `usr/lib/environment.d/99-environment.conf ->
/etc/environment`) leads to the image's /run or /etc, never to the host's. Links to directories are
followed (so a merged /usr stays merged); a file or link being copied replaces a link at its own name
instead of writing through it."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from mkosi.errors import MkosiError
from mkosi.run import run

MAX_LINKS = 40


def is_tar(path: Path) -> bool:
    return path.is_file() and any(path.name.endswith(s) for s in (".tar", ".tar.gz", ".tar.xz", ".tar.zst", ".tgz"))


def resolve_in_root(root: Path, path: str) -> Path:
    """The host path of `path` as the image sees it: symbolic links are followed inside root, absolute
    link targets are taken relative to root, and '..' never climbs above it."""
    top = root.resolve()
    current = top
    parts = [p for p in path.split("/") if p not in ("", ".")]
    links = 0
    while parts:
        name = parts.pop(0)
        if name == "..":
            if current != top:
                current = current.parent
            continue
        candidate = current / name
        if candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise MkosiError(f"too many levels of symbolic links resolving '{path}' in the image")
            target = os.readlink(candidate)
            if target.startswith("/"):
                current = top
            parts = [p for p in target.split("/") if p not in ("", ".")] + parts
            continue
        current = candidate
    return current


def _replace_with(dst: Path) -> None:
    """Make room for a new file or link at dst: an existing non-directory (a link included) goes."""
    if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
        dst.unlink()
    elif dst.is_dir():
        shutil.rmtree(dst)


def _copy_owner(src: Path, dst: Path, keep_owner: bool) -> None:
    # Without keep_owner the copy belongs to whoever runs mkosi: root, in a build.
    if keep_owner:
        st = src.lstat()
        os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)


def _copy_entry(src: Path, parent: Path, keep_owner: bool) -> None:
    dst = parent / src.name
    st = src.lstat()
    if stat.S_ISLNK(st.st_mode):
        _replace_with(dst)
        os.symlink(os.readlink(src), dst)
        _copy_owner(src, dst, keep_owner)
        return
    if stat.S_ISREG(st.st_mode):
        _replace_with(dst)
        shutil.copyfile(src, dst, follow_symlinks=False)
    else:  # device nodes, fifos, sockets: recreated rather than read
        _replace_with(dst)
        os.mknod(dst, st.st_mode, st.st_rdev)
    _copy_owner(src, dst, keep_owner)
    shutil.copystat(src, dst, follow_symlinks=False)


def copy_into_root(src: Path, root: Path, target: str = "/", *, keep_owner: bool = False) -> None:
    """Copy the contents of the directory src to `target` inside the image at root. Modes, timestamps and
    extended attributes are kept; files are owned by root unless keep_owner."""
    directories: list[tuple[Path, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src):
        here = Path(dirpath)
        rel = os.path.relpath(here, src)
        dst_dir = resolve_in_root(root, os.path.join(target, rel))
        if not dst_dir.is_dir():
            _replace_with(dst_dir)
            dst_dir.mkdir(parents=True)
        directories.append((here, dst_dir))
        for name in [*filenames, *(d for d in dirnames if (here / d).is_symlink())]:
            _copy_entry(here / name, dst_dir, keep_owner)
        dirnames[:] = [d for d in dirnames if not (here / d).is_symlink()]
    # Directory modes and times last, so that copying into them did not change their times.
    for here, dst_dir in reversed(directories):
        if os.path.relpath(here, src) == "." and dst_dir == root.resolve():
            continue  # the image's root directory keeps its own mode
        _copy_owner(here, dst_dir, keep_owner)
        shutil.copystat(here, dst_dir, follow_symlinks=False)


def unpack_tar_into(src: Path, root: Path, target: str = "/") -> None:
    """Unpack an archive into the image keeping the ownership, modes, xattrs and ACLs recorded in it. It is
    unpacked into a fresh directory first (where tar's own protections apply), then copied in."""
    with tempfile.TemporaryDirectory(prefix=".mkosi-tar-", dir=root.parent) as tmp:
        run(["tar", "--extract", "--file", src, "--directory", tmp, "--same-owner", "--same-permissions",
             "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls"])
        copy_into_root(Path(tmp), root, target, keep_owner=True)


def install_tree(src: Path, root: Path, target: str = "/") -> None:
    if is_tar(src):
        unpack_tar_into(src, root, target)
    else:
        copy_into_root(src, root, target)


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
