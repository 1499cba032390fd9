"""Facts about distributions that the configuration layer needs before any plugin runs: default releases,
how a host identifies itself in os-release, architecture names, the default root file system.

A leaf: it imports nothing of mkosi but the enums, so the config layer can read it without reaching up
into the plugins and installers."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

from mkosi.config.enums import Distribution

DEFAULT_RELEASES: dict[Distribution, str] = {
    Distribution.debian: "trixie",
    Distribution.ubuntu: "noble",
    Distribution.fedora: "43",
    Distribution.centos: "9",
    Distribution.rocky: "9",
    Distribution.rocky_epel: "9",
    Distribution.alma: "9",
    Distribution.alma_epel: "9",
    Distribution.centos_epel: "9",
    Distribution.mageia: "9",
    Distribution.openmandriva: "cooker",
    Distribution.photon: "5.0",
    Distribution.clear: "latest",
    Distribution.arch: "rolling",
    Distribution.opensuse: "tumbleweed",
    Distribution.gentoo: "23.0",
}

# os-release ID= (and ID_LIKE=) values of hosts running each distribution.
HOST_OS_IDS: dict[Distribution, tuple[str, ...]] = {
    Distribution.debian: ("debian",),
    Distribution.ubuntu: ("ubuntu",),
    Distribution.fedora: ("fedora",),
    Distribution.centos: ("centos",),
    Distribution.rocky: ("rocky",),
    Distribution.alma: ("almalinux",),
    Distribution.mageia: ("mageia",),
    Distribution.openmandriva: ("openmandriva",),
    Distribution.photon: ("photon",),
    Distribution.clear: ("clear-linux-os",),
    Distribution.arch: ("arch",),
    Distribution.opensuse: ("opensuse-tumbleweed", "opensuse-leap", "opensuse", "sles"),
    Distribution.gentoo: ("gentoo",),
}

# The root file system a disk image gets when nothing says otherwise (the %F specifier).
DEFAULT_FILESYSTEMS: dict[Distribution, str] = {
    Distribution.fedora: "btrfs",
    Distribution.centos: "xfs",
    Distribution.rocky: "xfs",
    Distribution.alma: "xfs",
    Distribution.opensuse: "btrfs",
}


def has_installer(distribution: Distribution) -> bool:
    """Whether this mkosi can build the distribution (the others are known names only, for summary)."""
    return distribution in DEFAULT_RELEASES


def default_release(distribution: Distribution) -> str:
    return DEFAULT_RELEASES.get(distribution, "")


def default_filesystem(distribution: Distribution) -> str:
    return DEFAULT_FILESYSTEMS.get(distribution, "ext4")


def distribution_from_os_id(os_id: str, id_like: str = "") -> Optional[Distribution]:
    for candidate in [os_id, *id_like.split()]:
        for dist, ids in HOST_OS_IDS.items():
            if candidate in ids:
                return dist
    return None


def read_os_release(root: Path = Path("/")) -> dict[str, str]:
    for candidate in (root / "etc/os-release", root / "usr/lib/os-release"):
        try:
            text = candidate.read_text(errors="replace")
        except OSError:
            continue
        fields = {}
        for line in text.split("\n"):
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                fields[k.strip()] = v.strip().strip("\"'")
        return fields
    return {}


def host_distribution() -> tuple[Optional[Distribution], Optional[str]]:
    """The host's distribution and release, from its os-release."""
    osr = read_os_release()
    dist = distribution_from_os_id(osr.get("ID", ""), osr.get("ID_LIKE", ""))
    release = osr.get("VERSION_CODENAME") or osr.get("VERSION_ID")
    if dist == Distribution.arch:
        release = "rolling"
    return dist, release


# Canonical architecture names are the kernel's (uname -m); other spellings are accepted.
ARCH_ALIASES = {
    "amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64", "i386": "x86", "i686": "x86",
    "armhf": "arm", "armv7l": "arm", "ppc64el": "ppc64le", "riscv64": "riscv64", "s390x": "s390x",
}


def normalize_architecture(arch: str) -> str:
    return ARCH_ALIASES.get(arch, arch)


def host_architecture() -> str:
    return normalize_architecture(platform.machine())
