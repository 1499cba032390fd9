"""Which repositories a build uses: sources.list lines, mirrors, keyrings, list file names."""
from __future__ import annotations

import re
import shutil
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.config import KEYRINGS, AptConfig, check_distribution
from mkosi.installers.apt.debs import parse_deb822

DEBIAN_MIRROR = "http://deb.debian.org/debian"


DEBIAN_SECURITY_MIRROR = "http://security.debian.org/debian-security"


UBUNTU_MIRROR = "http://archive.ubuntu.com/ubuntu"


UBUNTU_PORTS_MIRROR = "http://ports.ubuntu.com/ubuntu-ports"


UBUNTU_SECURITY_MIRROR = "http://security.ubuntu.com/ubuntu"


# Debian suites that have no -updates/-security companions.
_DEBIAN_ROLLING = frozenset({"sid", "unstable", "experimental", "rc-buggy"})


# Debian releases whose security suite is still called RELEASE/updates.
_DEBIAN_OLD_SECURITY = frozenset({"wheezy", "jessie", "stretch", "buster"})


# Ubuntu's main archive only carries these ports; the others are on ports.ubuntu.com.
_UBUNTU_PRIMARY_ARCHITECTURES = frozenset({"amd64", "i386"})


def default_mirror(distribution: str, architecture: str) -> str:
    if distribution == "ubuntu":
        return UBUNTU_MIRROR if architecture in _UBUNTU_PRIMARY_ARCHITECTURES else UBUNTU_PORTS_MIRROR
    return DEBIAN_MIRROR


def components_field(cfg: AptConfig) -> str:
    # Defaults to "main" for Ubuntu as well: systemd, udev, the kernel and sshd are all in main; add
    # "universe" through Repositories= when needed.
    seen: list[str] = []
    for c in cfg.components or ["main"]:
        for part in c.split():
            if part not in seen:
                seen.append(part)
    return " ".join(seen)


DEBIAN_SNAPSHOT_MIRROR = "https://snapshot.debian.org"


UBUNTU_SNAPSHOT_MIRROR = "https://snapshot.ubuntu.com"


SNAPSHOT_ID = re.compile(r"\d{8}T\d{6}Z")


def snapshot_urls(cfg: AptConfig) -> tuple[str, str]:
    """The archive and security URLs of Snapshot=: snapshot.debian.org's (or Mirror='s)
    archive/debian/ID and archive/debian-security/ID; snapshot.ubuntu.com's ubuntu/ID for both."""
    snapshot = cfg.snapshot or ""
    if not SNAPSHOT_ID.fullmatch(snapshot):
        raise MkosiError(f"Snapshot={snapshot}: a {cfg.distribution} snapshot is a UTC time stamp "
                         "like 20250101T000000Z",
                         hint="mkosi latest-snapshot prints the newest one")
    explicit = cfg.mirror and cfg.mirror.rstrip("/") != default_mirror(cfg.distribution, cfg.architecture)
    if cfg.distribution == "ubuntu":
        base = (cfg.mirror if explicit else UBUNTU_SNAPSHOT_MIRROR).rstrip("/")
        return f"{base}/ubuntu/{snapshot}", f"{base}/ubuntu/{snapshot}"
    base = (cfg.mirror if explicit else DEBIAN_SNAPSHOT_MIRROR).rstrip("/")
    return f"{base}/archive/debian/{snapshot}", f"{base}/archive/debian-security/{snapshot}"


def main_lines(cfg: AptConfig) -> list[str]:
    if cfg.snapshot:
        return snapshot_lines(cfg)
    mirror = (cfg.mirror or default_mirror(cfg.distribution, cfg.architecture)).rstrip("/")
    comps = components_field(cfg)
    release = cfg.release
    lines = [f"deb {mirror} {release} {comps}"]

    if cfg.distribution == "debian":
        if not has_companion_suites(cfg):
            return lines
        lines.append(f"deb {mirror} {release}-updates {comps}")
        suite = f"{release}/updates" if release in _DEBIAN_OLD_SECURITY else f"{release}-security"
        lines.append(f"deb {DEBIAN_SECURITY_MIRROR} {suite} {comps}")
        return lines + backports_lines(cfg, "deb", mirror)

    # Ubuntu: the official archive publishes security fixes from security.ubuntu.com (ports carry
    # their own -security pocket); a custom mirror is expected to mirror all pockets.
    lines.append(f"deb {mirror} {release}-updates {comps}")
    security = UBUNTU_SECURITY_MIRROR if mirror == UBUNTU_MIRROR else mirror
    lines.append(f"deb {security} {release}-security {comps}")
    return lines + backports_lines(cfg, "deb", mirror)


def has_companion_suites(cfg: AptConfig) -> bool:
    """Whether the release has -updates, security and -backports suites (Debian's unstable suites and a
    backports suite given as the release have none)."""
    if cfg.distribution != "debian":
        return True
    return cfg.release not in _DEBIAN_ROLLING and not cfg.release.endswith("-backports")


def backports_lines(cfg: AptConfig, deb: str, archive: str) -> list[str]:
    """Repositories=backports: the release's backports suite. Its Release file marks it NotAutomatic, so
    apt takes a package from it only when asked by name (PACKAGE/RELEASE-backports) or when nothing
    else provides it."""
    if not cfg.backports or not has_companion_suites(cfg):
        return []
    return [f"{deb} {archive} {cfg.release}-backports {components_field(cfg)}"]


def snapshot_lines(cfg: AptConfig) -> list[str]:
    """The sources of a snapshot: every suite from the snapshot; its Release files stop being valid
    after a while (Valid-Until), which is no reason to refuse a snapshot."""
    archive, security = snapshot_urls(cfg)
    comps = components_field(cfg)
    release = cfg.release
    deb = "deb [check-valid-until=no]"
    lines = [f"{deb} {archive} {release} {comps}"]
    if cfg.distribution == "debian":
        if not has_companion_suites(cfg):
            return lines
        suite = f"{release}/updates" if release in _DEBIAN_OLD_SECURITY else f"{release}-security"
        return [*lines, f"{deb} {archive} {release}-updates {comps}", f"{deb} {security} {suite} {comps}",
                *backports_lines(cfg, deb, archive)]
    return [*lines, f"{deb} {archive} {release}-updates {comps}", f"{deb} {security} {release}-security {comps}",
            *backports_lines(cfg, deb, archive)]


def extra_lines(cfg: AptConfig) -> list[str]:
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


def repository_directory_files(cfg: AptConfig, suffixes: tuple[str, ...]) -> list[Path]:
    d = cfg.repository_directory
    if d is None:
        return []
    if not d.is_dir():
        raise MkosiError(f"repository directory {d} does not exist")
    return sorted(p for p in d.iterdir() if p.is_file() and p.name.endswith(suffixes))


def repository_lines(cfg: AptConfig) -> list[str]:
    """The sources.list lines a build uses (in one-line format, also for *.sources files)."""
    check_distribution(cfg)
    lines = main_lines(cfg) + extra_lines(cfg)
    for p in repository_directory_files(cfg, (".list", ".sources")):
        text = p.read_text()
        if p.name.endswith(".sources"):
            lines += _deb822_to_lines(text)
        else:
            lines += [" ".join(ln.split()) for ln in text.splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
    return lines


# Where RepositoryKeyFetch= downloads the archive signing keys (ASCII-armored) from.
KEY_URLS: dict[str, tuple[str, ...]] = {
    "debian": tuple(f"https://ftp-master.debian.org/keys/archive-key-{n}{s}.asc"
                    for n in ("11", "12", "13") for s in ("", "-security")),
    "ubuntu": tuple(f"https://keyserver.ubuntu.com/pks/lookup?op=get&search=0x{fpr}"
                    for fpr in ("F6ECB3762474EDA9D21B7022871920D1991BC93C",    # Ubuntu archive key (2018)
                                "790BC7277767219C42C86F933B4FE6ACC0B21F32")),  # Ubuntu archive key (2012)
}
KEY_FETCH_TIMEOUT = 30


def archive_keyring(cfg: AptConfig) -> Path:
    """The archive keyring: the host's (or the tools tree's, or a sandbox tree's), else with
    RepositoryKeyFetch=yes the keys downloaded into the workspace."""
    path, package = KEYRINGS[cfg.distribution]
    found = cfg.sandbox.visible(path)
    if found.is_file():
        return found
    if cfg.key_fetch:
        return fetch_keyring(cfg)
    raise MkosiError(f"the {cfg.distribution} archive keyring {path} is missing on this host",
                     hint=f"install it with: apt-get install {package}, or set RepositoryKeyFetch=yes")


def fetch_keyring(cfg: AptConfig, urls: Optional[Sequence[str]] = None) -> Path:
    """Download the distribution's signing keys into one armored keyring file in the workspace."""
    urls = KEY_URLS[cfg.distribution] if urls is None else urls
    if not cfg.network:
        raise MkosiError(f"the {cfg.distribution} archive keyring is missing and the network may not be used",
                         hint=f"install {KEYRINGS[cfg.distribution][1]} or allow the network (CacheOnly=)")
    keys = []
    for url in urls:
        log.info(f"Fetching the {cfg.distribution} signing key {url}")
        try:
            with urllib.request.urlopen(url, timeout=KEY_FETCH_TIMEOUT) as response:
                text = response.read().decode("ascii", errors="replace")
        except (OSError, ValueError) as e:
            raise MkosiError(f"RepositoryKeyFetch=: cannot download {url}: {e}",
                             hint=f"install {KEYRINGS[cfg.distribution][1]} on the host instead") from None
        if "-----BEGIN PGP PUBLIC KEY BLOCK-----" not in text:
            raise MkosiError(f"RepositoryKeyFetch=: {url} did not return an OpenPGP public key")
        keys.append(text.strip() + "\n")
    dest = cfg.workspace / "fetched-keys" / f"{cfg.distribution}-archive-keyring.asc"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("".join(keys))
    return dest


def uri_to_filename(uri: str) -> str:
    """How apt names the list files it stores for a URI."""
    uri = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://", "", uri)
    uri = re.sub(r"^[^/@]*@", "", uri)
    quoted = "".join(f"%{ord(c):02x}" if c in "\\|{}[]<>\"^~_=!@#$%&*" else c for c in uri)
    return quoted.replace("/", "_")


def list_prefixes(lines: Iterable[str]) -> list[str]:
    prefixes = []
    for line in lines:
        parts = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(parts) >= 3 and parts[0] == "deb" and not parts[2].endswith("/"):
            prefixes.append(uri_to_filename(f"{parts[1].rstrip('/')}/dists/{parts[2]}/"))
    return prefixes


def write_sources(cfg: AptConfig) -> None:
    etc = cfg.root / "etc/apt"
    (etc / "sources.list.d").mkdir(parents=True, exist_ok=True)
    lines = main_lines(cfg) + extra_lines(cfg)
    (etc / "sources.list").write_text("# Written by mkosi.\n" + "\n".join(lines) + "\n")
    for p in repository_directory_files(cfg, (".list", ".sources")):
        dest = etc / "sources.list.d" / p.name
        if not dest.exists():
            shutil.copyfile(p, dest)
    for p in repository_directory_files(cfg, (".gpg", ".asc")):
        (etc / "trusted.gpg.d").mkdir(exist_ok=True)
        dest = etc / "trusted.gpg.d" / p.name
        if not dest.exists():
            shutil.copyfile(p, dest)
