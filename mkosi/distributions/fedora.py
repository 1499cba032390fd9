"""The RPM family: Fedora, CentOS Stream, Rocky, Alma (with EPEL variants), Mageia, OpenMandriva,
Photon and Clear Linux."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin

if TYPE_CHECKING:
    from mkosi.config.settings import MkosiArgs


class RpmDistribution(DistributionPlugin):
    package_manager = "dnf"
    epel: ClassVar[bool] = False

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        return []

    def repositories(self, args: MkosiArgs) -> list[str]:
        mirror = args.mirror or self.default_mirror(args.architecture) or ""
        repos = self.repo_urls(mirror.rstrip("/"), args)
        if self.epel:
            repos.append(f"https://dl.fedoraproject.org/pub/epel/{args.release}/Everything/{args.architecture}")
        return repos + list(args.repositories)


class Fedora(RpmDistribution):
    distribution = Distribution.fedora
    default_release = "43"
    host_os_ids = ("fedora",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://dl.fedoraproject.org/pub/fedora/linux"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        if args.release == "rawhide":
            return [f"{mirror}/development/rawhide/Everything/{args.architecture}/os"]
        return [f"{mirror}/releases/{args.release}/Everything/{args.architecture}/os",
                f"{mirror}/updates/{args.release}/Everything/{args.architecture}"]


class CentOS(RpmDistribution):
    distribution = Distribution.centos
    default_release = "9"
    host_os_ids = ("centos",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://mirror.stream.centos.org"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        return [f"{mirror}/{args.release}-stream/{repo}/{args.architecture}/os" for repo in ("BaseOS", "AppStream")]


class CentOSEpel(CentOS):
    distribution = Distribution.centos_epel
    epel = True


class Rocky(RpmDistribution):
    distribution = Distribution.rocky
    default_release = "9"
    host_os_ids = ("rocky",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://download.rockylinux.org/pub/rocky"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        return [f"{mirror}/{args.release}/{repo}/{args.architecture}/os" for repo in ("BaseOS", "AppStream")]


class RockyEpel(Rocky):
    distribution = Distribution.rocky_epel
    epel = True


class Alma(RpmDistribution):
    distribution = Distribution.alma
    default_release = "9"
    host_os_ids = ("almalinux",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://repo.almalinux.org/almalinux"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        return [f"{mirror}/{args.release}/{repo}/{args.architecture}/os" for repo in ("BaseOS", "AppStream")]


class AlmaEpel(Alma):
    distribution = Distribution.alma_epel
    epel = True


class Mageia(RpmDistribution):
    distribution = Distribution.mageia
    default_release = "9"
    host_os_ids = ("mageia",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://mirror.mageia.org/distrib"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        base = f"{mirror}/{args.release}/{args.architecture}/media/core"
        return [f"{base}/release", f"{base}/updates"]


class OpenMandriva(RpmDistribution):
    distribution = Distribution.openmandriva
    default_release = "cooker"
    host_os_ids = ("openmandriva",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "http://abf-downloads.openmandriva.org"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        base = f"{mirror}/{args.release}/repository/{args.architecture}/main"
        return [f"{base}/release", f"{base}/updates"]


class Photon(RpmDistribution):
    distribution = Distribution.photon
    default_release = "5.0"
    package_manager = "tdnf"
    host_os_ids = ("photon",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://packages.vmware.com/photon"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        rel = args.release
        arch = args.architecture
        return [f"{mirror}/{rel}/photon_release_{rel}_{arch}", f"{mirror}/{rel}/photon_updates_{rel}_{arch}"]


class Clear(RpmDistribution):
    distribution = Distribution.clear
    default_release = "latest"
    package_manager = "swupd"
    host_os_ids = ("clear-linux-os",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://cdn.download.clearlinux.org"

    def repo_urls(self, mirror: str, args: MkosiArgs) -> list[str]:
        return [f"{mirror}/update/{args.release}"]


PLUGINS: list[DistributionPlugin] = [
    Fedora(), CentOS(), CentOSEpel(), Rocky(), RockyEpel(), Alma(), AlmaEpel(), Mageia(), OpenMandriva(),
    Photon(), Clear(),
]
