"""openSUSE Tumbleweed and Leap, installed with zypper.

Repository layouts (MIRROR is Mirror= or https://download.opensuse.org):

  tumbleweed (x86_64)   MIRROR/tumbleweed/repo/oss/ and MIRROR/update/tumbleweed/
  tumbleweed (others)   MIRROR/ports/ARCH/tumbleweed/repo/oss/
  Leap 15.N             MIRROR/distribution/leap/15.N/repo/oss/, MIRROR/update/leap/15.N/oss/ and,
                        from 15.3 on, MIRROR/update/leap/15.N/{sle,backports}/

Release `leap` means the newest Leap known here (LATEST_LEAP).
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin
from mkosi.errors import MkosiError
from mkosi.installers import localrepo, rpm, zypper
from mkosi.installers.dnf import RpmRepo, is_url, url_repos
from mkosi.installers.zypper import ZypperConfig

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.base import PackageInfo
    from mkosi.installers.dnf import RpmRepo
    from mkosi.installers.zypper import ZypperConfig

LATEST_LEAP = "15.6"


class OpenSUSE(DistributionPlugin):
    distribution = Distribution.opensuse
    package_manager = "zypper"

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://download.opensuse.org"

    def release(self, config: Config) -> str:
        rel = config.release.lower()
        if rel == "leap":
            return LATEST_LEAP
        if rel == "tumbleweed" or re.fullmatch(r"\d+\.\d+", rel):
            return rel
        raise MkosiError(f"unknown openSUSE release '{config.release}'",
                         hint="use 'tumbleweed', 'leap' or a Leap version such as 15.6")

    def main_repos(self, config: Config) -> list[RpmRepo]:

        m = (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")
        rel = self.release(config)
        arch = config.architecture
        if rel == "tumbleweed":
            if arch == "x86_64":
                urls = [("repo-oss", f"{m}/tumbleweed/repo/oss/"), ("repo-update", f"{m}/update/tumbleweed/")]
            else:
                urls = [("repo-oss", f"{m}/ports/{arch}/tumbleweed/repo/oss/")]
        else:
            urls = [("repo-oss", f"{m}/distribution/leap/{rel}/repo/oss/"),
                    ("repo-update", f"{m}/update/leap/{rel}/oss/")]
            major, minor = (int(x) for x in rel.split("."))
            if (major, minor) >= (15, 3):
                urls += [("repo-sle-update", f"{m}/update/leap/{rel}/sle/"),
                         ("repo-backports-update", f"{m}/update/leap/{rel}/backports/")]
        # Each repository publishes the key its metadata is signed with.
        return [RpmRepo(id=rid, name=f"openSUSE {rel} {rid}", baseurl=(url,),
                        gpgkeys=(f"{url}repodata/repomd.xml.key",))
                for rid, url in urls]

    def repos(self, config: Config) -> list[RpmRepo]:

        extra = [r for r in config.repositories if is_url(r)]
        bad = [r for r in config.repositories if not is_url(r)]
        if bad:
            raise MkosiError(f"Repositories= entry '{bad[0]}' is not a URL",
                             hint="openSUSE repositories are given as URLs (or as .repo files in "
                             "RepositoryDirectory=)")
        return self.main_repos(config) + url_repos(extra)

    def repositories(self, config: Config) -> list[str]:
        lines = [r.summary() for r in self.repos(config)]
        if config.repository_directory is not None:
            lines.append(f"repository files in {config.repository_directory}")
        return lines

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["systemd", "udev"]
        if config.bootable:
            pkgs += ["kernel-default", "dracut"]
        return pkgs

    def zypper_config(self, ctx: Context) -> ZypperConfig:

        config = ctx.config
        return ZypperConfig.for_build(
            ctx,
            repos=tuple(self.repos(config)),
        )

    def install(self, ctx: Context, packages: list[str]) -> None:

        zypper.install(dataclasses.replace(self.zypper_config(ctx), local_repository=localrepo.for_build(ctx, "rpm")),
                       packages)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        zypper.remove(self.zypper_config(ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        return rpm.manifest_packages(ctx.root, ctx.workspace)

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        rpm.save_package_list(ctx.root, ctx.workspace)
        zypper.clean_metadata(ctx.root, force)

    def package_manager_present(self, ctx: Context) -> bool:

        return zypper.zypper_in_root(ctx.root)
