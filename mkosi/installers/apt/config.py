"""What an apt build is told (AptConfig) and the distribution facts the other modules share."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from mkosi.errors import MkosiError
from mkosi.installers.base import InstallerConfig

# Where the archive signing keys live on the host, and which package ships them.
KEYRINGS: dict[str, tuple[str, str]] = {
    "debian": ("/usr/share/keyrings/debian-archive-keyring.gpg", "debian-archive-keyring"),
    "ubuntu": ("/usr/share/keyrings/ubuntu-archive-keyring.gpg", "ubuntu-keyring"),
}


# Releases that predate merged /usr: the root keeps separate /bin, /sbin and /lib.
UNMERGED_RELEASES = frozenset({"wheezy", "jessie", "stretch", "trusty", "xenial", "bionic"})


# Ports whose dynamic loader lives in /lib64 (merged /usr needs a lib64 -> usr/lib64 symlink there).
LIB64_ARCHITECTURES = frozenset({"amd64", "ppc64", "ppc64el", "mips64el", "loong64", "sparc64"})


@dataclass(frozen=True, kw_only=True)
class AptConfig(InstallerConfig):
    distribution: str
    release: str
    mirror: str
    components: list[str]
    extra_repositories: list[str]
    architecture: str
    key_check: bool = True                 # RepositoryKeyCheck=no: accept unsigned or unverifiable archives
    key_fetch: bool = False                # RepositoryKeyFetch=: download missing archive keys
    snapshot: Optional[str] = None         # Snapshot=: install from this snapshot of the archive
    backports: bool = False                # Repositories=backports: add the RELEASE-backports suite
    # The shared fields (InstallerConfig): `sandbox` says how host tools (apt-get, dpkg-deb, tar) run;
    # dpkg runs in a chroot sandbox derived from it.


def check_distribution(cfg: AptConfig) -> None:
    if cfg.distribution not in KEYRINGS:
        raise MkosiError(f"the apt installer cannot install distribution '{cfg.distribution}'",
                         hint="supported are: " + ", ".join(sorted(KEYRINGS)))
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+~-]*", cfg.release):
        raise MkosiError(f"invalid release name '{cfg.release}'")
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", cfg.architecture):
        raise MkosiError(f"invalid architecture '{cfg.architecture}'")
