"""`mkosi build --check-reproducible`: build twice in separate workspaces and compare the results.

Both builds use the same SourceDateEpoch= and Seed= (fixed for the two builds when the configuration
leaves them open) and the same package cache, so the second build installs the very same package
versions. When every artifact is byte-identical the check reports "reproducible" with the output's
SHA-256 and moves the first build's artifacts into place. Otherwise it lists the differing artifacts
and, from the two image trees, the first differing files with the kind of difference; diffoscope's
report of the differing artifacts is added when diffoscope is installed. A failed check exits non-zero
and leaves the previous outputs alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.build import (
    build_image,
    check_outputs,
    drop_caches,
    move_extra_outputs,
    move_into_place,
    prepare_to_build,
    remove_cleanup_paths,
    run_sync_scripts,
    source_date_epoch_environment,
    workspace,
)
from mkosi.cache import package_cache_dir
from mkosi.config.enums import CacheOnly
from mkosi.config.settings import Args, Config
from mkosi.errors import MkosiError
from mkosi.preflight import output_lock, recover_interrupted_move
from mkosi.run import find_tool

# Artifacts that can never be equal between two builds, and are therefore not compared.
NOT_COMPARED = ("SHA256SUMS.gpg",)  # a signature carries its own creation time
MAX_LISTED = 20
DIFFOSCOPE_LINES = 80


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str                  # "file", "dir", "symlink", "char", "block", "fifo", "socket"
    mode: int
    uid: int
    gid: int
    mtime: int                 # nanoseconds
    size: int
    content: str               # sha256 for files, target for symlinks, device number for devices
    xattrs: tuple[tuple[str, bytes], ...]


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISREG, "file"), (stat.S_ISDIR, "dir"), (stat.S_ISLNK, "symlink"),
                       (stat.S_ISCHR, "char"), (stat.S_ISBLK, "block"), (stat.S_ISFIFO, "fifo")):
        if test(mode):
            return name
    return "socket"


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(4 * 1024 * 1024), b""):
            h.update(chunk)
    return h.hexdigest()


def _xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    values = []
    for name in sorted(names):
        try:
            values.append((name, os.getxattr(path, name, follow_symlinks=False)))
        except OSError:
            continue
    return tuple(values)


def entry(path: str) -> Entry:
    st = os.lstat(path)
    kind = _kind(st.st_mode)
    content = ""
    if kind == "file":
        content = file_sha256(path)
    elif kind == "symlink":
        content = os.readlink(path)
    elif kind in ("char", "block"):
        content = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
    return Entry(kind=kind, mode=stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid, mtime=st.st_mtime_ns,
                 size=st.st_size if kind == "file" else 0, content=content, xattrs=_xattrs(path))


def tree_entries(root: Path) -> dict[str, Entry]:
    """Every path below root ("/" for root itself) with what a reproducible tree must keep equal."""
    entries = {"/": entry(str(root))}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            entries["/" + os.path.relpath(full, root)] = entry(full)
    return entries


def tree_digest(entries: dict[str, Entry]) -> str:
    """One SHA-256 for a whole tree: over its sorted paths and their metadata and content."""
    h = hashlib.sha256()
    for path in sorted(entries):
        e = entries[path]
        h.update(repr((path, e.kind, e.mode, e.uid, e.gid, e.mtime, e.size, e.content, e.xattrs)).encode())
    return h.hexdigest()


def _when(ns: int) -> str:
    return str(ns // 1_000_000_000) if ns % 1_000_000_000 == 0 else f"{ns / 1e9:.9f}"


def describe(a: Entry, b: Entry) -> str:
    """The kinds of difference between two entries of the same path, most telling first."""
    if a.kind != b.kind:
        return f"type {a.kind} vs {b.kind}"
    why = []
    if a.content != b.content:
        if a.kind == "file":
            why.append("content" + (f" (size {a.size} vs {b.size})" if a.size != b.size else ""))
        elif a.kind == "symlink":
            why.append(f"symlink target {a.content} vs {b.content}")
        else:
            why.append(f"device {a.content} vs {b.content}")
    if a.mode != b.mode:
        why.append(f"mode {a.mode:04o} vs {b.mode:04o}")
    if (a.uid, a.gid) != (b.uid, b.gid):
        why.append(f"owner {a.uid}:{a.gid} vs {b.uid}:{b.gid}")
    if a.xattrs != b.xattrs:
        why.append("extended attributes")
    if a.mtime != b.mtime:
        why.append(f"mtime {_when(a.mtime)} vs {_when(b.mtime)}")
    return ", ".join(why)


def diff_trees(a: dict[str, Entry], b: dict[str, Entry]) -> list[tuple[str, str]]:
    """(path, kind of difference) for every path that differs between two trees, sorted by path."""
    result = []
    for path in sorted(set(a) | set(b)):
        if path not in b:
            result.append((path, "only in the first build"))
        elif path not in a:
            result.append((path, "only in the second build"))
        elif a[path] != b[path]:
            result.append((path, describe(a[path], b[path])))
    return result


def first_difference(a: Path, b: Path) -> Optional[int]:
    """The offset of the first differing byte of two files (their common length if one is a prefix)."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        offset = 0
        while True:
            ca, cb = fa.read(1 << 20), fb.read(1 << 20)
            if ca != cb:
                for i, (x, y) in enumerate(zip(ca, cb)):
                    if x != y:
                        return offset + i
                return offset + min(len(ca), len(cb))
            if not ca:
                return None
            offset += len(ca)


@dataclasses.dataclass
class Comparison:
    identical: list[tuple[str, str]] = dataclasses.field(default_factory=list)   # (name, sha256)
    differing: list[str] = dataclasses.field(default_factory=list)
    details: list[str] = dataclasses.field(default_factory=list)


def artifact_digest(path: Path) -> str:
    return tree_digest(tree_entries(path)) if path.is_dir() and not path.is_symlink() else file_sha256(path)


def compare_artifacts(first: list[Path], second: list[Path]) -> Comparison:
    result = Comparison()
    by_name = {p.name: p for p in second}
    for a in first:
        if a.name in NOT_COMPARED:
            continue
        b = by_name.get(a.name)
        if b is None:
            result.differing.append(a.name)
            result.details.append(f"{a.name}: only made by the first build")
            continue
        da, db = artifact_digest(a), artifact_digest(b)
        if da == db:
            result.identical.append((a.name, da))
            continue
        result.differing.append(a.name)
        if a.is_file() and b.is_file():
            off = first_difference(a, b)
            result.details.append(f"{a.name}: sha256 {da} vs {db}; first differing byte at offset {off}")
        else:
            result.details.append(f"{a.name}: tree digest {da} vs {db}")
    for name in sorted(set(by_name) - {p.name for p in first} - set(NOT_COMPARED)):
        result.differing.append(name)
        result.details.append(f"{name}: only made by the second build")
    return result


def listing(differences: list[tuple[str, str]], limit: int = MAX_LISTED) -> list[str]:
    lines = [f"  {path}: {why}" for path, why in differences[:limit]]
    if len(differences) > limit:
        lines.append(f"  ... and {len(differences) - limit} more")
    return lines


def run_diffoscope(a: Path, b: Path) -> list[str]:
    """diffoscope's text report on two artifacts (shortened), or [] when it is not installed."""
    if find_tool("diffoscope") is None:
        return []
    try:
        proc = subprocess.run(["diffoscope", "--no-progress", "--text", "-", "--max-report-size", "2000000",
                               os.fspath(a), os.fspath(b)], capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return ["  (diffoscope took longer than 15 minutes and was stopped)"]
    lines = proc.stdout.splitlines()
    out = [f"  {line}" for line in lines[:DIFFOSCOPE_LINES]]
    if len(lines) > DIFFOSCOPE_LINES:
        out.append(f"  ... ({len(lines) - DIFFOSCOPE_LINES} more lines of diffoscope output)")
    return out


def fixed_inputs(args: Args, config: Config) -> tuple[Args, Config]:
    """The invocation and configuration both builds use: epoch and seed pinned, no incremental cache
    reused (it would hide differences of the installation itself)."""
    changes: dict[str, object] = {}
    if config.source_date_epoch is None:
        changes["source_date_epoch"] = int(time.time())
        log.info(f"SourceDateEpoch= is not set; both builds use {changes['source_date_epoch']}")
    if config.seed is None or config.seed == "random":
        changes["seed"] = str(uuid.uuid4())
        log.info(f"Seed= is not set; both builds use {changes['seed']}")
    return dataclasses.replace(args, incremental=False), dataclasses.replace(config, **changes)  # type: ignore[arg-type]


def second_build_config(config: Config) -> Config:
    """The second build uses the repository metadata the first one synced: a mirror that publishes
    between the two builds must not make them differ. Without a package cache the metadata is not
    kept, and the second build syncs again."""
    if package_cache_dir(config) is None or config.cache_only in (CacheOnly.metadata, CacheOnly.always):
        return config
    return dataclasses.replace(config, cache_only=CacheOnly.metadata)


def image_root(ws: Path, artifacts: list[Path], config: Config) -> Optional[Path]:
    """The image tree a build left behind: the workspace root, or a directory output itself."""
    if (ws / "root").is_dir():
        return ws / "root"
    assert config.output is not None
    return next((a for a in artifacts if a.name == config.output.name and a.is_dir()), None)


def check_reproducible(args: Args, config: Config) -> bool:
    """Build twice and compare; True when reproducible (the outputs are then in place), an error when not."""
    if os.getuid() != 0:
        raise MkosiError("'mkosi build' must be run as root", hint="run it with sudo")
    args, config = fixed_inputs(args, config)
    assert config.output_dir is not None
    with output_lock(config.output_dir) as own, source_date_epoch_environment(config):
        if own:
            recover_interrupted_move(config.output_dir)
        drop_caches(args, config)
        run_sync_scripts(args, config)
        check_outputs(args, config)
        prepare_to_build(config)
        return _check_locked(args, config)


def _check_locked(args: Args, config: Config) -> bool:
    cleanup: list[Path] = []
    extra: list[Path] = []
    try:
        with workspace(config) as ws1, workspace(config) as ws2:
            start = time.monotonic()
            with log.step("Reproducibility check: first build"):
                first_made = build_image(args, config, ws1, cleanup, extra)
                first = [p for _, p in first_made]
            middle = time.monotonic()
            with log.step("Reproducibility check: second build"):
                second = [p for _, p in build_image(args, second_build_config(config), ws2, cleanup)]
            end = time.monotonic()
            with log.step("Comparing the two builds"):
                result = compare_artifacts(first, second)
                report = [f"builds took {middle - start:.0f}s and {end - middle:.0f}s"]
                if result.differing:
                    report += result.details
                    r1, r2 = image_root(ws1, first, config), image_root(ws2, second, config)
                    if r1 is not None and r2 is not None:
                        diffs = diff_trees(tree_entries(r1), tree_entries(r2))
                        if diffs:
                            report.append(f"{len(diffs)} paths of the image trees differ:")
                            report += listing(diffs)
                        else:
                            report.append("the image trees are identical: the difference comes from writing "
                                          "the output")
                    first_by_name = {p.name: p for p in first}
                    second_by_name = {p.name: p for p in second}
                    for name in result.differing:
                        if name in first_by_name and name in second_by_name:
                            report += run_diffoscope(first_by_name[name], second_by_name[name])
            compared = time.monotonic()
            report.append(f"comparing took {compared - end:.0f}s")
            if result.differing:
                print("not reproducible")
                for line in report:
                    print(line)
                sys.stdout.flush()
                raise MkosiError(f"the image is not reproducible: {', '.join(result.differing)} differ between "
                                 "two builds", hint="see the list of differing files above")
            assert config.output is not None
            digest = dict(result.identical).get(config.output.name, "")
            print(f"reproducible: {config.output.name} sha256 {digest}")
            for line in report:
                print(line)
            sys.stdout.flush()
            with log.step("Moving the results into place"):
                move_into_place(config, first_made)
                move_extra_outputs(config, extra)
    finally:
        remove_cleanup_paths(cleanup)
    return True
