"""Arch Linux (pacman)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin

if TYPE_CHECKING:
    from mkosi.config.settings import MkosiArgs


class Arch(DistributionPlugin):
    distribution = Distribution.arch
    default_release = "rolling"
    package_manager = "pacman"
    host_os_ids = ("arch",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://geo.mirror.pkgbuild.com" if arch == "x86_64" else "http://mirror.archlinuxarm.org"

    def repositories(self, args: MkosiArgs) -> list[str]:
        mirror = args.mirror or self.default_mirror(args.architecture)
        repos = [f"{name}::{mirror}/{name}/os/$arch" for name in ("core", "extra")]
        return repos + list(args.repositories)
