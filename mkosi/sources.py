"""Which files of the source tree go into the development image (SourceFileTransfer=), and copying them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mkosi.config.enums import SourceFileTransfer
from mkosi.config.settings import Config
from mkosi.output.artifacts import incremental_cache_paths, paths
from mkosi.run import run

SOURCE_EXCLUDES = ("mkosi.builddir", "mkosi.cache", "mkosi.pkgcache", "mkosi.output", "mkosi.workspace",
                   "mkosi.installdir", "mkosi.includedir")


def default_transfer(src: Path) -> SourceFileTransfer:
    return SourceFileTransfer.copy_git_cached if (src / ".git").exists() else SourceFileTransfer.copy_all


def _git_files(src: Path, *which: str) -> list[str]:
    out = run(["git", "-c", f"safe.directory={src}", "-C", src, "ls-files", "-z", *which],
              capture=True).stdout
    return [f for f in str(out).split("\0") if f]


def source_excludes(config: Config, src: Path) -> set[str]:
    """Top-level names of the source tree that never go into an image: mkosi's own directories, and
    this configuration's outputs and caches when they are written into the source tree itself."""
    names = set(SOURCE_EXCLUDES)
    for p in [*paths(config), *incremental_cache_paths(config), config.workspace_dir]:
        if p is not None and p.parent.absolute() == src.absolute():
            names.add(p.name)
    if config.output is not None and config.output.parent.absolute() == src.absolute():
        names.add(f".{config.output.name}.tmp")
    return names


def source_files(src: Path, mode: SourceFileTransfer, excludes: set[str]) -> list[str]:
    """The relative paths that a transfer mode takes from the source tree (directories included for
    copy-all, which copies whole trees)."""
    if mode in (SourceFileTransfer.copy_all, SourceFileTransfer.mount):
        found = []
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in excludes]
                filenames = [f for f in filenames if f not in excludes]
            found += [os.path.normpath(os.path.join(rel, n)) for n in [*dirnames, *filenames]]
        return sorted(found)
    files: list[str] = []
    if mode in (SourceFileTransfer.copy_git_cached, SourceFileTransfer.copy_git_more):
        files += _git_files(src, "--cached")
    if mode == SourceFileTransfer.copy_git_others:
        files += _git_files(src, "--others", "--exclude-standard")
    files = [f for f in files if f.split("/", 1)[0] not in excludes]
    return [f for f in files if (src / f).exists() or (src / f).is_symlink()]  # skip deleted-but-indexed


def copy_sources(src: Path, dst: Path, mode: SourceFileTransfer, resolve_symlinks: bool,
                 excludes: set[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    if mode == SourceFileTransfer.copy_all:
        for entry in sorted(src.iterdir()):
            if entry.name in excludes:
                continue
            flags = ["--recursive", "--dereference" if resolve_symlinks else "--no-dereference",
                     "--preserve=mode,timestamps,links", "--reflink=auto"]
            run(["cp", *flags, entry, dst / entry.name])
        return
    for rel in source_files(src, mode, excludes):
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink() and not resolve_symlinks:
            os.symlink(os.readlink(s), d)
        else:
            shutil.copy2(s, d)
    if mode == SourceFileTransfer.copy_git_more:
        run(["cp", "--recursive", "--no-dereference", "--preserve=mode,timestamps,links", src / ".git", dst / ".git"])
