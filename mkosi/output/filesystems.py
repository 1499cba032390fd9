"""File system images made from directory trees, as sparse image files, without mounting where possible.

All sizes are in bytes. Every function writes (or rewrites) the image file it is given.

- ext4: mkfs.ext4 -d. SOURCE_DATE_EPOCH sets E2FSPROGS_FAKE_TIME and a derived directory hash
  seed and UUID, so equal trees give equal images.
- xfs: mkfs.xfs -p with a protofile generated from the tree, then xfs_db fixes what protofiles
  cannot express (sticky bits, timestamps). Trees a protofile cannot describe (hard links,
  extended attributes, sockets, names with blanks) are copied through a loop mount instead.
- btrfs: mkfs.btrfs --rootdir (--shrink when minimizing). btrfs-progs before 6.11 (Debian 12 has
  6.2) cannot compress at mkfs time; compress_btrfs() then rewrites the files compressed through
  a loop mount (and shrinks the file system afterwards when minimizing).
- squashfs: mksquashfs, ownership and extended attributes kept.
- erofs: mkfs.erofs, ownership and extended attributes kept; SOURCE_DATE_EPOCH (or the seed) fixes
  the timestamps and the UUID.
- vfat: mkfs.vfat, populated with mtools' mcopy.
- swap: mkswap on a file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from mkosi import log
from mkosi.errors import CommandError, MkosiError
from mkosi.output.gpt import SeedLike, make_uuid, resolve_seed
from mkosi.run import current_sandbox, find_tool, output, run

MiB = 1024 * 1024
XFS_MIN_SIZE = 300 * MiB
EXT4_LABEL_MAX = 16
XFS_LABEL_MAX = 12
VFAT_LABEL_MAX = 11


def _create_sparse(image: Path, size: int) -> None:
    if size <= 0:
        raise MkosiError(f"cannot create {image}: size {size} is not positive")
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(size)


def _fit_label(label: str, limit: int, fs: str) -> str:
    if len(label.encode()) <= limit:
        return label
    short = label.encode()[:limit].decode(errors="ignore")
    log.warn(f"{fs} labels are limited to {limit} bytes, using '{short}' instead of '{label}'")
    return short


def _space_hint(fs: str, size: int) -> str:
    return f"the {fs} file system of {size // MiB} MiB is too small for the tree; give it a larger size"


def _out_of_space(e: CommandError) -> bool:
    text = e.stderr.lower()
    return any(s in text for s in ("no space left", "could not allocate", "not enough space", "too small", "enospc"))


# ---------------------------------------------------------------------------------------------
# Size estimation


def tree_size(src_dir: Path) -> int:
    """Bytes the tree needs at 4 KiB block granularity (hard links counted once), plus inodes."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for root, dirs, files in os.walk(src_dir):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            if stat.S_ISREG(st.st_mode):
                total += (min(st.st_size, st.st_blocks * 512 or st.st_size) + 4095) // 4096 * 4096
            elif stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode):
                total += 4096
            total += 512
    return total


def estimate_size(src_dir: Path, fs: str) -> int:
    """A comfortable file system size for the tree, a multiple of 1 MiB."""
    need = tree_size(src_dir)
    size = int(need * 1.25) + 64 * MiB
    if fs == "btrfs":
        size = max(size + 64 * MiB, 128 * MiB)
    if fs == "xfs":
        size = max(size + 32 * MiB, XFS_MIN_SIZE)
    return (size + MiB - 1) // MiB * MiB


# ---------------------------------------------------------------------------------------------
# ext4


def _version_after(prefix: str, text: str) -> tuple[int, ...]:
    """The version X.Y[.Z] that follows `prefix` (a regular expression) in a tool's version text, as a
    tuple; (0,) when there is none."""
    m = re.search(prefix + r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(x) for x in m.groups() if x is not None) if m else (0,)


def _mke2fs_version() -> tuple[int, ...]:
    return _version_after(r"mke2fs ", output(["mkfs.ext4", "-V"], check=False, stderr=subprocess.STDOUT))


def make_ext4(
    src_dir: Path,
    image: Path,
    size: int,
    label: str,
    uuid: str | None = None,
    *,
    seed: SeedLike | None = None,
) -> None:
    """Create an ext4 image of `size` bytes holding `src_dir`.

    4 KiB blocks and 256 byte inodes regardless of size. The orphan_file feature (default in
    e2fsprogs 1.47) is turned off so that older e2fsck versions in the image can still check the
    file system. With SOURCE_DATE_EPOCH or a seed, file system times come from
    E2FSPROGS_FAKE_TIME and UUID and directory hash seed are derived, for reproducible images.
    """
    label = _fit_label(label, EXT4_LABEL_MAX, "ext4")
    _create_sparse(image, size)
    key = resolve_seed(seed)
    env: dict[str, str] = {}
    argv: list[str] = ["mkfs.ext4", "-F", "-q", "-b", "4096", "-I", "256", "-L", label]
    if uuid is None and key is not None:
        uuid = str(make_uuid(seed, "ext4-uuid", label))
    if uuid is not None:
        argv += ["-U", uuid]
    if key is not None:
        argv += ["-E", f"hash_seed={make_uuid(seed, 'ext4-hash-seed', label)}"]
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        env["E2FSPROGS_FAKE_TIME"] = epoch.strip()
    if _mke2fs_version() >= (1, 47):
        argv += ["-O", "^orphan_file"]
    # The default of one inode per 16 KiB can be too few for trees of many small files.
    entries = sum(len(dirs) + len(files) for _, dirs, files in os.walk(src_dir)) + 1
    wanted = entries + entries // 4 + 4096
    if wanted > size // 16384:
        argv += ["-N", str(wanted)]
    argv += ["-d", os.fspath(src_dir), os.fspath(image)]
    with log.step(f"Creating ext4 file system {image.name}"):
        try:
            run(argv, env=env, capture=True)
        except CommandError as e:
            if _out_of_space(e):
                raise MkosiError(str(e), hint=_space_hint("ext4", size))
            raise
        epoch_value = source_date_epoch()
        if epoch_value is not None:
            _ext4_clamp_times(image, src_dir, epoch_value)


def clamp_times(root: Path, epoch: int) -> None:
    """Set the access and modification times of everything below `root` that are later than `epoch` to it."""
    limit = epoch * 1_000_000_000
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_mtime_ns > limit or st.st_atime_ns > limit:
                os.utime(path, ns=(min(st.st_atime_ns, limit), min(st.st_mtime_ns, limit)), follow_symlinks=False)


def source_date_epoch() -> int | None:
    value = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    return int(value) if value.isdigit() else None


def _walk_entries(src_dir: Path) -> Iterator[tuple[str, os.stat_result]]:
    """("/rel/path", lstat) for the tree's root and everything in it, sorted."""
    yield "/", os.lstat(src_dir)
    for root, dirs, files in os.walk(src_dir):
        dirs.sort()
        for name in sorted(dirs + files):
            full = os.path.join(root, name)
            yield "/" + os.path.relpath(full, src_dir), os.lstat(full)


def ext4_clamp_commands(src_dir: Path, epoch: int) -> tuple[str, int]:
    """debugfs commands making inode times reproducible; and how many paths had to be skipped.

    mke2fs -d copies atime and ctime from the tree, which differ from build to build. Here
    mtimes later than `epoch` are clamped to it, and atime and ctime are set to the (clamped)
    mtime, whole seconds. crtime already is E2FSPROGS_FAKE_TIME.
    """
    cmds: list[str] = []
    skipped = 0
    for rel, st in _walk_entries(src_dir):
        if "\n" in rel:
            skipped += 1
            continue
        mtime = int(st.st_mtime)
        # Inside debugfs's double quotes a backslash is an ordinary character and "" is a quote.
        target = '"' + rel.replace('"', '""') + '"'
        if mtime > epoch:
            mtime = epoch
            cmds += [f"sif {target} mtime @{mtime}", f"sif {target} mtime_extra 0"]
        for field in ("atime", "ctime"):
            cmds += [f"sif {target} {field} @{mtime}", f"sif {target} {field}_extra 0"]
    return "\n".join(cmds) + "\n", skipped


def _ext4_clamp_times(image: Path, src_dir: Path, epoch: int) -> None:
    script, skipped = ext4_clamp_commands(src_dir, epoch)
    if skipped:
        log.warn(f"{skipped} paths with newlines keep their build-time ctime/atime")
    with tempfile.NamedTemporaryFile("w", prefix=".debugfs-", dir=image.parent) as f:
        f.write(script)
        f.flush()
        # Without the fake time, debugfs stamps the superblock's last write time with the clock.
        proc = run(["debugfs", "-w", "-f", f.name, os.fspath(image)], capture=True,
                   env={"E2FSPROGS_FAKE_TIME": str(epoch)})
    errors = [line for line in str(proc.stderr).splitlines() if line and not line.startswith("debugfs ")]
    if errors:
        raise MkosiError(f"setting reproducible timestamps in {image.name} failed: {errors[0]}")


def _ext4_geometry(image: Path) -> tuple[int, int]:
    text = output(["dumpe2fs", "-h", os.fspath(image)], stderr=None)
    count = re.search(r"^Block count:\s+(\d+)", text, re.M)
    bsize = re.search(r"^Block size:\s+(\d+)", text, re.M)
    if count is None or bsize is None:
        raise MkosiError(f"cannot read the geometry of ext4 image {image}")
    return int(count.group(1)), int(bsize.group(1))


def minimize_ext4(image: Path) -> int:
    """Shrink an ext4 image to its minimal size (resize2fs -M) and truncate the file. Returns the size."""
    with log.step(f"Minimizing ext4 file system {image.name}"):
        epoch = source_date_epoch()
        env = {"E2FSPROGS_FAKE_TIME": str(epoch)} if epoch is not None else {}
        proc = run(["e2fsck", "-f", "-y", os.fspath(image)], check=False, capture=True, env=env)
        if proc.returncode not in (0, 1):
            raise CommandError(["e2fsck", "-f", "-y", os.fspath(image)], proc.returncode, str(proc.stderr))
        run(["resize2fs", "-M", os.fspath(image)], capture=True, env=env)
        count, bsize = _ext4_geometry(image)
        new_size = count * bsize
        os.truncate(image, new_size)
    log.debug(f"{image.name} minimized to {new_size} bytes")
    return new_size


# ---------------------------------------------------------------------------------------------
# xfs


@dataclasses.dataclass
class _Entry:
    rel: str  # path inside the tree, "" for the root
    st: os.stat_result


class ProtofileUnsuitable(Exception):
    """The tree holds something an xfs protofile cannot describe; the reason is the message."""


_BAD_NAME = re.compile(r"[\s]")


def _check_name(name: str, rel: str) -> None:
    if _BAD_NAME.search(name) or name.startswith(":") or name == "$" or not name.isprintable():
        raise ProtofileUnsuitable(f"file name {rel!r} cannot be written in a protofile")


def _has_xattrs(path: str) -> bool:
    try:
        return bool(os.listxattr(path, follow_symlinks=False))
    except OSError:
        return False


def _mode_token(st: os.stat_result) -> str:
    m = st.st_mode
    if stat.S_ISREG(m):
        kind = "-"
    elif stat.S_ISDIR(m):
        kind = "d"
    elif stat.S_ISLNK(m):
        kind = "l"
    elif stat.S_ISBLK(m):
        kind = "b"
    elif stat.S_ISCHR(m):
        kind = "c"
    elif stat.S_ISFIFO(m):
        kind = "p"
    else:
        raise ProtofileUnsuitable("sockets cannot be written in a protofile")
    return (
        kind
        + ("u" if m & stat.S_ISUID else "-")
        + ("g" if m & stat.S_ISGID else "-")
        + f"{stat.S_IMODE(m) & 0o777:03o}"
    )


def xfs_protofile(src_dir: Path) -> tuple[str, list[_Entry]]:
    """An mkfs.xfs protofile describing `src_dir`, and every entry in it (root first).

    Regular file contents are referenced relative to `src_dir`, so mkfs.xfs must run there.
    Raises ProtofileUnsuitable when the tree holds hard links, extended attributes, sockets or
    names the protofile syntax cannot carry.
    """
    lines = ["mkosi-protofile", "0 0"]
    entries: list[_Entry] = []
    root_st = os.lstat(src_dir)
    if _has_xattrs(os.fspath(src_dir)):
        raise ProtofileUnsuitable("the tree's root directory has extended attributes")
    lines.append(f"{_mode_token(root_st)} {root_st.st_uid} {root_st.st_gid}")
    entries.append(_Entry("", root_st))

    def walk(dir_path: str, rel_dir: str, depth: int) -> None:
        indent = " " * depth
        with os.scandir(dir_path) as it:
            children = sorted(it, key=lambda e: e.name)
        for child in children:
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            _check_name(child.name, rel)
            st = child.stat(follow_symlinks=False)
            token = _mode_token(st)
            if _has_xattrs(child.path):
                raise ProtofileUnsuitable(f"{rel} has extended attributes")
            head = f"{indent}{child.name} {token} {st.st_uid} {st.st_gid}"
            entries.append(_Entry(rel, st))
            if stat.S_ISDIR(st.st_mode):
                lines.append(head)
                walk(child.path, rel, depth + 1)
                lines.append(f"{indent}$")
            elif stat.S_ISREG(st.st_mode):
                if st.st_nlink > 1:
                    raise ProtofileUnsuitable(f"{rel} is hard linked")
                lines.append(f"{head} ./{rel}")
            elif stat.S_ISLNK(st.st_mode):
                target = os.readlink(child.path)
                if not target or _BAD_NAME.search(target) or not target.isprintable():
                    raise ProtofileUnsuitable(f"symlink target of {rel} cannot be written in a protofile")
                lines.append(f"{head} {target}")
            elif stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode):
                lines.append(f"{head} {os.major(st.st_rdev)} {os.minor(st.st_rdev)}")
            else:
                lines.append(head)

    walk(os.fspath(src_dir), "", 1)
    lines.append("$")
    return "\n".join(lines) + "\n", entries


def _xfs_bigtime(sec: int, nsec: int) -> int:
    """An inode timestamp in the on-disk encoding of the bigtime feature, as xfs_db writes it raw."""
    return (sec + 2**31) * 1_000_000_000 + nsec


def xfs_fixup_commands(entries: Sequence[_Entry], epoch: int | None = None) -> str:
    """xfs_db commands restoring what the protofile could not carry: sticky bits and timestamps.

    atime and mtime are copied from the tree. With `epoch` (SOURCE_DATE_EPOCH), mtimes later
    than it are clamped, atime and ctime become the mtime and the creation time the epoch.
    """
    cmds: list[str] = []
    for e in entries:
        cmds.append(f"path /{e.rel}")
        if e.st.st_mode & stat.S_ISVTX:
            cmds.append(f"write core.mode 0{e.st.st_mode:o}")
        msec, mnsec = divmod(e.st.st_mtime_ns, 1_000_000_000)
        asec, ansec = divmod(e.st.st_atime_ns, 1_000_000_000)
        if epoch is not None:
            if msec >= epoch:
                msec, mnsec = epoch, 0
            asec, ansec = msec, mnsec
            cmds.append(f"write core.ctime.sec {_xfs_bigtime(msec, mnsec)}")
            cmds.append(f"write v3.crtime.sec {_xfs_bigtime(epoch, 0)}")
        cmds.append(f"write core.mtime.sec {_xfs_bigtime(msec, mnsec)}")
        cmds.append(f"write core.atime.sec {_xfs_bigtime(asec, ansec)}")
    return "\n".join(cmds) + "\n"


@contextlib.contextmanager
def loop_mount(image: Path, fstype: str | None = None, options: str = "") -> Iterator[Path]:
    """Mount an image file through an auto-clearing loop device; always unmounted afterwards."""
    mnt = Path(tempfile.mkdtemp(prefix=f".{image.name}-mnt-", dir=image.parent))
    argv: list[str] = ["mount", "-o", ",".join(o for o in ("loop", options) if o)]
    if fstype:
        argv += ["-t", fstype]
    # The mount must outlive the command: mount and umount run on the host, never inside the bubblewrap of a
    # tools tree (whose mount namespace ends with the command); what runs on the mounted tree sees it there.
    host = current_sandbox().on_host()
    try:
        run([*argv, os.fspath(image), os.fspath(mnt)], sandbox=host, capture=True)
        try:
            yield mnt
        finally:
            run(["umount", os.fspath(mnt)], sandbox=host, capture=True)
    finally:
        with contextlib.suppress(OSError):
            mnt.rmdir()


def _copy_tree_into(src_dir: Path, dst: Path) -> None:
    # cp -a keeps ownership, modes, timestamps, hard links, extended attributes and special files.
    run(["cp", "-a", "--sparse=always", "--no-target-directory", f"{os.fspath(src_dir)}/.", os.fspath(dst)])


def make_xfs(
    src_dir: Path,
    image: Path,
    size: int,
    label: str,
    uuid: str | None = None,
    *,
    seed: SeedLike | None = None,
) -> str:
    """Create an xfs image of `size` bytes (at least 300 MiB, mkfs.xfs's minimum) holding `src_dir`.

    Returns how it was populated: "directory" (xfsprogs 7.1 or newer: mkfs.xfs -p DIRECTORY copies
    the whole tree, hard links and extended attributes included, and with a seed draws nothing at
    random), "protofile" (mkfs.xfs -p plus xfs_db fixups for sticky bits and timestamps, no
    mounting) or "loop-mount" (the fallback for trees with hard links, extended attributes, sockets
    or unusual names, which a protofile cannot describe).
    """
    if size < XFS_MIN_SIZE:
        raise MkosiError(
            f"xfs file system {image.name} would be {size // MiB} MiB, mkfs.xfs needs at least 300 MiB",
            hint="give the partition a size of 300M or more",
        )
    label = _fit_label(label, XFS_LABEL_MAX, "xfs")
    if uuid is None and resolve_seed(seed) is not None:
        uuid = str(make_uuid(seed, "xfs-uuid", label))
    meta = "bigtime=1" + (f",uuid={uuid}" if uuid else "")
    base: list[str] = ["mkfs.xfs", "-q", "-f", "-L", label, "-m", meta]

    if xfs_mkfs_populates_from_directory():
        _create_sparse(image, size)
        with log.step(f"Creating xfs file system {image.name}"):
            try:
                run([*base, "-p", os.fspath(src_dir.absolute()), os.fspath(image.absolute())], capture=True,
                    env=_deterministic_env(resolve_seed(seed) is not None))
            except CommandError as e:
                if _out_of_space(e):
                    raise MkosiError(str(e), hint=_space_hint("xfs", size))
                raise
        return "directory"

    warn_not_reproducible("xfs", "mkfs.xfs", "xfsprogs", XFS_DIRECTORY_POPULATION,
                          "ToolsTreeRelease=forky or sid")
    try:
        proto, entries = xfs_protofile(src_dir)
        reason = ""
    except ProtofileUnsuitable as e:
        proto, entries, reason = "", [], str(e)

    _create_sparse(image, size)
    with log.step(f"Creating xfs file system {image.name}"):
        if not reason:
            with tempfile.NamedTemporaryFile("w", prefix=".xfs-proto-", dir=image.parent) as f:
                f.write(proto)
                f.flush()
                try:
                    run([*base, "-p", f.name, os.fspath(image.absolute())], cwd=src_dir, capture=True)
                except CommandError as e:
                    if _out_of_space(e):
                        raise MkosiError(str(e), hint=_space_hint("xfs", size))
                    raise
            fixups = xfs_fixup_commands(entries, source_date_epoch())
            run(["xfs_db", "-x", os.fspath(image)], input=fixups, capture=True)
            return "protofile"

        log.warn(f"populating xfs through a loop mount: {reason}")
        run([*base, os.fspath(image)], capture=True)
        with loop_mount(image, "xfs") as mnt:
            try:
                _copy_tree_into(src_dir, mnt)
            except CommandError as e:
                if _out_of_space(e):
                    raise MkosiError(str(e), hint=_space_hint("xfs", size))
                raise
        return "loop-mount"


def warn_not_reproducible(fs: str, tool: str, package: str, needed: tuple[int, ...], where: str) -> None:
    """A build that asks for reproducibility (a source date epoch) is told when this mkfs cannot give it."""
    if source_date_epoch() is None:
        return
    wanted = ".".join(map(str, needed))
    log.warn(f"this {fs} file system will not be reproducible: before {package} {wanted}, {tool} puts random "
             f"numbers and the time of the build into it (use {package} {wanted} or newer, e.g. through {where})")


def _deterministic_env(deterministic: bool) -> dict[str, str]:
    """The variables that make a new enough mkfs.xfs or mkfs.btrfs draw nothing at random:
    DETERMINISTIC_SEED=1 (UUIDs and generation numbers derived, not drawn) and the source date epoch
    as the time it stamps on what it creates."""
    env: dict[str, str] = {}
    if deterministic:
        env["DETERMINISTIC_SEED"] = "1"
    epoch = source_date_epoch()
    if epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(epoch)
    return env


def parse_mkfs_xfs_version(text: str) -> tuple[int, ...]:
    """(7, 2, 0) from `mkfs.xfs -V`'s "mkfs.xfs version 7.2.0"; (0,) when there is no version."""
    return _version_after(r"mkfs\.xfs version ", text)


# mkfs.xfs -p DIRECTORY arrived in xfsprogs 6.17, SOURCE_DATE_EPOCH and DETERMINISTIC_SEED in 6.18, and
# the fix for hard links in a directory copied that way in 7.1: the first release mkosi uses it from.
XFS_DIRECTORY_POPULATION = (7, 1)


def xfs_mkfs_populates_from_directory() -> bool:
    """Whether mkfs.xfs can fill the file system from a directory, deterministically (-p DIRECTORY)."""
    if find_tool("mkfs.xfs") is None:
        return False
    text = output(["mkfs.xfs", "-V"], check=False, stderr=subprocess.STDOUT)
    return parse_mkfs_xfs_version(text) >= XFS_DIRECTORY_POPULATION


# ---------------------------------------------------------------------------------------------
# btrfs


def parse_btrfs_progs_version(text: str) -> tuple[int, ...]:
    """(7, 3) from `mkfs.btrfs --version`'s "mkfs.btrfs, part of btrfs-progs v7.3"; (0,) otherwise."""
    return _version_after(r"btrfs-progs v", text)


# btrfs-progs 7.3: mkfs.btrfs reads SOURCE_DATE_EPOCH (the times it stamps, and each copied inode's change
# and access time) and DETERMINISTIC_SEED=1 (chunk tree, device and subvolume UUIDs derived from -U).
BTRFS_DETERMINISTIC = (7, 3)


def btrfs_mkfs_is_deterministic() -> bool:
    """Whether mkfs.btrfs --rootdir draws nothing at random given -U and DETERMINISTIC_SEED=1."""
    if find_tool("mkfs.btrfs") is None:
        return False
    text = output(["mkfs.btrfs", "--version"], check=False, stderr=subprocess.STDOUT)
    return parse_btrfs_progs_version(text) >= BTRFS_DETERMINISTIC


def btrfs_mkfs_supports_compress() -> bool:
    """Whether mkfs.btrfs can compress files while populating (--compress, btrfs-progs 6.11+)."""
    if find_tool("mkfs.btrfs") is None:
        return False
    text = output(["mkfs.btrfs", "--help"], check=False, stderr=subprocess.STDOUT)
    return "--compress" in text


def make_btrfs(
    src_dir: Path,
    image: Path,
    size: int,
    label: str,
    uuid: str | None = None,
    *,
    shrink: bool = False,
    compress: str | None = None,
    seed: SeedLike | None = None,
) -> int:
    """Create a btrfs image of `size` bytes holding `src_dir`; returns the final file size.

    With `shrink` the file system (and file) is cut to the minimum mkfs.btrfs --shrink finds.
    `compress` (e.g. "zstd") needs mkfs.btrfs --compress; older btrfs-progs raise an error, so
    callers check btrfs_mkfs_supports_compress() and use a compress= mount option otherwise.
    """
    if uuid is None and resolve_seed(seed) is not None:
        uuid = str(make_uuid(seed, "btrfs-uuid", label))
    argv: list[str] = ["mkfs.btrfs", "-q", "-f", "-L", label]
    if uuid:
        argv += ["-U", uuid]
    if compress:
        if not btrfs_mkfs_supports_compress():
            raise MkosiError(
                "this mkfs.btrfs cannot compress at mkfs time",
                hint="use the compress= mount option instead (rootflags= or fstab)",
            )
        argv += ["--compress", compress]
    argv += ["-r", os.fspath(src_dir)]
    if shrink:
        argv.append("--shrink")
    # Without -U, DETERMINISTIC_SEED=1 is an error: it derives the other UUIDs from the file system's.
    deterministic = btrfs_mkfs_is_deterministic()
    env = _deterministic_env(True) if uuid and deterministic else {}
    if not deterministic:
        warn_not_reproducible("btrfs", "mkfs.btrfs", "btrfs-progs", BTRFS_DETERMINISTIC,
                              "the default tools tree, whose btrfs-progs comes from trixie-backports")
    _create_sparse(image, size)
    with log.step(f"Creating btrfs file system {image.name}"):
        try:
            run([*argv, os.fspath(image)], capture=True, env=env)
        except CommandError as e:
            if _out_of_space(e):
                raise MkosiError(str(e), hint=_space_hint("btrfs", size))
            raise
        devices = [
            (rel, st) for rel, st in _walk_entries(src_dir) if stat.S_ISBLK(st.st_mode) or stat.S_ISCHR(st.st_mode)
        ]
        if devices:
            _btrfs_fix_device_nodes(image, src_dir, devices)
    return image.stat().st_size


def _btrfs_fix_device_nodes(image: Path, src_dir: Path, devices: Sequence[tuple[str, os.stat_result]]) -> None:
    """Recreate device nodes whose device numbers mkfs.btrfs --rootdir lost.

    btrfs-progs 6.2 (Debian 12) writes block and character device inodes with rdev 0. The
    nodes are recreated through a loop mount, which is always unmounted again.
    """
    with loop_mount(image, "btrfs") as mnt:
        wrong = [(rel, st) for rel, st in devices if os.lstat(mnt / rel.lstrip("/")).st_rdev != st.st_rdev]
        if not wrong:
            return
        log.warn(f"mkfs.btrfs lost the device numbers of {len(wrong)} device nodes, recreating them")
        for rel, st in wrong:
            path = mnt / rel.lstrip("/")
            path.unlink()
            os.mknod(path, st.st_mode, st.st_rdev)
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
        for parent in sorted({os.path.dirname(rel.lstrip("/")) for rel, _ in wrong}):
            pst = os.lstat(src_dir / parent)
            os.utime(mnt / parent, ns=(pst.st_atime_ns, pst.st_mtime_ns))


BTRFS_MIN_RESIZE = 256 * MiB  # the kernel refuses to shrink a btrfs device below this


def compress_btrfs(image: Path, algorithm: str, *, shrink: bool = False) -> int:
    """Compress the files of a btrfs image in place; returns the final image size.

    For mkfs.btrfs without --compress: the image is loop-mounted with compress=ALGORITHM, every
    file is rewritten compressed (btrfs filesystem defragment -c) and the top directory gets the
    compression property, so that files written later are compressed too. The image needs free
    room for the rewrite, so make it without --shrink; with `shrink` the file system is cut
    afterwards to the smallest size the kernel allows (btrfs inspect-internal min-dev-size, but
    not below 256 MiB) and the image file truncated to it.
    """
    with log.step(f"Compressing the files of {image.name} with {algorithm}"), \
            loop_mount(image, "btrfs", f"compress={algorithm}") as mnt:
        run(["btrfs", "filesystem", "defragment", "-r", f"-c{algorithm}", os.fspath(mnt)], capture=True)
        run(["btrfs", "property", "set", os.fspath(mnt), "compression", algorithm], capture=True)
        run(["btrfs", "filesystem", "sync", os.fspath(mnt)], capture=True)
        if not shrink:
            return image.stat().st_size
        text = output(["btrfs", "inspect-internal", "min-dev-size", os.fspath(mnt)])
        m = re.match(r"\s*(\d+)", text)
        if m is None:
            raise MkosiError(f"cannot parse the output of btrfs inspect-internal min-dev-size: {text.strip()}")
        current = image.stat().st_size
        target = max(BTRFS_MIN_RESIZE, (int(m.group(1)) + MiB - 1) // MiB * MiB)
        while target < current:
            # min-dev-size is an estimate; when the chunks do not fit, try a little larger.
            if run(["btrfs", "filesystem", "resize", str(target), os.fspath(mnt)], check=False,
                   capture=True).returncode == 0:
                break
            target += 16 * MiB
        else:
            return current
    os.truncate(image, target)
    return target


def minimize_btrfs(
    src_dir: Path,
    image: Path,
    label: str,
    uuid: str | None = None,
    *,
    size: int | None = None,
    seed: SeedLike | None = None,
) -> int:
    """Create a btrfs image cut to its minimal size (mkfs.btrfs --shrink). Returns the size."""
    start = size if size is not None else estimate_size(src_dir, "btrfs")
    return make_btrfs(src_dir, image, start, label, uuid, shrink=True, seed=seed)


# ---------------------------------------------------------------------------------------------
# squashfs

SQUASHFS_COMPRESSORS = ("gzip", "lzo", "lz4", "xz", "zstd", "lzma")


def make_squashfs(
    src_dir: Path,
    image: Path,
    compression: str | None = "zstd",
    mksquashfs_tool: str = "mksquashfs",
) -> None:
    """Create a squashfs image of `src_dir` with mksquashfs, keeping ownership and xattrs.

    `compression` is one of gzip, lzo, lz4, xz, zstd, lzma; None or "none" stores everything
    uncompressed. mksquashfs itself honours SOURCE_DATE_EPOCH for its timestamps.
    """
    argv: list[str] = [mksquashfs_tool, os.fspath(src_dir), os.fspath(image), "-noappend", "-no-progress"]
    if compression is None or compression in ("none", "no", "false"):
        argv += ["-noI", "-noId", "-noD", "-noF", "-noX"]
    elif compression in SQUASHFS_COMPRESSORS:
        argv += ["-comp", compression]
    else:
        raise MkosiError(
            f"unknown squashfs compression '{compression}'", hint="one of " + ", ".join(SQUASHFS_COMPRESSORS)
        )
    image.unlink(missing_ok=True)
    with log.step(f"Creating squashfs file system {image.name}"):
        run(argv, capture=True)


# ---------------------------------------------------------------------------------------------
# erofs

# CompressFs= values -> mkfs.erofs compressors ("yes" picks lz4hc, fast to read and well supported).
EROFS_COMPRESSORS = {"yes": "lz4hc", "lz4": "lz4", "lz4hc": "lz4hc", "xz": "lzma", "lzma": "lzma",
                     "zlib": "deflate", "gzip": "deflate", "deflate": "deflate", "zstd": "zstd"}


def erofs_argv(src_dir: Path, image: Path, compression: str | None = None, seed: SeedLike | None = None,
               epoch: int | None = None) -> list[str]:
    """The mkfs.erofs command line for a tree; with an epoch every timestamp is that epoch, with a seed
    (or SOURCE_DATE_EPOCH) the file system UUID is derived from it."""
    argv: list[str] = ["mkfs.erofs", "--quiet"]
    if compression is not None and compression not in ("no", "none", "false"):
        if compression not in EROFS_COMPRESSORS:
            raise MkosiError(f"unknown erofs compression '{compression}'",
                             hint="one of " + ", ".join(sorted(EROFS_COMPRESSORS)))
        argv.append(f"-z{EROFS_COMPRESSORS[compression]}")
    if epoch is None:
        epoch = source_date_epoch()
    if epoch is not None:
        argv.append(f"-T{epoch}")
    if resolve_seed(seed) is not None:
        argv.append(f"-U{make_uuid(seed, 'erofs', image.name)}")
    return [*argv, os.fspath(image), os.fspath(src_dir)]


def make_erofs(src_dir: Path, image: Path, compression: str | None = None, seed: SeedLike | None = None,
               epoch: int | None = None) -> None:
    """Create an erofs image of `src_dir` (read-only, ownership and extended attributes kept)."""
    image.unlink(missing_ok=True)
    with log.step(f"Creating erofs file system {image.name}"):
        run(erofs_argv(src_dir, image, compression, seed, epoch), capture=True)


# ---------------------------------------------------------------------------------------------
# vfat


def make_vfat(
    image: Path,
    size: int,
    label: str = "ESP",
    volume_id: str | None = None,
    *,
    seed: SeedLike | None = None,
) -> None:
    """Create an empty FAT file system image of `size` bytes (FAT32 from 64 MiB up).

    `volume_id` is 8 hex digits; with a seed or SOURCE_DATE_EPOCH it is derived and mkfs.vfat
    runs with --invariant so that the image is reproducible.
    """
    label = _fit_label(label.upper(), VFAT_LABEL_MAX, "vfat")
    reproducible = resolve_seed(seed) is not None
    if volume_id is None and reproducible:
        volume_id = make_uuid(seed, "vfat-volume-id", label).hex[:8]
    argv: list[str] = ["mkfs.vfat", "-n", label]
    if size >= 64 * MiB:
        argv += ["-F", "32"]
    if reproducible:
        # Must come before -i, it would reset the volume id otherwise.
        argv.append("--invariant")
    if volume_id is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{1,8}", volume_id):
            raise MkosiError(f"vfat volume id '{volume_id}' is not up to 8 hex digits")
        argv += ["-i", volume_id]
    _create_sparse(image, size)
    with log.step(f"Creating vfat file system {image.name}"):
        run([*argv, os.fspath(image)], capture=True)


def populate_vfat(image: Path, src_dir: Path, *, what: str = "ESP", setting: str = "ESPSize=") -> None:
    """Copy the contents of `src_dir` into the root of a FAT image with mcopy (no mounting); what is
    there already stays (directories are merged). `what` and `setting` name the partition and its size
    setting in the error of a full file system.

    mcopy -m keeps the times of files and directories, and takes SOURCE_DATE_EPOCH for what it makes
    itself; with SOURCE_DATE_EPOCH, times of `src_dir` later than it (the directories mkosi made for the
    ESP during the build) are clamped to it first, so that the FAT directory entries are reproducible.
    """
    names = sorted(os.listdir(src_dir))
    if not names:
        return
    epoch = source_date_epoch()
    if epoch is not None:
        clamp_times(src_dir, epoch)
    env = {"MTOOLS_SKIP_CHECK": "1"}
    with log.step(f"Populating {image.name}"):
        try:
            run(
                [
                    "mcopy",
                    "-i",
                    os.fspath(image),
                    "-s",
                    "-p",
                    "-Q",
                    "-m",
                    *[os.fspath(src_dir / n) for n in names],
                    "::",
                ],
                env=env,
                capture=True,
            )
        except CommandError as e:
            if "disk full" in e.stderr.lower() or "no free" in e.stderr.lower():
                raise MkosiError(str(e), hint=f"the {what} is too small for its contents; give it a larger size "
                                              f"with {setting}")
            raise


# ---------------------------------------------------------------------------------------------
# swap


def make_swap(
    image: Path,
    size: int,
    label: str = "swap",
    uuid: str | None = None,
    *,
    seed: SeedLike | None = None,
) -> None:
    """Create a swap area image of `size` bytes with mkswap."""
    if uuid is None and resolve_seed(seed) is not None:
        uuid = str(make_uuid(seed, "swap-uuid", label))
    _create_sparse(image, size)
    os.chmod(image, 0o600)
    argv: list[str] = ["mkswap", "-L", label]
    if uuid:
        argv += ["-U", uuid]
    with log.step(f"Creating swap area {image.name}"):
        run([*argv, os.fspath(image)], capture=True)


# ---------------------------------------------------------------------------------------------

FILESYSTEMS = ("ext4", "xfs", "btrfs", "squashfs", "vfat", "swap")
