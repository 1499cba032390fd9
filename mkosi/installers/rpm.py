"""What the RPM family shares, whichever front end (dnf, zypper) drives the installation.

The rpm database. Distributions keep it in one of two places: /usr/lib/sysimage/rpm (Fedora
since 36, openSUSE, CentOS Stream 10 and its rebuilds) or the classic /var/lib/rpm (EL 9 and
older, Mageia, OpenMandriva, Photon). The host's rpm library must write it where the image's own
rpm will look for it, and Debian's rpm defaults to ~/.rpmdb (it is not the host's package manager).
So every rpm, dnf and zypper run gets HOME pointed at a private directory in the workspace whose
.rpmmacros sets %_dbpath (and %_excludedocs for WithDocs=no): nothing of the host's macros or of
root's home directory is read or written. For the sysimage layout, /var/lib/rpm is created as a
symlink to it before anything is installed, like the distributions themselves ship it.

The manifest is read back with `rpm --root ROOT --dbpath DB -qa --queryformat ...`.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from mkosi import log
from mkosi.installers.base import PackageInfo
from mkosi.run import output

if TYPE_CHECKING:
    from mkosi.installers.base import PackageInfo

SYSIMAGE_RPMDB = "/usr/lib/sysimage/rpm"
LEGACY_RPMDB = "/var/lib/rpm"

# One line per package; tabs cannot occur in any of these fields.
QUERYFORMAT = r"%{NAME}\t%{EPOCH}\t%{VERSION}\t%{RELEASE}\t%{ARCH}\t%{SIZE}\t%{SOURCERPM}\t%{LICENSE}\n"


@dataclasses.dataclass(frozen=True)
class RpmPackage:
    name: str
    epoch: Optional[str]
    version: str
    release: str
    architecture: str
    size: int
    source: Optional[str]
    source_version: Optional[str]
    license: Optional[str] = None

    @property
    def evr(self) -> str:
        """EPOCH:VERSION-RELEASE, without the epoch when the package has none."""
        vr = f"{self.version}-{self.release}"
        return f"{self.epoch}:{vr}" if self.epoch else vr


def split_source_rpm(srpm: str) -> tuple[Optional[str], Optional[str]]:
    """'systemd-254.5-2.fc39.src.rpm' -> ('systemd', '254.5-2.fc39'); (None, None) when there is none."""
    if not srpm or srpm == "(none)":
        return None, None
    base = re.sub(r"\.(no)?src\.rpm$", "", srpm)
    parts = base.rsplit("-", 2)
    if len(parts) != 3 or not all(parts):
        return base, None
    return parts[0], f"{parts[1]}-{parts[2]}"


def parse_query(text: str) -> list[RpmPackage]:
    """Parse the output of `rpm -qa --queryformat QUERYFORMAT`."""
    pkgs = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) not in (7, 8):
            continue
        name, epoch, version, release, arch, size, srpm = fields[:7]
        license = fields[7].strip() if len(fields) == 8 and fields[7] not in ("", "(none)") else None
        if name == "gpg-pubkey":  # imported signing keys show up as pseudo packages
            continue
        source, source_version = split_source_rpm(srpm)
        pkgs.append(RpmPackage(
            name=name,
            epoch=None if epoch in ("(none)", "", "0") else epoch,
            version=version,
            release=release,
            architecture="" if arch == "(none)" else arch,
            size=int(size) if size.isdigit() else 0,
            source=source,
            source_version=source_version,
            license=license,
        ))
    return sorted(pkgs, key=lambda p: (p.name, p.architecture))


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def find_rpmdb(root: Path) -> Optional[str]:
    """Where the root's rpm database is (as a path inside the root), or None if it has none."""
    for db in (SYSIMAGE_RPMDB, LEGACY_RPMDB):
        p = root / db.lstrip("/")
        if not p.is_symlink() and _nonempty_dir(p):
            return db
    return None


def prepare_rpmdb(root: Path, dbpath: str) -> None:
    """Create the database directory; with the sysimage layout, /var/lib/rpm points to it."""
    (root / dbpath.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if dbpath == SYSIMAGE_RPMDB:
        legacy = root / LEGACY_RPMDB.lstrip("/")
        if not legacy.exists() and not legacy.is_symlink():
            legacy.parent.mkdir(parents=True, exist_ok=True)
            legacy.symlink_to("../../usr/lib/sysimage/rpm")


def macros_text(dbpath: str, with_docs: bool = True, extra: Optional[dict[str, str]] = None) -> str:
    lines = ["# Written by mkosi for the rpm library of the host while it installs into an image.",
             f"%_dbpath {dbpath}"]
    if not with_docs:
        lines.append("%_excludedocs 1")
    for k, v in (extra or {}).items():
        lines.append(f"%{k} {v}")
    return "\n".join(lines) + "\n"


def write_macros_home(home: Path, dbpath: str, with_docs: bool = True,
                      extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """Make `home` a HOME whose .rpmmacros configures rpm; returns the environment to run tools with."""
    home.mkdir(parents=True, exist_ok=True)
    (home / ".rpmmacros").write_text(macros_text(dbpath, with_docs, extra))
    return {"HOME": str(home)}


def installed_packages(root: Path) -> list[RpmPackage]:
    db = find_rpmdb(root)
    if db is None:
        return []
    with tempfile.TemporaryDirectory(prefix="mkosi-rpm-home-") as home:
        out = output(["rpm", "--root", root, "--dbpath", db, "-qa", "--queryformat", QUERYFORMAT],
                     env={"HOME": home})
    return parse_query(out)


def _saved_list(workspace: Path) -> Path:
    return workspace / "rpm-packages.json"


def save_package_list(root: Path, workspace: Path) -> None:
    """Keep the package list for the manifest before CleanPackageMetadata= removes the database."""
    pkgs = installed_packages(root)
    _saved_list(workspace).write_text(json.dumps([dataclasses.asdict(p) for p in pkgs]))


def to_package_info(p: RpmPackage) -> PackageInfo:

    return PackageInfo(type="rpm", name=p.name, version=p.evr, architecture=p.architecture, size=p.size,
                       source=p.source, source_version=p.source_version, license=p.license)


def manifest_packages(root: Path, workspace: Path) -> list[PackageInfo]:
    """The root's packages from its database, or from the list saved before the database was removed."""
    if find_rpmdb(root) is None and _saved_list(workspace).exists():
        pkgs = [RpmPackage(**d) for d in json.loads(_saved_list(workspace).read_text())]
    else:
        pkgs = installed_packages(root)
    return [to_package_info(p) for p in pkgs]


def rpm_in_root(root: Path) -> bool:
    return any((root / p).exists() for p in ("usr/bin/rpm", "bin/rpm"))


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_paths(root: Path, paths: list[str]) -> None:
    for rel in paths:
        for match in sorted(root.glob(rel.lstrip("/"))):
            _rm(match)
            log.debug(f"removed /{match.relative_to(root)}")


def clean_rpmdb(root: Path, force: bool) -> None:
    """Drop the rpm database when the image has no rpm to use it (or when asked to)."""
    if force or not rpm_in_root(root):
        remove_paths(root, [SYSIMAGE_RPMDB, LEGACY_RPMDB])


def is_local_url(url: str) -> bool:
    return url.startswith(("file:/", "/"))


def dnf_arch(arch: str) -> str:
    """rpm's name for an architecture (the kernel's names otherwise match)."""
    return {"x86": "i686", "arm": "armv7hl"}.get(arch, arch)
