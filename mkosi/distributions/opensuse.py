"""openSUSE (zypper)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin

if TYPE_CHECKING:
    from mkosi.config.settings import MkosiArgs


class OpenSUSE(DistributionPlugin):
    distribution = Distribution.opensuse
    default_release = "tumbleweed"
    package_manager = "zypper"
    host_os_ids = ("opensuse-tumbleweed", "opensuse-leap", "opensuse", "sles")

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://download.opensuse.org"

    def repositories(self, args: MkosiArgs) -> list[str]:
        mirror = args.mirror or self.default_mirror(args.architecture)
        if args.release == "tumbleweed":
            repos = [f"{mirror}/tumbleweed/repo/oss", f"{mirror}/update/tumbleweed"]
        else:
            repos = [f"{mirror}/distribution/leap/{args.release}/repo/oss", f"{mirror}/update/leap/{args.release}/oss"]
        return repos + list(args.repositories)
