"""Gentoo: a stage3 unpacked into the root, then the stage3's own emerge (see mkosi.installers.emerge).

Repository layout: MIRROR/releases/ARCH/autobuilds/latest-stage3-STAGEARCH-systemd.txt names the
stage3, MIRROR/snapshots/gentoo-latest.tar.xz is the ebuild repository; packages come from the
binary package host configured in the stage3 (or are built from source).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin
from mkosi.errors import MkosiError
from mkosi.installers import emerge
from mkosi.installers.base import PackageInfo
from mkosi.installers.emerge import EmergeConfig, latest_url, snapshot_url

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.base import PackageInfo
    from mkosi.installers.emerge import EmergeConfig


class Gentoo(DistributionPlugin):
    distribution = Distribution.gentoo
    package_manager = "emerge"
    package_manager_on_host = False  # emerge runs in the stage3
    ssh_packages = ("net-misc/openssh",)
    uefi_packages = ()  # systemd ships systemd-boot here

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://distfiles.gentoo.org"

    def mirror(self, config: Config) -> str:
        return (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")

    def repositories(self, config: Config) -> list[str]:

        return [latest_url(self.mirror(config), config.architecture), snapshot_url(self.mirror(config)),
                *config.repositories]

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["sys-apps/systemd"]
        if config.bootable:
            pkgs += ["sys-kernel/gentoo-kernel-bin", "sys-kernel/dracut"]
        return pkgs

    def emerge_config(self, ctx: Context) -> EmergeConfig:

        config = ctx.config
        if config.repositories:
            raise MkosiError("Repositories= is not supported for Gentoo",
                             hint="add ebuild repositories in /etc/portage/repos.conf with a skeleton tree")
        return EmergeConfig.for_build(
            ctx,
            mirror=self.mirror(config),
            architecture=config.architecture,
        )

    def install(self, ctx: Context, packages: list[str]) -> None:

        emerge.install(self.emerge_config(ctx), packages)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        emerge.remove(self.emerge_config(ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        return [PackageInfo(type="ebuild", name=p.atom, version=p.version, architecture=ctx.config.architecture,
                            size=p.size) for p in emerge.manifest_packages(ctx.root, ctx.workspace)]

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        emerge.clean_metadata(ctx.root, force, ctx.workspace)

    def package_manager_present(self, ctx: Context) -> bool:
        return (ctx.root / "usr/bin/emerge").exists()
