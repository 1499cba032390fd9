"""PackageDirectories= and VolatilePackageDirectories=: package files offered to the package manager as
one local repository.

At the start of a build the package files (.deb, .rpm, .pkg.tar.*) found in those directories are put
(hard links where possible, copies otherwise) into one flat directory of the workspace, the build's
package directory. Scripts see it as $PACKAGEDIR and may add packages of their own (a build script's
packages are then available to the final image). Each time the distribution installs packages, the
files of its kind are indexed there with the usual tool and the directory is configured as a repository
that needs no signatures and is preferred over the distribution's:

- apt: a flat repository (`Packages` from dpkg-scanpackages or apt-ftparchive, and a small unsigned
  `Release` file whose Origin is pinned to priority 1100), `deb [trusted=yes] file:DIR ./`;
- dnf and zypper: createrepo_c metadata and a repository with gpgcheck=0 and priority 1 (the lowest
  number is the strongest preference for both);
- pacman: a repository database made by repo-add, listed before the distribution's, SigLevel Never.

Only the build's own configuration of the package manager names the repository: nothing of it is
written into the image.
"""

from __future__ import annotations

import email.utils
import hashlib
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import find_tool, missing_tool, require_tool, run
from mkosi.sandbox import Sandbox

if TYPE_CHECKING:
    from mkosi.context import Context

REPO_NAME = "mkosi-packages"
_HOST = Sandbox()
# The Origin of the apt repository's Release file, which the pin names.
APT_ORIGIN = "mkosi"
APT_PIN_PRIORITY = 1100
RPM_PRIORITY = 1

SUFFIXES: dict[str, tuple[str, ...]] = {
    "deb": (".deb",),
    "rpm": (".rpm",),
    "pacman": (".pkg.tar", ".pkg.tar.zst", ".pkg.tar.xz", ".pkg.tar.gz", ".pkg.tar.bz2", ".pkg.tar.lz4",
               ".pkg.tar.lzo", ".pkg.tar.lrz", ".pkg.tar.Z"),
}
ALL_SUFFIXES = tuple(s for suffixes in SUFFIXES.values() for s in suffixes)


def package_kind(path: Path) -> Optional[str]:
    """'deb', 'rpm' or 'pacman' for a package file, None for anything else (source rpms included)."""
    name = path.name
    if name.endswith(".src.rpm"):
        return None
    for kind, suffixes in SUFFIXES.items():
        if name.endswith(suffixes):
            return kind
    return None


def package_files(directory: Path, kind: Optional[str] = None) -> list[Path]:
    """The package files below a directory (of one kind, or of any), sorted."""
    if not directory.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames.sort()
        for name in filenames:
            p = Path(dirpath) / name
            k = package_kind(p)
            if k is not None and (kind is None or k == kind) and p.is_file():
                found.append(p)
    return sorted(found)


def digest_packages(h: hashlib._Hash, directories: Iterable[Path]) -> None:
    """Feed the names and contents of the package files of these directories to h (a cache key)."""
    for directory in directories:
        h.update(b"<package-directory>")
        for p in package_files(directory):
            h.update(str(p.relative_to(directory)).encode() + b"\0")
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)


def _same_file(a: Path, b: Path) -> bool:
    try:
        sa, sb = a.stat(), b.stat()
    except OSError:
        return False
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def gather(directories: Sequence[Path], dest: Path) -> list[Path]:
    """Put the package files of `directories` into `dest` (flat); returns what is there now. A later
    directory's file of the same name replaces an earlier one's."""
    dest.mkdir(parents=True, exist_ok=True)
    for directory in directories:
        if not directory.is_dir():
            raise MkosiError(f"package directory {directory} does not exist or is not a directory",
                             hint="fix PackageDirectories= or VolatilePackageDirectories=")
        for src in package_files(directory):
            target = dest / src.name
            if _same_file(src, target):
                continue
            if target.exists():
                log.warn(f"{src.name} is in more than one package directory: using the one in {directory}")
                target.unlink()
            try:
                os.link(src, target)
            except OSError:
                shutil.copy2(src, target)
    return package_files(dest)


# ---------------------------------------------------------------- indexes

def _deb_indexer(sandbox: Sandbox) -> str:
    for tool in ("dpkg-scanpackages", "apt-ftparchive"):
        if find_tool(tool, sandbox) is not None:
            return tool
    raise missing_tool("dpkg-scanpackages", sandbox)   # names the package to install


def release_text(packages_index: bytes, date: float) -> str:
    """An unsigned Release file for a flat repository whose only index is `Packages`."""
    return (f"Origin: {APT_ORIGIN}\nLabel: {REPO_NAME}\nDate: {email.utils.formatdate(date, usegmt=True)}\n"
            f"MD5Sum:\n {hashlib.md5(packages_index).hexdigest()} {len(packages_index)} Packages\n"
            f"SHA256:\n {hashlib.sha256(packages_index).hexdigest()} {len(packages_index)} Packages\n")


def index_deb(repo: Path, sandbox: Sandbox = _HOST) -> None:
    """Write Packages and Release for the .deb files of repo (a flat repository)."""
    tool = _deb_indexer(sandbox)
    argv = ["dpkg-scanpackages", "--multiversion", "."] if tool == "dpkg-scanpackages" else ["apt-ftparchive",
                                                                                           "packages", "."]
    proc = run(argv, sandbox=sandbox, cwd=repo, capture=True, check=False)
    if proc.returncode != 0:
        raise MkosiError(f"{tool} could not index the packages in {repo}",
                         hint="\n".join(proc.stderr.strip().splitlines()[-8:]) or None)
    index = proc.stdout.encode()
    (repo / "Packages").write_bytes(index)
    # The newest package's time (never later than now): the same packages give the same Release file.
    newest = max((p.stat().st_mtime for p in package_files(repo, "deb")), default=0.0)
    (repo / "Release").write_text(release_text(index, min(newest, time.time())))


def index_rpm(repo: Path, sandbox: Sandbox = _HOST) -> None:
    require_tool("createrepo_c", sandbox)
    run(["createrepo_c", "--quiet", "--update", "--no-database", str(repo)], sandbox=sandbox, capture=True)


def index_pacman(repo: Path, sandbox: Sandbox = _HOST) -> None:
    require_tool("repo-add", sandbox)
    # A new database each time: entries of packages that are gone must not stay.
    for p in repo.glob(f"{REPO_NAME}.*"):
        if p.name.startswith((f"{REPO_NAME}.db", f"{REPO_NAME}.files")):
            p.unlink()
    pkgs = [p.name for p in package_files(repo, "pacman")]
    run(["repo-add", "--quiet", f"{REPO_NAME}.db.tar.gz", *pkgs], sandbox=sandbox, cwd=repo, capture=True)


INDEXERS = {"deb": index_deb, "rpm": index_rpm, "pacman": index_pacman}


def for_build(ctx: Context, kind: str) -> Optional[Path]:
    """The indexed local repository of this build for a package manager of this kind, or None."""
    return prepare(ctx.package_dir if ctx.package_dir.is_dir() else None, kind, ctx.sandbox)


def prepare(repo: Optional[Path], kind: str, sandbox: Sandbox = _HOST) -> Optional[Path]:
    """Index the packages of this kind in the build's package directory; the directory, or None when
    it has none of them (then no repository is configured)."""
    if repo is None or not package_files(repo, kind):
        return None
    with log.step(f"Indexing the local packages in {repo}"):
        INDEXERS[kind](repo, sandbox)
    return repo.absolute()


# ---------------------------------------------------------------- repository definitions

def apt_source_line(repo: Path) -> str:
    return f"deb [trusted=yes] file:{repo.absolute()} ./"


def apt_preferences_text() -> str:
    return (f"# Written by mkosi: the local packages (PackageDirectories=) win.\n"
            f"Package: *\nPin: release o={APT_ORIGIN}\nPin-Priority: {APT_PIN_PRIORITY}\n")


def pacman_section(repo: Path) -> list[str]:
    return [f"[{REPO_NAME}]", "SigLevel = Never", f"Server = file://{repo.absolute()}"]
