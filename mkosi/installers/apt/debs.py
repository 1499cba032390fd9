""".deb archives and dpkg's database: control stanzas, status files, relations, dependency closures."""
from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from mkosi.errors import MkosiError
from mkosi.run import run


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    architecture: str
    installed_size: int  # bytes
    source: str
    source_version: str
    status: str = "installed"


def parse_deb822(text: str) -> list[dict[str, str]]:
    """Parse RFC822-style stanzas (dpkg status, control files, *.sources). Continuation lines are kept."""
    stanzas: list[dict[str, str]] = []
    current: dict[str, str] = {}
    key: Optional[str] = None
    for line in text.splitlines():
        if not line.strip():
            if current:
                stanzas.append(current)
            current, key = {}, None
        elif line[0] in " \t":
            if key is not None:
                current[key] += "\n" + line.strip()
        elif line.startswith("#"):
            continue
        elif ":" in line:
            k, _, v = line.partition(":")
            key = k.strip()
            current[key] = v.strip()
    if current:
        stanzas.append(current)
    return stanzas


def parse_status(text: str) -> list[PackageInfo]:
    """Packages in a dpkg status file that are (at least partially) installed."""
    result = []
    for st in parse_deb822(text):
        name = st.get("Package")
        status = st.get("Status", "").split()
        if not name or len(status) != 3 or status[2] in ("not-installed", "config-files"):
            continue
        version = st.get("Version", "")
        source, source_version = name, version
        if st.get("Source"):
            m = re.fullmatch(r"(\S+)(?:\s+\((\S+)\))?", st["Source"].strip())
            if m:
                source = m.group(1)
                source_version = m.group(2) or version
        try:
            size = int(st.get("Installed-Size", "0")) * 1024
        except ValueError:
            size = 0
        result.append(PackageInfo(name=name, version=version, architecture=st.get("Architecture", ""),
                                  installed_size=size, source=source, source_version=source_version,
                                  status=status[2]))
    return result


def installed_packages(root: Path) -> list[PackageInfo]:
    status = root / "var/lib/dpkg/status"
    if not status.exists():
        return []
    return parse_status(status.read_text(errors="replace"))


def parse_relations(value: str) -> list[list[str]]:
    """'a (>= 1) | b:any, c [amd64]' -> [['a', 'b'], ['c']] (names only: apt already chose versions)."""
    groups = []
    for group in value.split(","):
        alts = []
        for alt in group.split("|"):
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9.+-]*)", alt)
            if m:
                alts.append(m.group(1))
        if alts:
            groups.append(alts)
    return groups


def read_control(deb: Path) -> dict[str, str]:
    """The control stanza of a .deb, read straight from its ar archive (no process per package)."""
    return read_control_archive(deb)[0]


def _control_tar(deb: Path) -> bytes:
    with deb.open("rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise MkosiError(f"{deb} is not a Debian package")
        while True:
            header = f.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            if not name.startswith("control.tar"):
                f.seek(size + (size & 1), os.SEEK_CUR)
                continue
            data = f.read(size)
            if name == "control.tar.xz":
                return lzma.decompress(data)
            if name == "control.tar.gz":
                return gzip.decompress(data)
            if name == "control.tar":
                return data
            # zstd (Ubuntu) has no decompressor in the standard library: let dpkg-deb do it.
            return bytes(run(["dpkg-deb", "--ctrl-tarfile", deb], capture=True, text=False).stdout)
    raise MkosiError(f"{deb} has no control archive")


def read_control_archive(deb: Path) -> tuple[dict[str, str], set[str]]:
    """The control stanza of a .deb and the names of the other members of its control archive."""
    control: Optional[dict[str, str]] = None
    members = set()
    with tarfile.open(fileobj=io.BytesIO(_control_tar(deb))) as tar:
        for info in tar.getmembers():
            name = info.name.removeprefix("./")
            members.add(name)
            if name == "control":
                fobj = tar.extractfile(info)
                if fobj is not None:
                    control = parse_deb822(fobj.read().decode("utf-8", "replace"))[0]
    if control is None:
        raise MkosiError(f"{deb} has no control file")
    return control, members


def data_member(deb: Path) -> str:
    with deb.open("rb") as f:
        f.seek(8)
        while True:
            header = f.read(60)
            if len(header) < 60:
                return ""
            name = header[:16].decode("ascii", "replace").strip().rstrip("/")
            if name.startswith("data.tar"):
                return name
            size = int(header[48:58].decode("ascii").strip())
            f.seek(size + (size & 1), os.SEEK_CUR)


def essential_closure(controls: dict[str, dict[str, str]]) -> set[str]:
    """Names of the Essential: yes packages plus everything they (pre-)depend on, within the given set."""
    essential = [c["Package"] for c in controls.values() if is_essential(c)]
    return dependency_closure(controls, essential)


def is_essential(control: dict[str, str]) -> bool:
    return control.get("Essential", "no").lower() == "yes"


Archives = dict[str, tuple[dict[str, str], set[str]]]  # .deb path -> (control stanza, control members)


def dependency_closure(controls: dict[str, dict[str, str]], roots: Iterable[str]) -> set[str]:
    """The given packages plus everything they (pre-)depend on, within the given set of packages."""
    by_name = {c["Package"]: c for c in controls.values()}
    providers: dict[str, list[str]] = {}
    for c in controls.values():
        for group in parse_relations(c.get("Provides", "")):
            providers.setdefault(group[0], []).append(c["Package"])

    todo = [n for n in roots if n in by_name]
    closure = set(todo)
    while todo:
        c = by_name[todo.pop()]
        for group in parse_relations(c.get("Pre-Depends", "")) + parse_relations(c.get("Depends", "")):
            # Take an alternative apt selected: a real package first, then a provider.
            candidates = [a for a in group if a in by_name]
            if not candidates:
                candidates = [p for a in group for p in providers.get(a, [])]
            if candidates and not any(x in closure for x in candidates):
                closure.add(candidates[0])
                todo.append(candidates[0])
    return closure
