"""Install Debian and Ubuntu into a directory: host apt resolves and downloads, the image's dpkg installs.

How `install()` builds a root, and where the time goes:

1. The host's apt-get runs with every piece of its state redirected (APT_CONFIG points at a generated
   configuration): sources, keyring, lists and the archive cache live in the workspace and in
   `cache_dir`; nothing of the host's /etc/apt or /var/lib/apt is read or written. After
   `apt-get update`, ONE `apt-get install` run against an empty dpkg status resolves the whole package
   set and downloads it (apt fetches in parallel and reuses what the cache already holds). That run has
   `Debug::pkgDPkgPM` set: instead of running dpkg it prints the dpkg commands it would run, which
   names the exact .deb files and gives an order that respects Pre-Depends.
2. Every package whose file system tarball is xz-compressed gets a copy with that tarball stored
   uncompressed, made once (in parallel) and kept in the cache: essential packages have to be
   decompressed twice otherwise, and warm builds would decompress everything again.
3. A small scaffold is extracted with `dpkg-deb --fsys-tarfile | tar`: dpkg, sh and the tools dpkg
   insists on, with their libraries. Creating files is what costs most (each one is written again by
   dpkg later), so it is kept that small.
4. In a chroot of the root (/proc, /sys and /dev mounted, the package directories bind-mounted
   read-only, a policy-rc.d that forbids starting services, libeatmydata preloaded when the host has it
   and the image's libc can load it) the image's own dpkg unpacks the essential closure (the
   `Essential: yes` packages and what they depend on) in one run, forcing their mutual dependencies as
   every bootstrapper does. Packages without a preinst come first, so all essential tools are on disk
   by the time the first preinst runs; should one fail anyway, the traditional way (extract the rest
   with dpkg-deb, unpack again) is the fallback. Then it configures them all, and installs the other
   packages by replaying apt's plan. Maintainer scripts run as usual (systemd's postinst creates users).

What gets installed: the `Essential: yes` packages, the requested packages, and their Depends and
Pre-Depends, without Recommends. That is `mmdebstrap --variant=essential --include=...` rather than its
minbase variant: neither the `Priority: required` packages nor apt are added (ask for `apt` to get an
image that manages its own packages). The root gets a merged /usr (bin, sbin, lib and, on 64-bit ports
that need it, lib64 are symlinks into /usr, created before anything is extracted), so `usr-is-merged` is
preferred over `usrmerge`, which would pull in perl to convert what is converted already.

With a cache, apt's resolution is kept as well (see _plan()), so a warm build runs no apt resolution
while the lists do not change. `install_more()` and `remove()` replay apt's plan the same way, with apt
resolving against the root's own dpkg status.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import gzip
import hashlib
import io
import lzma
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Optional, Union

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.run import find_tool, output, require_tool, run

DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://security.debian.org/debian-security"
UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"
UBUNTU_PORTS_MIRROR = "http://ports.ubuntu.com/ubuntu-ports"
UBUNTU_SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"

# Where the archive signing keys live on the host, and which package ships them.
KEYRINGS: dict[str, tuple[str, str]] = {
    "debian": ("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring"),
    "ubuntu": ("/usr/share/keyrings/ubuntu-archive-keyring.gpg", "ubuntu-keyring"),
}

# Debian suites that have no -updates/-security companions.
_DEBIAN_ROLLING = frozenset({"sid", "unstable", "experimental", "rc-buggy"})
# Debian releases whose security suite is still called RELEASE/updates.
_DEBIAN_OLD_SECURITY = frozenset({"wheezy", "jessie", "stretch", "buster"})
# Releases that predate merged /usr: the root keeps separate /bin, /sbin and /lib.
_UNMERGED_RELEASES = frozenset({"wheezy", "jessie", "stretch", "trusty", "xenial", "bionic"})
# Ports whose dynamic loader lives in /lib64 (merged /usr needs a lib64 -> usr/lib64 symlink there).
_LIB64_ARCHITECTURES = frozenset({"amd64", "ppc64", "ppc64el", "mips64el", "loong64", "sparc64"})
# Ubuntu's main archive only carries these ports; the others are on ports.ubuntu.com.
_UBUNTU_PRIMARY_ARCHITECTURES = frozenset({"amd64", "i386"})

# Patterns for the dpkg configuration that keeps documentation out of the image (WithDocs=no).
DOCS_EXCLUDE = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
# Kept despite the above: copyright files (licences require them) and glibc's locale alias table.
DOCS_INCLUDE = ("/usr/share/doc/*/copyright", "/usr/share/locale/locale.alias")
DOCS_CONFIG_NAME = "mkosi-no-docs"

# The scaffold extracted with dpkg-deb before dpkg can run in the root: what dpkg needs to unpack
# packages (it checks for sh, rm, tar, diff, ldconfig and start-stop-daemon) with their libraries.
_SCAFFOLD_ROOTS = ("dpkg", "tar", "coreutils", "diffutils", "libc-bin", "dash")
# Never part of the scaffold: dpkg writes what belongs in the image itself.
_SCAFFOLD_EXCLUDES = ("./usr/share/doc", "./usr/share/man", "./usr/share/info", "./usr/share/locale",
                      "./usr/lib/*/gconv")

# Private directory in the root while packages are installed (package cache mount, eatmydata).
_HELPER_DIR = ".mkosi-apt"

_CHROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Options for every dpkg run: no fsync per file (the image is written out later anyway) and keep
# configuration files that are already in the root (e.g. from a skeleton tree) without asking.
_DPKG_OPTIONS = ("--force-unsafe-io", "--force-confdef", "--force-confold")

_POLICY_RC_D = "#!/bin/sh\n# Written by mkosi while packages are installed: start no services.\nexit 101\n"


@dataclass(frozen=True)
class AptConfig:
    root: Path
    distribution: str
    release: str
    mirror: str
    components: list[str]
    extra_repositories: list[str]
    architecture: str
    cache_dir: Optional[Path]
    workspace: Path
    with_docs: bool
    network: bool = True
    repository_directory: Optional[Path] = None


@dataclass(frozen=True)
class PackageInfo:
    name: str
    version: str
    architecture: str
    installed_size: int  # bytes
    source: str
    source_version: str
    status: str = "installed"


# ---------------------------------------------------------------------------------------------------
# Repositories


def default_mirror(distribution: str, architecture: str) -> str:
    if distribution == "ubuntu":
        return UBUNTU_MIRROR if architecture in _UBUNTU_PRIMARY_ARCHITECTURES else UBUNTU_PORTS_MIRROR
    return DEBIAN_MIRROR


def _check_distribution(cfg: AptConfig) -> None:
    if cfg.distribution not in KEYRINGS:
        raise MkosiError(f"the apt installer cannot install distribution '{cfg.distribution}'",
                         hint="supported are: " + ", ".join(sorted(KEYRINGS)))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+~-]*", cfg.release):
        raise MkosiError(f"invalid release name '{cfg.release}'")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", cfg.architecture):
        raise MkosiError(f"invalid architecture '{cfg.architecture}'")


def _components(cfg: AptConfig) -> str:
    # Defaults to "main" for Ubuntu as well: systemd, udev, the kernel and sshd are all in main; add
    # "universe" through Repositories= when needed.
    seen: list[str] = []
    for c in cfg.components or ["main"]:
        for part in c.split():
            if part not in seen:
                seen.append(part)
    return " ".join(seen)


def _main_lines(cfg: AptConfig) -> list[str]:
    mirror = (cfg.mirror or default_mirror(cfg.distribution, cfg.architecture)).rstrip("/")
    comps = _components(cfg)
    release = cfg.release
    lines = [f"deb {mirror} {release} {comps}"]

    if cfg.distribution == "debian":
        if release in _DEBIAN_ROLLING or release.endswith("-backports"):
            return lines
        lines.append(f"deb {mirror} {release}-updates {comps}")
        suite = f"{release}/updates" if release in _DEBIAN_OLD_SECURITY else f"{release}-security"
        lines.append(f"deb {DEBIAN_SECURITY_MIRROR} {suite} {comps}")
        return lines

    # Ubuntu: the official archive publishes security fixes from security.ubuntu.com (ports carry
    # their own -security pocket); a custom mirror is expected to mirror all pockets.
    lines.append(f"deb {mirror} {release}-updates {comps}")
    security = UBUNTU_SECURITY_MIRROR if mirror == UBUNTU_MIRROR else mirror
    lines.append(f"deb {security} {release}-security {comps}")
    return lines


def _extra_lines(cfg: AptConfig) -> list[str]:
    lines = []
    for entry in cfg.extra_repositories:
        e = " ".join(entry.split())
        if not e:
            continue
        if re.match(r"deb(-src)?\s", e):
            lines.append(e)
        elif re.match(r"[A-Za-z][A-Za-z0-9+.-]*:/", e):
            lines.append(f"deb {e} {cfg.release} main")
        else:
            raise MkosiError(f"invalid repository '{entry}': expected a 'deb URL SUITE COMPONENT…' line "
                             "or a URL")
    return lines


def _deb822_to_lines(text: str) -> list[str]:
    lines = []
    for stanza in parse_deb822(text):
        if stanza.get("Enabled", "yes").strip().lower() == "no":
            continue
        options = []
        if "Signed-By" in stanza and "\n" not in stanza["Signed-By"].strip():
            options.append(f"signed-by={stanza['Signed-By'].strip()}")
        opts = f" [{' '.join(options)}]" if options else ""
        comps = " ".join(stanza.get("Components", "").split())
        for typ in stanza.get("Types", "deb").split():
            for uri in stanza.get("URIs", "").split():
                for suite in stanza.get("Suites", "").split():
                    lines.append(" ".join(p for p in (f"{typ}{opts}", uri, suite, comps) if p))
    return lines


def _repository_directory_files(cfg: AptConfig, suffixes: tuple[str, ...]) -> list[Path]:
    d = cfg.repository_directory
    if d is None:
        return []
    if not d.is_dir():
        raise MkosiError(f"repository directory {d} does not exist")
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(suffixes))


def repository_lines(cfg: AptConfig) -> list[str]:
    """The sources.list lines a build uses (in one-line format, also for *.sources files)."""
    _check_distribution(cfg)
    lines = _main_lines(cfg) + _extra_lines(cfg)
    for p in _repository_directory_files(cfg, (".list", ".sources")):
        text = p.read_text()
        if p.name.endswith(".sources"):
            lines += _deb822_to_lines(text)
        else:
            lines += [" ".join(ln.split()) for ln in text.splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
    return lines


def _keyring(cfg: AptConfig) -> Path:
    path, package = KEYRINGS[cfg.distribution]
    if not Path(path).is_file():
        raise MkosiError(f"the {cfg.distribution} archive keyring {path} is missing on this host",
                         hint=f"install it with: apt-get install {package}")
    return Path(path)


# ---------------------------------------------------------------------------------------------------
# Control files, dpkg status, relations


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
    return _read_control_archive(deb)[0]


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


def _read_control_archive(deb: Path) -> tuple[dict[str, str], set[str]]:
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


def essential_closure(controls: dict[str, dict[str, str]]) -> set[str]:
    """Names of the Essential: yes packages plus everything they (pre-)depend on, within the given set."""
    essential = [c["Package"] for c in controls.values() if _is_essential(c)]
    return dependency_closure(controls, essential)


def _is_essential(control: dict[str, str]) -> bool:
    return control.get("Essential", "no").lower() == "yes"


_Archives = dict[str, tuple[dict[str, str], set[str]]]  # .deb path -> (control stanza, control members)


def _essential_unpack_order(debs: Sequence[Path], archives: _Archives) -> list[Path]:
    """Packages without a preinst first, then essential ones with a preinst, then the others; each in
    apt's order. When the first preinst runs, all essential packages without one are on disk, and the
    essential ones are there before the preinsts of packages that are not essential run."""
    def rank(deb: Path) -> int:
        control, members = archives[str(deb)]
        if "preinst" not in members:
            return 0
        return 1 if _is_essential(control) else 2

    return sorted(debs, key=rank)  # stable: apt's order within each group


def _scaffold(debs: Sequence[Path], controls: dict[str, dict[str, str]]) -> list[Path]:
    """What to extract with dpkg-deb so that the image's dpkg can run: dpkg, sh and the tools dpkg
    insists on, with their libraries. Every file extracted here is written a second time by dpkg, and
    creating files is what costs most, so this is kept small: the rest of the essential set is unpacked
    by dpkg, those without a preinst first (see _essential_unpack_order())."""
    names = dependency_closure(controls, _SCAFFOLD_ROOTS)
    return [d for d in debs if controls[str(d)]["Package"] in names]


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


# ---------------------------------------------------------------------------------------------------
# apt's output: the dpkg plan and the errors


@dataclass(frozen=True)
class DpkgOp:
    action: str                 # "unpack", "configure", "remove", "purge", "triggers-only", "install"
    options: tuple[str, ...]    # e.g. "--no-triggers", "--auto-deconfigure"
    args: tuple[str, ...]       # .deb paths for unpack/install, package names otherwise (may be "--pending")


_DPKG_ACTIONS = {"--unpack": "unpack", "--configure": "configure", "--remove": "remove", "--purge": "purge",
                 "--triggers-only": "triggers-only", "--install": "install"}


def parse_dpkg_plan(text: str) -> list[DpkgOp]:
    """The dpkg runs apt printed with Debug::pkgDPkgPM=1 (one command line per run)."""
    ops = []
    for line in text.splitlines():
        tokens = line.split()
        if not tokens or os.path.basename(tokens[0]) != "dpkg":
            continue
        action = None
        options: list[str] = []
        args: list[str] = []
        it = iter(tokens[1:])
        for tok in it:
            if tok == "--status-fd":
                next(it, None)
            elif tok in _DPKG_ACTIONS:
                action = _DPKG_ACTIONS[tok]
            elif tok in ("--pending", "-a"):
                args.append("--pending")
            elif tok.startswith("-"):
                options.append(tok)
            else:
                args.append(tok)
        if action is not None and args:
            ops.append(DpkgOp(action, tuple(options), tuple(args)))
    return ops


def _mirror_and_suite(url: str) -> tuple[str, str]:
    if "/dists/" in url:
        mirror, _, rest = url.partition("/dists/")
        return mirror, rest.split("/")[0]
    if "/pool/" in url:
        return url.partition("/pool/")[0], ""
    return url.rsplit("/", 1)[0], ""


_NETWORK_FAILURES = ("Could not resolve", "Temporary failure resolving", "Could not connect",
                     "Connection failed", "Connection timed out", "timed out", "Network is unreachable",
                     "No route to host", "Connection refused")


def apt_error_message(text: str, release: Optional[str] = None) -> Optional[str]:
    """Turn apt's output into one line that names the package, mirror or release at fault.

    When several repositories fail, one of `release` itself is reported rather than its -updates or
    -security companions."""
    missing = re.findall(r"^E: Unable to locate package (\S+)", text, re.M)
    missing += re.findall(r"^E: Couldn't find any package by (?:glob|regex|pattern) '([^']+)'", text, re.M)
    if missing:
        names = ", ".join(f"'{m}'" for m in dict.fromkeys(missing))
        noun = "package" if len(missing) == 1 else "packages"
        return f"{noun} {names} not found in the configured repositories"

    m = re.search(r"^E: Package '([^']+)' has no installation candidate", text, re.M)
    if m:
        return (f"package '{m.group(1)}' has no installation candidate in the configured repositories "
                "(other packages refer to it, but no repository provides it)")

    m = re.search(r"^E: Version '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"version '{m.group(1)}' of package '{m.group(2)}' not found in the configured repositories"

    m = re.search(r"^E: Release '([^']+)' for '([^']+)' was not found", text, re.M)
    if m:
        return f"package '{m.group(2)}' not found in release '{m.group(1)}'"

    def main_first(matches: Iterable[re.Match[str]],
                   suite_of: Callable[[re.Match[str]], str]) -> list[re.Match[str]]:
        return sorted(matches, key=lambda m: suite_of(m) != release)

    fetch_failures = main_first(re.finditer(r"^E: Failed to fetch (\S+)\s+(.*)$", text, re.M),
                                lambda m: _mirror_and_suite(m.group(1))[1])
    for m in fetch_failures:
        url, reason = m.group(1), " ".join(m.group(2).split())
        mirror, suite = _mirror_and_suite(url)
        reason = re.sub(r"\s*\[IP: [^\]]*\]", "", reason)
        if any(f in reason for f in _NETWORK_FAILURES):
            return f"mirror {mirror} is unreachable: {reason}"
        if "Hash Sum mismatch" in reason or "File has unexpected size" in reason:
            return (f"download of {url} failed ({reason.splitlines()[0]}): the mirror {mirror} "
                    "is probably being updated, try again later")
        if suite:
            if reason.startswith("404"):
                return f"release '{suite}' not found on mirror {mirror}"
            return f"could not fetch release '{suite}' from mirror {mirror}: {reason}"
        return f"could not download {url} from mirror {mirror}: {reason}"

    m = re.search(r"^E: Release file for (\S+) is expired \(invalid since ([^)]*)\)", text, re.M)
    if m:
        mirror, suite = _mirror_and_suite(m.group(1))
        return (f"the Release file of '{suite}' on mirror {mirror} expired {m.group(2)} ago: "
                "the mirror is out of date, or the clock of this machine is wrong")

    missing_releases = main_first(
        re.finditer(r"^E: The repository '(\S+) (\S+) Release' does not have a Release file", text, re.M),
        lambda m: m.group(2))
    if missing_releases:
        m = missing_releases[0]
        return f"release '{m.group(2)}' not found on mirror {m.group(1)}"

    m = re.search(r"NO_PUBKEY (\w+)", text)
    if m:
        repo = re.search(r"^E: The repository '(\S+) (\S+) \S*Release' is not signed", text, re.M)
        what = f"repository {repo.group(1)} {repo.group(2)}" if repo else "a repository"
        return f"{what} is signed with a key that is not in the configured keyring (NO_PUBKEY {m.group(1)})"

    m = re.search(r"^E: The repository '(\S+) (\S+) \S*Release' is not signed", text, re.M)
    if m:
        return f"repository {m.group(1)} {m.group(2)} is not signed, or not a valid apt repository"

    if re.search(r"following packages have unmet dependencies", text):
        start = text.index("following packages have unmet dependencies")
        problems = []
        for line in text[start:].splitlines()[1:]:
            if line.startswith("E:"):
                break
            if line.strip():
                problems.append(" ".join(line.split()))
        return "unresolvable dependencies: " + "; ".join(problems)

    if re.search(r"^E: Essential packages were removed", text, re.M):
        return "the requested removal would remove essential packages"

    m = re.search(r"^E: (Could not get lock .*)$", text, re.M)
    if m:
        return f"the package cache is in use by another process: {m.group(1)}"

    m = re.search(r"^E: (.*)$", text, re.M)
    if m:
        return m.group(1).strip()
    return None


def dpkg_error_message(text: str) -> Optional[str]:
    failed = re.findall(r"^dpkg: error processing (?:archive|package) (\S+)", text, re.M)
    if not failed:
        m = re.search(r"^dpkg: error: (.*)$", text, re.M)
        return f"dpkg: {m.group(1)}" if m else None
    first = re.search(r"^dpkg: error processing .*\n\s*(.*)$", text, re.M)
    detail = f" ({first.group(1).strip()})" if first else ""
    names = ", ".join(dict.fromkeys(os.path.basename(f).rstrip(":").split("_")[0] for f in failed))
    return f"dpkg failed to install {names}{detail}"


# ---------------------------------------------------------------------------------------------------
# The docs exclusion config


def docs_dpkg_config() -> str:
    lines = ["# Written by mkosi (WithDocs=no): keep documentation and translations out of the image."]
    lines += [f"path-exclude={p}" for p in DOCS_EXCLUDE]
    lines += [f"path-include={p}" for p in DOCS_INCLUDE]
    return "\n".join(lines) + "\n"


def _write_docs_config(root: Path) -> None:
    d = root / "etc/dpkg/dpkg.cfg.d"
    d.mkdir(parents=True, exist_ok=True)
    (d / DOCS_CONFIG_NAME).write_text(docs_dpkg_config())


# ---------------------------------------------------------------------------------------------------
# apt on the host, with all of its state redirected


@dataclass
class _Apt:
    cfg: AptConfig
    conf: Path
    lists: Path
    archives: Path
    uncompressed: Path
    status: Path
    env: dict[str, str] = field(default_factory=dict)
    lock_file: Optional[Path] = None


def _uri_to_filename(uri: str) -> str:
    """How apt names the list files it stores for a URI."""
    uri = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", uri)
    uri = re.sub(r"^[^/@]*@", "", uri)
    quoted = "".join(f"%{ord(c):02x}" if c in "\\|{}[]<>\"^~_=!@#$%&*" else c for c in uri)
    return quoted.replace("/", "_")


def _list_prefixes(lines: Iterable[str]) -> list[str]:
    prefixes = []
    for line in lines:
        parts = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(parts) >= 3 and parts[0] == "deb" and not parts[2].endswith("/"):
            prefixes.append(_uri_to_filename(f"{parts[1].rstrip('/')}/dists/{parts[2]}/"))
    return prefixes


def _setup_apt(cfg: AptConfig, status: Path, keyring: Path) -> _Apt:
    ws = cfg.workspace.absolute() / "apt"
    etc = ws / "etc"
    for d in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d"):
        (etc / d).mkdir(parents=True, exist_ok=True)
    for d in ("state", "cache", "log"):
        (ws / d).mkdir(parents=True, exist_ok=True)

    lock_file = None
    if cfg.cache_dir is not None:
        base = cfg.cache_dir.absolute() / "apt"
        lock_file = base / "lock"
    else:
        base = ws
    lists, archives = base / "lists", base / "archives"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (archives / "partial").mkdir(parents=True, exist_ok=True)

    shutil.copyfile(keyring, etc / "trusted.gpg.d" / keyring.name)
    for p in _repository_directory_files(cfg, (".gpg", ".asc")):
        shutil.copyfile(p, etc / "trusted.gpg.d" / p.name)
    for p in _repository_directory_files(cfg, (".list", ".sources")):
        shutil.copyfile(p, etc / "sources.list.d" / p.name)
    (etc / "sources.list").write_text("\n".join(_main_lines(cfg) + _extra_lines(cfg)) + "\n")

    def q(p: Union[Path, str]) -> str:
        return '"' + str(p).replace('"', '\\"') + '"'

    settings: dict[str, Union[str, Path]] = {
        "Dir": "/",
        "Dir::Etc": etc,
        "Dir::Etc::Main": etc / "apt.conf",
        "Dir::Etc::Parts": etc / "apt.conf.d",
        "Dir::Etc::SourceList": etc / "sources.list",
        "Dir::Etc::SourceParts": etc / "sources.list.d",
        "Dir::Etc::Trusted": etc / "trusted.gpg",
        "Dir::Etc::TrustedParts": etc / "trusted.gpg.d",
        "Dir::Etc::Preferences": etc / "preferences",
        "Dir::Etc::PreferencesParts": etc / "preferences.d",
        "Dir::State": ws / "state",
        "Dir::State::Lists": lists,
        "Dir::State::Status": status,
        "Dir::State::extended_states": ws / "state/extended_states",
        "Dir::Cache": ws / "cache",
        "Dir::Cache::Archives": archives,
        # The source cache only depends on the lists: keep it with them so warm builds reuse it.
        "Dir::Cache::srcpkgcache": base / "srcpkgcache.bin",
        "Dir::Cache::pkgcache": ws / "cache/pkgcache.bin",
        "Dir::Log": ws / "log",
        "Dir::Log::Planner": "/dev/null",
        "APT::Architecture": cfg.architecture,
        "APT::Install-Recommends": "false",
        "APT::Install-Suggests": "false",
        "APT::Get::Assume-Yes": "true",
        # Lists of other releases sharing the cache must survive an update of this one.
        "APT::Get::List-Cleanup": "false",
        # apt would mark itself essential; it is only installed when asked for.
        "pkgCacheGen::ForceEssential": ",",
        # The caller already runs as root and the cache may not be reachable for _apt.
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
        "Acquire::Retries": "3",
        "Dpkg::Use-Pty": "false",
        # Name every package in the plan rather than a temporary directory of symlinks.
        "Dpkg::Install::Recursive::Minimum": "1000000",
        "quiet": "1",
    }
    text = "".join(f"{k} {q(v)};\n" for k, v in settings.items())
    text += f"APT::Architectures {{ {q(cfg.architecture)}; }};\n"
    conf = ws / "apt.conf"
    conf.write_text(text)

    env = {
        "APT_CONFIG": str(conf),
        "LC_ALL": "C.UTF-8",
        "DEBIAN_FRONTEND": "noninteractive",
    }
    return _Apt(cfg=cfg, conf=conf, lists=lists, archives=archives, uncompressed=base / "uncompressed",
                status=status, env=env, lock_file=lock_file)


@contextlib.contextmanager
def _cache_locked(apt: _Apt) -> Iterator[None]:
    """Serialize builds that share a package cache (apt would fail on its own locks instead of waiting)."""
    if apt.lock_file is None:
        yield
        return
    with apt.lock_file.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"Waiting for the package cache {apt.lock_file.parent} used by another build")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apt_get(apt: _Apt, args: Sequence[str], what: str) -> str:
    """Run apt-get; return stdout and stderr together (Debug::pkgDPkgPM writes its plan to stderr)."""
    proc = run(["apt-get", *args], env=apt.env, check=False, capture=True)
    text = f"{proc.stdout}\n{proc.stderr}"
    if log.debug_enabled():
        log.debug(text.strip())
    if proc.returncode != 0:
        msg = (apt_error_message(text, apt.cfg.release) or
               f"apt-get {args[0]} failed with exit status {proc.returncode}")
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise MkosiError(f"{what}: {msg}", hint=f"apt-get said:\n{tail}")
    for line in proc.stderr.splitlines():
        if line.startswith("W: "):
            log.warn(f"apt-get: {line[3:]}")
    return text


# When this process last refreshed a lists directory for a set of sources: install_more() right after
# install() in the same build does not need to ask the mirrors again.
_refreshed: dict[tuple[str, str], float] = {}
_REFRESH_INTERVAL = 600.0


def _update(apt: _Apt) -> None:
    cfg = apt.cfg
    if cfg.network:
        etc = apt.conf.parent / "etc"
        sources = [etc / "sources.list", *sorted((etc / "sources.list.d").iterdir())]
        key = (str(apt.lists), "\0".join(p.read_text() for p in sources))
        last = _refreshed.get(key)
        if last is not None and time.monotonic() - last < _REFRESH_INTERVAL:
            log.debug("package lists were refreshed by this build already")
            return
        with log.step("Refreshing package lists"):
            # The caches are built by the next apt run anyway; doing it here too would cost ~0.5s.
            _apt_get(apt, ["update", "--error-on=any", "-o", "pkgCacheFile::Generate=false"],
                     "refreshing package lists")
        _refreshed[key] = time.monotonic()
        return
    prefix = _list_prefixes(_main_lines(cfg))[0]
    if not any(p.name.startswith(prefix) and "_Packages" in p.name for p in apt.lists.iterdir()):
        raise MkosiError(f"no cached package lists for {cfg.distribution} {cfg.release} in {apt.lists}",
                         hint="build once with network access to fill the package cache")
    log.info("Using cached package lists (network access disabled)")


def _plan_key(apt: _Apt, command: str, packages: Sequence[str]) -> str:
    """What apt's resolution depends on: its configuration, the sources, keys and lists, the dpkg status."""
    h = hashlib.sha256()
    h.update(repr((command, list(packages))).encode())
    # The workspace differs from build to build; the cache and the root do not matter either.
    h.update(apt.conf.read_text().replace(str(apt.conf.parent), "@WORKSPACE@").encode())
    etc = apt.conf.parent / "etc"
    for p in sorted(etc.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(etc)).encode() + b"\0" + p.read_bytes())
    for p in sorted(apt.lists.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    h.update(apt.status.read_bytes())
    return h.hexdigest()


def _plan(apt: _Apt, command: str, packages: Sequence[str], what: str,
          downloads: bool = True) -> list[DpkgOp]:
    """Resolve and download in one apt run; return the dpkg runs apt would do.

    apt's resolution only depends on what _plan_key() hashes; with a package cache, its result is kept
    next to the cached packages, and used again while all of that stays the same and the planned
    packages are all still cached (the next `apt-get update` that brings a change invalidates it).
    """
    saved: Optional[Path] = None
    if apt.lock_file is not None:
        saved = apt.lock_file.parent / "plans" / f"{_plan_key(apt, command, packages)}.txt"
        if saved.exists():
            plan = parse_dpkg_plan(saved.read_text())
            debs = [Path(a) for op in plan if op.action in ("unpack", "install") for a in op.args]
            if all(p.exists() for p in debs):
                if downloads:
                    log.info("Need to get 0 B of archives (the packages and their resolution are cached)")
                saved.touch()
                return plan

    out = _apt_get(apt, [command, "-o", "Debug::pkgDPkgPM=1", "--", *packages], what)
    m = re.search(r"^Need to get (.*) of archives", out, re.M)
    if downloads:
        log.info(f"Need to get {m.group(1) if m else '0 B'} of archives")
    plan = parse_dpkg_plan(out)

    if saved is not None:
        saved.parent.mkdir(exist_ok=True)
        tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
        tmp.write_text("".join(_format_op(op) + "\n" for op in plan))
        os.replace(tmp, saved)
        # Keep the most recently used resolutions only.
        old = sorted(saved.parent.glob("*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)[32:]
        for p in old:
            with contextlib.suppress(OSError):
                p.unlink()
    return plan


def _format_op(op: DpkgOp) -> str:
    """A plan line in the form parse_dpkg_plan() reads."""
    return " ".join(["dpkg", *op.options, f"--{op.action}", *op.args])


# ---------------------------------------------------------------------------------------------------
# The root


def _setup_merged_usr(cfg: AptConfig) -> None:
    root = cfg.root
    dirs = ["bin", "sbin", "lib"] + (["lib64"] if cfg.architecture in _LIB64_ARCHITECTURES else [])
    for d in dirs:
        target = root / "usr" / d
        target.mkdir(parents=True, exist_ok=True)
        link = root / d
        if link.is_symlink():
            continue
        if link.is_dir():
            # A skeleton tree with a real /bin: move its contents where they belong.
            for entry in link.iterdir():
                dest = target / entry.name
                if dest.exists() or dest.is_symlink():
                    raise MkosiError(f"cannot merge /{d}/{entry.name} into /usr/{d}: it exists in both")
                entry.rename(dest)
            link.rmdir()
        elif link.exists():
            raise MkosiError(f"/{d} in the image root is not a directory")
        link.symlink_to(f"usr/{d}")


def _prepare_root(cfg: AptConfig) -> None:
    root = cfg.root
    root.mkdir(parents=True, exist_ok=True)
    if cfg.release not in _UNMERGED_RELEASES:
        _setup_merged_usr(cfg)
    if not cfg.with_docs:
        _write_docs_config(root)
    admin = root / "var/lib/dpkg"
    for d in ("info", "updates", "triggers"):
        (admin / d).mkdir(parents=True, exist_ok=True)
    for f in ("status", "available"):
        (admin / f).touch()


def _repack(src: Path, dst: Path) -> None:
    """Copy a .deb with its data.tar.xz member stored uncompressed (control and everything else as is)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        with src.open("rb") as f, tmp.open("wb") as out:
            if f.read(8) != b"!<arch>\n":
                raise MkosiError(f"{src} is not a Debian package")
            out.write(b"!<arch>\n")
            while True:
                header = f.read(60)
                if len(header) < 60:
                    break
                name = header[:16].rstrip()
                size = int(header[48:58].decode("ascii").strip())
                if name.rstrip(b"/") != b"data.tar.xz":
                    out.write(header)
                    out.write(f.read(size + (size & 1)))
                    continue
                start = out.tell()
                out.write(header)  # placeholder, the size is only known afterwards
                decompressor = lzma.LZMADecompressor()
                left, written = size, 0
                while left:
                    chunk = f.read(min(left, 1 << 20))
                    if not chunk:
                        raise MkosiError(f"{src} is truncated")
                    left -= len(chunk)
                    data = decompressor.decompress(chunk)
                    out.write(data)
                    written += len(data)
                if written & 1:
                    out.write(b"\n")
                if size & 1:
                    f.read(1)
                end = out.tell()
                out.seek(start)
                size_field = str(written).encode().ljust(10)
                out.write(b"data.tar".ljust(16) + header[16:48] + size_field + header[58:60])
                out.seek(end)
        st = src.stat()
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _data_member(deb: Path) -> str:
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


def _uncompressed(debs: Sequence[Path], store: Path) -> dict[Path, Path]:
    """Map each .deb to a copy whose file system tarball is stored uncompressed, made once per package.

    The image needs every essential package decompressed twice (the dpkg-deb scaffold, then dpkg) and all
    others once; with these copies xz runs once per package and cache, in parallel, and never again on
    warm builds. Packages that are not xz-compressed (zstd is fast already) are used as they are.
    """
    store.mkdir(parents=True, exist_ok=True)
    result: dict[Path, Path] = {}
    todo: list[tuple[Path, Path]] = []
    for deb in debs:
        st = deb.stat()
        dst = store / f"{deb.stem}_{st.st_size}.deb"
        result[deb] = dst
        if dst.exists() and dst.stat().st_mtime_ns == st.st_mtime_ns:
            continue
        if _data_member(deb) != "data.tar.xz":
            result[deb] = deb
            continue
        todo.append((deb, dst))
    if todo:
        workers = max(1, min(len(todo), os.cpu_count() or 1))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(_repack, src, dst): src for src, dst in todo}
            for fut in concurrent.futures.as_completed(futures):
                try:
                    fut.result()
                except OSError as e:
                    log.warn(f"could not store an uncompressed copy of {futures[fut].name} ({e}), "
                             "using it as it is")
                    result[futures[fut]] = futures[fut]
    return result


def _prune_uncompressed(store: Path, archives: Path) -> None:
    """Drop uncompressed copies whose package is no longer in apt's cache."""
    for p in store.glob("*.deb"):
        if not (archives / (p.name.rsplit("_", 1)[0] + ".deb")).exists():
            with contextlib.suppress(OSError):
                p.unlink()


def _extract(debs: Sequence[Path], root: Path, mounted: bool = False) -> None:
    """Unpack the scaffold: several dpkg-deb | tar pipelines in parallel, balanced by package size.

    With `mounted`, the API file systems are mounted in the root and left alone."""
    workers = max(1, min(4, os.cpu_count() or 1, len(debs)))
    buckets: list[list[Path]] = [[] for _ in range(workers)]
    sizes = [0] * workers
    for deb in sorted(debs, key=lambda p: p.stat().st_size, reverse=True):
        i = sizes.index(min(sizes))
        buckets[i].append(deb)
        sizes[i] += deb.stat().st_size
    patterns = [*_SCAFFOLD_EXCLUDES, *(["./proc", "./sys", "./dev", f"./{_HELPER_DIR}"] if mounted else [])]
    excludes = " ".join(shlex.quote(f"--exclude={e}") for e in patterns)
    # Existing files (a skeleton tree) are kept; directory symlinks (merged /usr) are followed.
    script = (
        "set -e -o pipefail; "
        'for deb; do dpkg-deb --fsys-tarfile "$deb"; done | '
        f'tar -x --ignore-zeros --keep-directory-symlink --skip-old-files {excludes} -C "$ROOT" -f -'
    )
    require_tool("dpkg-deb")
    require_tool("tar")

    def one(bucket: list[Path]) -> None:
        run(["bash", "-c", script, "extract", *bucket], env={"ROOT": str(root)}, capture=True)

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for fut in [pool.submit(one, b) for b in buckets if b]:
            fut.result()


@lru_cache(maxsize=1)
def _host_architecture() -> Optional[str]:
    if find_tool("dpkg") is None:
        return None
    return output(["dpkg", "--print-architecture"]).strip()


def _host_eatmydata() -> Optional[Path]:
    for pattern in ("usr/lib/*/libeatmydata.so.1", "usr/lib*/libeatmydata.so.1"):
        for p in sorted(Path("/").glob(pattern)):
            if p.exists():
                return p
    return None


def _processes_in(root: Path) -> list[int]:
    target = os.path.realpath(root)
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            link = os.readlink(f"/proc/{entry.name}/root")
        except OSError:
            continue
        if link == target or link.startswith(target + "/"):
            pids.append(int(entry.name))
    return pids


def _kill_processes_in(root: Path) -> None:
    """Stop whatever a maintainer script left running in the chroot (only processes rooted there)."""
    pids = _processes_in(root)
    if not pids:
        return
    log.warn(f"stopping {len(pids)} process(es) left behind in {root}: {', '.join(map(str, pids))}")
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            pids = _processes_in(root)
            if not pids:
                return
            time.sleep(0.05)


def _mounts_below(path: Path) -> list[str]:
    """Mount points at or below path (bind mounts of the same file system included)."""
    prefix = os.path.realpath(path)
    result = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mountpoint = line.split()[4].replace("\\040", " ")
            if mountpoint == prefix or mountpoint.startswith(prefix + "/"):
                result.append(mountpoint)
    return result


def _umount(path: Path) -> None:
    proc = run(["umount", path], check=False, capture=True)
    if proc.returncode != 0:
        log.warn(f"could not unmount {path} ({proc.stderr.strip()}), detaching it lazily")
        run(["umount", "--lazy", path], check=False, capture=True)


class _Chroot:
    """Runs the image's own dpkg inside the root; package directories appear under /.mkosi-apt/."""

    def __init__(self, root: Path, package_dirs: dict[Path, str]) -> None:
        self.root = root
        self.package_dirs = package_dirs
        self.chroot = require_tool("chroot")
        self.env = {
            "PATH": _CHROOT_PATH,
            "LC_ALL": "C.UTF-8",
            "HOME": "/root",
            "DEBIAN_FRONTEND": "noninteractive",
            "DEBCONF_NONINTERACTIVE_SEEN": "true",
            "DPKG_COLORS": "never",
        }
        if "SOURCE_DATE_EPOCH" in os.environ:
            self.env["SOURCE_DATE_EPOCH"] = os.environ["SOURCE_DATE_EPOCH"]

    def path_in_root(self, deb: str) -> str:
        p = Path(deb)
        if p.parent not in self.package_dirs:
            raise MkosiError(f"apt planned to install {deb}, which is not in the package cache")
        return f"{self.package_dirs[p.parent]}/{p.name}"

    def run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        envs = [f"{k}={v}" for k, v in self.env.items()]
        return run(["env", "-i", *envs, self.chroot, self.root, *argv], check=check, capture=True)

    def enable_eatmydata(self, architecture: str) -> None:
        lib = _host_eatmydata()
        if lib is None or _host_architecture() != architecture:
            return
        dest = self.root / _HELPER_DIR / "libeatmydata.so"
        shutil.copyfile(lib, dest)
        inner = f"/{_HELPER_DIR}/libeatmydata.so"
        probe = self.run(["env", f"LD_PRELOAD={inner}", "/bin/true"], check=False)
        if probe.returncode == 0 and not probe.stderr.strip():
            self.env["LD_PRELOAD"] = inner
            log.debug("dpkg runs with libeatmydata preloaded")
        else:
            log.debug(f"not using libeatmydata in the image: {probe.stderr.strip()}")

    def dpkg(self, op: DpkgOp, extra: Sequence[str] = ()) -> None:
        args = [self.path_in_root(a) if op.action in ("unpack", "install") else a for a in op.args]
        argv = ["dpkg", *_DPKG_OPTIONS, *extra, *op.options, f"--{op.action}", *args]
        proc = self.run(argv, check=False)
        text = f"{proc.stdout}\n{proc.stderr}"
        if log.debug_enabled():
            log.debug(text.strip())
        if proc.returncode != 0:
            msg = dpkg_error_message(text) or f"dpkg --{op.action} failed with exit status {proc.returncode}"
            tail = "\n".join(text.strip().splitlines()[-12:])
            raise MkosiError(msg, hint=f"dpkg said:\n{tail}")


@contextlib.contextmanager
def _chroot(cfg: AptConfig, apt: _Apt) -> Iterator[_Chroot]:
    """Mount what maintainer scripts need, forbid service starts; undo all of it whatever happens."""
    root = cfg.root.absolute()
    helper = root / _HELPER_DIR
    policy = root / "usr/sbin/policy-rc.d"
    own_policy = not (policy.exists() or policy.is_symlink())
    mounted: list[Path] = []
    package_dirs = {apt.archives: f"/{_HELPER_DIR}/archives",
                    apt.uncompressed: f"/{_HELPER_DIR}/uncompressed"}
    try:
        if own_policy:
            policy.parent.mkdir(parents=True, exist_ok=True)
            policy.write_text(_POLICY_RC_D)
            policy.chmod(0o755)
        mounts: list[tuple[list[str], Path]] = [
            (["-t", "proc", "-o", "nosuid,nodev,noexec", "proc"], root / "proc"),
            (["-o", "bind,ro", "/sys"], root / "sys"),
            (["--bind", "/dev"], root / "dev"),
        ]
        mounts += [(["-o", "bind,ro", str(d)], root / inner.lstrip("/")) for d, inner in package_dirs.items()
                   if d.is_dir()]
        for args, dest in mounts:
            dest.mkdir(parents=True, exist_ok=True)
            run(["mount", *args, dest], capture=True)
            mounted.append(dest)
        chroot = _Chroot(root, package_dirs)
        chroot.enable_eatmydata(cfg.architecture)
        yield chroot
    finally:
        try:
            _kill_processes_in(root)
        finally:
            for dest in reversed(mounted):
                _umount(dest)
            if own_policy:
                with contextlib.suppress(FileNotFoundError):
                    policy.unlink()
            # Never recurse into something still mounted there (the package cache).
            if _mounts_below(helper):
                log.warn(f"{helper} is still mounted, leaving it in place")
            else:
                shutil.rmtree(helper, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# After installing


def _apt_in_root(root: Path) -> bool:
    return (root / "usr/bin/apt-get").exists()


def _strip_package_spec(spec: str) -> str:
    return re.split(r"[=/:]", spec, maxsplit=1)[0]


def _write_extended_states(root: Path, architecture: str, manual: set[str], before: set[str]) -> None:
    """Mark what apt pulled in as automatically installed, so `apt autoremove` works in the image."""
    path = root / "var/lib/apt/extended_states"
    entries: dict[str, dict[str, str]] = {}
    if path.exists():
        for st in parse_deb822(path.read_text()):
            if "Package" in st:
                entries[st["Package"]] = st
    for pkg in installed_packages(root):
        if pkg.name in manual:
            entries.pop(pkg.name, None)
        elif pkg.name not in before and pkg.name not in entries:
            entries[pkg.name] = {"Package": pkg.name, "Architecture": pkg.architecture or architecture,
                                 "Auto-Installed": "1"}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join("".join(f"{k}: {v}\n" for k, v in st.items()) + "\n"
                            for _, st in sorted(entries.items())))


def _write_sources(cfg: AptConfig) -> None:
    etc = cfg.root / "etc/apt"
    (etc / "sources.list.d").mkdir(parents=True, exist_ok=True)
    lines = _main_lines(cfg) + _extra_lines(cfg)
    (etc / "sources.list").write_text("# Written by mkosi.\n" + "\n".join(lines) + "\n")
    for p in _repository_directory_files(cfg, (".list", ".sources")):
        dest = etc / "sources.list.d" / p.name
        if not dest.exists():
            shutil.copyfile(p, dest)
    for p in _repository_directory_files(cfg, (".gpg", ".asc")):
        (etc / "trusted.gpg.d").mkdir(exist_ok=True)
        dest = etc / "trusted.gpg.d" / p.name
        if not dest.exists():
            shutil.copyfile(p, dest)


def _copy_lists(apt: _Apt) -> None:
    """Give apt in the image the lists of its repositories, so it works without an update."""
    dest = apt.cfg.root / "var/lib/apt/lists"
    (dest / "partial").mkdir(parents=True, exist_ok=True)
    prefixes = tuple(_list_prefixes(_main_lines(apt.cfg) + _extra_lines(apt.cfg)))
    for p in apt.lists.iterdir():
        # Copies, not hard links: whatever happens to the image's files must not touch the cache.
        if p.is_file() and p.name.startswith(prefixes) and not (dest / p.name).exists():
            shutil.copy2(p, dest / p.name)


def _finish(apt: _Apt, manual: Sequence[str], before: set[str], write_sources: bool) -> None:
    cfg = apt.cfg
    if write_sources:
        _write_sources(cfg)
    # Written even without apt in the image, so that apt installed later knows what was pulled in
    # automatically; clean_metadata() drops it when apt never got installed.
    _write_extended_states(cfg.root, cfg.architecture, {_strip_package_spec(p) for p in manual}, before)
    if _apt_in_root(cfg.root):
        _copy_lists(apt)


# ---------------------------------------------------------------------------------------------------
# The API


def _status_nonempty(root: Path) -> bool:
    status = root / "var/lib/dpkg/status"
    return status.exists() and status.stat().st_size > 0


def install(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Bootstrap the essential set plus `packages` (and their dependencies) into cfg.root."""
    _check_distribution(cfg)
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    if _status_nonempty(cfg.root):
        log.info(f"{cfg.root} already has a dpkg database: installing into it")
        install_more(cfg, packages)
        return
    keyring = _keyring(cfg)
    root = cfg.root
    had_sources = (root / "etc/apt/sources.list").exists()

    with log.step(f"Installing {cfg.distribution} {cfg.release} ({cfg.architecture})"):
        _prepare_root(cfg)
        empty_status = cfg.workspace.absolute() / "apt/empty-status"
        empty_status.parent.mkdir(parents=True, exist_ok=True)
        empty_status.write_text("")
        apt = _setup_apt(cfg, empty_status, keyring)

        request = ["?essential", *packages]
        if cfg.release not in _UNMERGED_RELEASES and "usrmerge" not in packages:
            # Matches nothing (and is no error) on releases that predate the package.
            request.append("?exact-name(usr-is-merged)")
        with _cache_locked(apt):
            _update(apt)
            with log.step("Resolving and downloading packages"):
                plan = _plan(apt, "install", request, "resolving packages")
            plan = _decompress_plan(apt, plan)

        debs = _plan_debs(plan)
        if not debs:
            raise MkosiError("apt planned no packages to install")
        archives = {str(d): _read_control_archive(d) for d in debs}
        controls = {k: v[0] for k, v in archives.items()}
        essential = essential_closure(controls)
        base = [d for d in debs if controls[str(d)]["Package"] in essential]
        base = _essential_unpack_order(base, archives)
        scaffold = _scaffold(base, controls)

        with log.step(f"Extracting {len(scaffold)} packages to run dpkg in the image"):
            _extract(scaffold, root)
            if not (root / "bin/sh").exists() and not (root / "bin/sh").is_symlink():
                raise MkosiError("the essential packages provide no /bin/sh")

        with _chroot(cfg, apt) as chroot:
            with log.step(f"Installing {len(base)} essential packages"):
                _unpack_essential(chroot, base, controls)
                chroot.dpkg(DpkgOp("configure", (), ("--pending",)), extra=["--force-depends"])
            rest = _without(plan, essential, controls)
            if rest:
                with log.step(f"Installing {len(debs) - len(base)} more packages"):
                    for op in rest:
                        chroot.dpkg(op)

        _finish(apt, packages, set(), write_sources=not had_sources)


def _without(plan: Sequence[DpkgOp], installed: set[str],
             controls: dict[str, dict[str, str]]) -> list[DpkgOp]:
    """apt's plan minus the given packages; adjacent runs of the same kind are merged."""
    ops: list[DpkgOp] = []
    for op in plan:
        if op.action in ("unpack", "install"):
            args = tuple(a for a in op.args if controls[a]["Package"] not in installed)
        else:
            args = tuple(a for a in op.args if a == "--pending" or a.split(":")[0] not in installed)
        if not args:
            continue
        mergeable = ops and ops[-1].action == op.action and ops[-1].options == op.options
        if mergeable and "--pending" not in args and "--pending" not in ops[-1].args:
            ops[-1] = DpkgOp(op.action, op.options, ops[-1].args + args)
        else:
            ops.append(DpkgOp(op.action, op.options, args))
    return ops


def _unpack_essential(chroot: _Chroot, base: Sequence[Path], controls: dict[str, dict[str, str]]) -> None:
    """Unpack the essential set with the image's dpkg, forcing their mutual dependencies (they are not
    configured yet). Should a preinst fail because an essential package it uses (without declaring it,
    as it may) was not unpacked yet, fall back to the traditional bootstrap: extract all of the remaining
    essential packages with dpkg-deb, then let dpkg unpack them over that."""
    try:
        chroot.dpkg(DpkgOp("unpack", (), tuple(str(d) for d in base)), extra=["--force-depends"])
        return
    except MkosiError as e:
        first_error = e
    done = {p.name for p in installed_packages(chroot.root) if p.status in ("unpacked", "installed")}
    remaining = [d for d in base if controls[str(d)]["Package"] not in done]
    log.info(f"Unpacking the essential set failed ({first_error}); "
             f"extracting the {len(remaining)} remaining packages first and trying again")
    _extract(remaining, chroot.root, mounted=True)
    chroot.dpkg(DpkgOp("unpack", (), tuple(str(d) for d in remaining)), extra=["--force-depends"])


def _plan_debs(plan: Sequence[DpkgOp]) -> list[Path]:
    debs: dict[Path, None] = {}
    for op in plan:
        if op.action in ("unpack", "install"):
            debs.update((Path(a), None) for a in op.args)
    return list(debs)


def _decompress_plan(apt: _Apt, plan: Sequence[DpkgOp]) -> list[DpkgOp]:
    """The plan with each .deb replaced by its copy with an uncompressed file system tarball."""
    debs = _plan_debs(plan)
    if not debs:
        return list(plan)
    with log.step("Decompressing packages"):
        mapping = {str(k): str(v) for k, v in _uncompressed(debs, apt.uncompressed).items()}
        _prune_uncompressed(apt.uncompressed, apt.archives)
    return [DpkgOp(op.action, op.options, tuple(mapping.get(a, a) for a in op.args)) for op in plan]


def _replay(cfg: AptConfig, apt: _Apt, plan: Sequence[DpkgOp]) -> None:
    with _chroot(cfg, apt) as chroot:
        for op in plan:
            chroot.dpkg(op)


def install_more(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Install more packages (with their dependencies) into a root that already has a dpkg database."""
    _check_distribution(cfg)
    if not packages:
        return
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    if not _status_nonempty(cfg.root):
        raise MkosiError(f"{cfg.root} has no dpkg database to install {', '.join(packages)} into")
    keyring = _keyring(cfg)
    before = {p.name for p in installed_packages(cfg.root)}
    with log.step(f"Installing {', '.join(packages)}"):
        apt = _setup_apt(cfg, cfg.root / "var/lib/dpkg/status", keyring)
        with _cache_locked(apt):
            _update(apt)
            plan = _decompress_plan(apt, _plan(apt, "install", packages, "resolving packages"))
        if plan:
            _replay(cfg, apt, plan)
        _finish(apt, packages, before, write_sources=False)


def remove(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Purge packages (and what depends on them) from the root; those not installed are skipped."""
    _check_distribution(cfg)
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    installed = {p.name for p in installed_packages(cfg.root)}
    wanted = [p for p in packages if _strip_package_spec(p) in installed]
    for p in packages:
        if p not in wanted:
            log.debug(f"not removing {p}: it is not installed")
    if not wanted:
        return
    with log.step(f"Removing {', '.join(wanted)}"):
        apt = _setup_apt(cfg, cfg.root / "var/lib/dpkg/status", _keyring(cfg))
        plan = _plan(apt, "purge", wanted, "removing packages", downloads=False)
        if plan:
            _replay(cfg, apt, plan)
        if (cfg.root / "var/lib/apt/extended_states").exists():
            _write_extended_states(cfg.root, cfg.architecture, set(), installed)


def clean_metadata(root: Path) -> None:
    """Drop package manager state an image does not need (CleanPackageMetadata=yes)."""
    def rm(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()

    for d in ("var/lib/apt/lists", "var/cache/apt"):
        if (root / d).is_dir():
            for entry in (root / d).iterdir():
                rm(entry)
    if not _apt_in_root(root):
        rm(root / "var/lib/apt/extended_states")
    for log_path in ("var/log/apt", "var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log"):
        rm(root / log_path)
    dpkg_db = root / "var/lib/dpkg"
    if not (root / "usr/bin/dpkg").exists():
        rm(dpkg_db)
    elif dpkg_db.is_dir():
        for p in dpkg_db.glob("*-old"):
            rm(p)
