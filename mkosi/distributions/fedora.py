"""The RPM family installed with dnf: Fedora, CentOS Stream, Rocky, Alma (each with an _epel variant),
Mageia, OpenMandriva and Photon; and Clear Linux, installed with swupd.

Repository layouts (MIRROR is Mirror= or the default mirror; ARCH the rpm architecture):

  Fedora N          MIRROR/releases/N/Everything/ARCH/os/ and MIRROR/updates/N/Everything/ARCH/
  Fedora rawhide    MIRROR/development/rawhide/Everything/ARCH/os/
  CentOS Stream N   MIRROR/N-stream/{BaseOS,AppStream}/ARCH/os/  (8: vault.centos.org)
  Rocky, Alma N     MIRROR/N/{BaseOS,AppStream}/ARCH/os/
  *_epel            adds CRB (PowerTools on 8), which EPEL needs, and
                    https://dl.fedoraproject.org/pub/epel/N/Everything/ARCH/
  Mageia N          MIRROR/N/ARCH/media/core/{release,updates}/
  OpenMandriva R    MIRROR/R/repository/ARCH/main/{release,updates}/
  Photon R          MIRROR/R/photon_{release,updates}_R_ARCH/
  Clear             MIRROR/update (swupd's content URL)

Photon's own installer, tdnf, is not packaged for Debian: Photon images are installed with dnf,
which reads the same repository metadata.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from mkosi import log
from mkosi.config.enums import BootProtocol, Distribution
from mkosi.distributions import DistributionPlugin
from mkosi.distributions.facts import host_architecture
from mkosi.errors import MkosiError
from mkosi.installers import dnf, localrepo, rpm
from mkosi.installers.base import PackageInfo
from mkosi.installers.dnf import HOST_REPOSDIRS, DnfConfig, RpmRepo, is_url, url_repos
from mkosi.installers.rpm import LEGACY_RPMDB, SYSIMAGE_RPMDB, dnf_arch, remove_paths
from mkosi.run import find_tool, run

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.base import PackageInfo
    from mkosi.installers.dnf import DnfConfig, RpmRepo

# Signing keys shipped by the distribution-gpg-keys package, where a host has it.
HOST_KEY_DIR = Path("/usr/share/distribution-gpg-keys")
EPEL_MIRROR = "https://dl.fedoraproject.org/pub/epel"


def _rpm_arch(arch: str) -> str:

    return dnf_arch(arch)


def _major(release: str) -> str:
    m = re.match(r"\d+", release)
    return m.group(0) if m else release


class RpmDistribution(DistributionPlugin):
    package_manager = "dnf"
    epel: ClassVar[bool] = False
    kernel_packages: ClassVar[tuple[str, ...]] = ("kernel-core", "systemd-udev", "dracut")
    host_keys: ClassVar[tuple[str, ...]] = ()   # paths below HOST_KEY_DIR, with {release}/{major}

    # ---- repositories

    def mirror(self, config: Config) -> str:
        return (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")

    def gpgkeys(self, config: Config) -> tuple[str, ...]:
        return ()

    def _host_gpgkeys(self, config: Config) -> tuple[str, ...]:
        keys = []
        for k in self.host_keys:
            p = HOST_KEY_DIR / k.format(release=config.release, major=_major(config.release))
            if p.is_file():
                keys.append(f"file://{p}")
        return tuple(keys)

    def main_repos(self, config: Config) -> list[RpmRepo]:
        return []

    def epel_repos(self, config: Config) -> list[RpmRepo]:

        major = _major(config.release)
        return [RpmRepo(id="epel", name=f"EPEL {major}",
                        baseurl=(f"{EPEL_MIRROR}/{major}/Everything/{_rpm_arch(config.architecture)}/",),
                        gpgkeys=(f"{EPEL_MIRROR}/RPM-GPG-KEY-EPEL-{major}",))]

    def repos(self, config: Config) -> list[RpmRepo]:
        """Every repository a build defines: the distribution's (unless the host's are used, or
        LocalMirror= replaces them) and Repositories= URLs."""

        if config.local_mirror:
            # mkosi 14's meaning: one flat mirror for the whole build; the image's own repository
            # files come from its packages and are untouched.
            local = RpmRepo(id="mkosi-local-mirror", name="Local mirror", baseurl=(config.local_mirror,))
            return [local, *url_repos([r for r in config.repositories if is_url(r)])]
        repos = [] if config.use_host_repositories else self.main_repos(config)
        if self.epel and not config.use_host_repositories:
            repos += self.epel_repos(config)
        return repos + url_repos([r for r in config.repositories if is_url(r)])

    def repositories(self, config: Config) -> list[str]:

        lines = []
        if config.use_host_repositories:
            lines += [f"host repositories in {d}" for d in HOST_REPOSDIRS]
        lines += [r.summary() for r in self.repos(config)]
        lines += [f"repository {r}" for r in config.repositories if not is_url(r)]
        if config.repository_directory is not None:
            lines.append(f"repository files in {config.repository_directory}")
        return lines

    # ---- installation

    def rpmdb(self, config: Config) -> str:

        return LEGACY_RPMDB

    def dnf_config(self, ctx: Context) -> DnfConfig:

        config = ctx.config
        return DnfConfig.for_build(
            ctx,
            release=config.release,
            architecture=config.architecture,
            repos=tuple(self.repos(config)),
            use_host_repositories=config.use_host_repositories,
            enable_repos=tuple(r for r in config.repositories if not is_url(r)),
            rpmdb=self.rpmdb(config),
            host_architecture=host_architecture(),
            distribution=self.distribution.value,
            key_check=config.repository_key_check,
        )

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["systemd"]
        if config.bootable:
            pkgs += list(self.kernel_packages)
        return pkgs

    def conditional_packages(self, config: Config) -> list[str]:
        # dnf resolves RPM boolean dependencies: each package comes only if the other one is installed.
        pairs: list[tuple[str, str]] = []
        if config.bootable:
            pairs.append(("systemd-udev", "systemd"))
            if BootProtocol.uefi in config.boot_protocols:
                pairs += [(p, "systemd") for p in self.uefi_packages]
            if config.encrypt is not None:
                pairs.append(("cryptsetup", "dracut"))
        if config.netdev or config.ssh:
            pairs.append(("systemd-networkd", "systemd"))
        return [f"({p} if {condition})" for p, condition in pairs]

    def install(self, ctx: Context, packages: list[str]) -> None:

        dnf.install(dataclasses.replace(self.dnf_config(ctx), local_repository=localrepo.for_build(ctx, "rpm")),
                    packages)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        dnf.remove(self.dnf_config(ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        return rpm.manifest_packages(ctx.root, ctx.workspace)

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        rpm.save_package_list(ctx.root, ctx.workspace)  # the manifest is written after the database is gone
        dnf.clean_metadata(ctx.root, force)

    def package_manager_present(self, ctx: Context) -> bool:

        return dnf.dnf_in_root(ctx.root)


class Fedora(RpmDistribution):
    distribution = Distribution.fedora
    uefi_packages = ("systemd-boot-unsigned",)
    host_keys = ("fedora/RPM-GPG-KEY-fedora-{release}-primary",)

    def default_mirror(self, arch: str) -> Optional[str]:
        # ppc64le and s390x are published on the secondary architectures' tree.
        if arch in ("ppc64le", "s390x"):
            return "https://dl.fedoraproject.org/pub/fedora-secondary"
        return "https://dl.fedoraproject.org/pub/fedora/linux"

    def gpgkeys(self, config: Config) -> tuple[str, ...]:
        return self._host_gpgkeys(config) or ("https://fedoraproject.org/fedora.gpg",)

    def main_repos(self, config: Config) -> list[RpmRepo]:

        m, rel, arch = self.mirror(config), config.release, _rpm_arch(config.architecture)
        keys = self.gpgkeys(config)
        if rel == "rawhide":
            return [RpmRepo(id="fedora", name="Fedora rawhide",
                            baseurl=(f"{m}/development/rawhide/Everything/{arch}/os/",), gpgkeys=keys)]
        return [RpmRepo(id="fedora", name=f"Fedora {rel}",
                        baseurl=(f"{m}/releases/{rel}/Everything/{arch}/os/",), gpgkeys=keys),
                RpmRepo(id="updates", name=f"Fedora {rel} updates",
                        baseurl=(f"{m}/updates/{rel}/Everything/{arch}/",), gpgkeys=keys)]

    def rpmdb(self, config: Config) -> str:

        # Fedora 36 moved the database to /usr.
        if config.release.isdigit() and int(config.release) < 36:
            return LEGACY_RPMDB
        return SYSIMAGE_RPMDB


class EnterpriseLinux(RpmDistribution):
    """CentOS Stream and its rebuilds: BaseOS and AppStream; CRB (PowerTools before 9) for EPEL."""


    def release_dir(self, config: Config) -> str:
        return config.release

    def repo_ids(self, config: Config) -> list[str]:
        repos = ["BaseOS", "AppStream"]
        if self.epel:
            repos.append("PowerTools" if _major(config.release) == "8" else "CRB")
        return repos

    def main_repos(self, config: Config) -> list[RpmRepo]:

        m, arch = self.mirror(config), _rpm_arch(config.architecture)
        d = self.release_dir(config)
        keys = self.gpgkeys(config)
        return [RpmRepo(id=repo.lower(), name=f"{self.distribution.value} {config.release} {repo}",
                        baseurl=(f"{m}/{d}/{repo}/{arch}/os/",), gpgkeys=keys)
                for repo in self.repo_ids(config)]

    def rpmdb(self, config: Config) -> str:

        major = _major(config.release)
        return SYSIMAGE_RPMDB if major.isdigit() and int(major) >= 10 else LEGACY_RPMDB


class CentOS(EnterpriseLinux):
    distribution = Distribution.centos
    host_keys = ("centos/RPM-GPG-KEY-CentOS-Official",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://mirror.stream.centos.org"

    def mirror(self, config: Config) -> str:
        default = self.default_mirror(config.architecture)
        if config.mirror in (None, default) and _major(config.release) == "8":
            return "https://vault.centos.org"  # CentOS Stream 8 reached its end of life
        return super().mirror(config)

    def release_dir(self, config: Config) -> str:
        major = _major(config.release)
        return f"{major}-stream" if major.isdigit() else config.release

    def gpgkeys(self, config: Config) -> tuple[str, ...]:
        major = _major(config.release)
        suffix = "-SHA256" if major.isdigit() and int(major) >= 10 else ""
        return self._host_gpgkeys(config) or (f"https://www.centos.org/keys/RPM-GPG-KEY-CentOS-Official{suffix}",)


class CentOSEpel(CentOS):
    distribution = Distribution.centos_epel
    epel = True


class Rocky(EnterpriseLinux):
    distribution = Distribution.rocky
    host_keys = ("rocky/RPM-GPG-KEY-Rocky-{major}",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://download.rockylinux.org/pub/rocky"

    def gpgkeys(self, config: Config) -> tuple[str, ...]:
        base = (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")
        return self._host_gpgkeys(config) or (f"{base}/RPM-GPG-KEY-Rocky-{_major(config.release)}",)


class RockyEpel(Rocky):
    distribution = Distribution.rocky_epel
    epel = True


class Alma(EnterpriseLinux):
    distribution = Distribution.alma
    host_keys = ("alma/RPM-GPG-KEY-AlmaLinux-{major}",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://repo.almalinux.org/almalinux"

    def gpgkeys(self, config: Config) -> tuple[str, ...]:
        base = (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")
        return self._host_gpgkeys(config) or (f"{base}/RPM-GPG-KEY-AlmaLinux-{_major(config.release)}",)


class AlmaEpel(Alma):
    distribution = Distribution.alma_epel
    epel = True


class Mageia(RpmDistribution):
    distribution = Distribution.mageia
    kernel_packages = ("kernel-desktop-latest", "dracut")

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://mirrors.kernel.org/mageia/distrib"

    def main_repos(self, config: Config) -> list[RpmRepo]:

        base = f"{self.mirror(config)}/{config.release}/{_rpm_arch(config.architecture)}/media/core"
        # Each medium publishes the key it is signed with next to its metadata.
        return [RpmRepo(id=f"mageia-{repo}", name=f"Mageia {config.release} core {repo}",
                        baseurl=(f"{base}/{repo}/",), gpgkeys=(f"{base}/{repo}/media_info/pubkey",))
                for repo in ("release", "updates")]


class OpenMandriva(RpmDistribution):
    distribution = Distribution.openmandriva
    kernel_packages = ("kernel-release-desktop", "dracut")
    host_keys = ("openmandriva/RPM-GPG-KEY-OpenMandriva",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "http://abf-downloads.openmandriva.org"

    def main_repos(self, config: Config) -> list[RpmRepo]:

        base = f"{self.mirror(config)}/{config.release}/repository/{_rpm_arch(config.architecture)}/main"
        keys = self._host_gpgkeys(config)
        return [RpmRepo(id=f"openmandriva-{repo}", name=f"OpenMandriva {config.release} main {repo}",
                        baseurl=(f"{base}/{repo}/",), gpgkeys=keys)
                for repo in ("release", "updates")]


class Photon(RpmDistribution):
    distribution = Distribution.photon
    package_manager = "dnf"   # tdnf is not packaged for Debian; dnf reads the same repositories
    kernel_packages = ("linux", "initramfs")
    host_keys = ("photon/VMWARE-RPM-GPG-KEY",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://packages.vmware.com/photon"

    def main_repos(self, config: Config) -> list[RpmRepo]:

        m, rel, arch = self.mirror(config), config.release, _rpm_arch(config.architecture)
        keys = self._host_gpgkeys(config)
        return [RpmRepo(id=f"photon-{repo}", name=f"Photon {rel} {repo}",
                        baseurl=(f"{m}/{rel}/photon_{repo}_{rel}_{arch}/",), gpgkeys=keys)
                for repo in ("release", "updates")]

    def install(self, ctx: Context, packages: list[str]) -> None:
        log.info("Installing Photon with dnf (Photon's tdnf is not available on this host)")
        super().install(ctx, packages)


class Clear(RpmDistribution):
    """Clear Linux is made of bundles installed by swupd, which no Debian package provides."""

    distribution = Distribution.clear
    package_manager = "swupd"
    kernel_packages = ("kernel-native",)

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://cdn.download.clearlinux.org"

    def content_url(self, config: Config) -> str:
        return f"{self.mirror(config)}/update"

    def repos(self, config: Config) -> list[RpmRepo]:
        return []

    def repositories(self, config: Config) -> list[str]:
        return [f"{self.content_url(config)} (version {config.release})", *config.repositories]

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["os-core"]
        if config.bootable:
            pkgs += list(self.kernel_packages)
        return pkgs

    def swupd(self) -> str:

        exe = find_tool("swupd")
        if exe is None:
            raise MkosiError(
                "building Clear Linux images is not available on this host: it needs 'swupd' "
                "(swupd-client), which no Debian package provides",
                hint="build Clear Linux images on a host that has swupd (e.g. Clear Linux itself)")
        return exe

    def swupd_argv(self, ctx: Context, bundles: list[str]) -> list[str]:
        config = ctx.config
        argv = [self.swupd(), "os-install", f"--path={ctx.root}", f"--url={self.content_url(config)}",
                "--no-progress", "--no-boot-update", "--skip-optional"]
        if config.release != "latest":
            argv.append(f"--version={config.release}")
        if ctx.package_cache is not None:
            argv.append(f"--statedir={ctx.package_cache / 'swupd'}")
        if bundles:
            argv.append("--bundles=" + ",".join(bundles))
        return argv

    def install(self, ctx: Context, packages: list[str]) -> None:

        if not ctx.network:
            raise MkosiError("swupd cannot install Clear Linux without the network (WithNetwork=never)")
        run(self.swupd_argv(ctx, packages), sandbox=ctx.sandbox)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        run([self.swupd(), "bundle-remove", f"--path={ctx.root}", "--no-progress", *packages], sandbox=ctx.sandbox)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        bundles = ctx.root / "usr/share/clear/bundles"
        if not bundles.is_dir():
            return []
        version = ""
        osr = ctx.root / "usr/lib/os-release"
        if osr.is_file():
            for line in osr.read_text().splitlines():
                if line.startswith("VERSION_ID="):
                    version = line.partition("=")[2].strip('"')
        return [PackageInfo(type="bundle", name=p.name, version=version, architecture=ctx.config.architecture,
                            size=0) for p in sorted(bundles.iterdir()) if p.is_file()]

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        if force or not self.package_manager_present(ctx):
            remove_paths(ctx.root, ["/var/lib/swupd"])

    def package_manager_present(self, ctx: Context) -> bool:
        return (ctx.root / "usr/bin/swupd").exists()


PLUGINS: list[DistributionPlugin] = [
    Fedora(), CentOS(), CentOSEpel(), Rocky(), RockyEpel(), Alma(), AlmaEpel(), Mageia(), OpenMandriva(),
    Photon(), Clear(),
]
