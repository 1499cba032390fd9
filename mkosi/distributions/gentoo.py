"""Gentoo (emerge from a stage3)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin

if TYPE_CHECKING:
    from mkosi.config.settings import MkosiArgs


class Gentoo(DistributionPlugin):
    distribution = Distribution.gentoo
    default_release = "23.0"
    package_manager = "emerge"
    host_os_ids = ("gentoo",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://distfiles.gentoo.org"

    def repositories(self, args: MkosiArgs) -> list[str]:
        mirror = args.mirror or self.default_mirror(args.architecture)
        return [f"{mirror}/releases/amd64/autobuilds/latest-stage3-amd64-systemd.txt", *list(args.repositories)]
