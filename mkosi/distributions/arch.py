"""Arch Linux (pacman).

Repository layouts: x86_64 uses MIRROR/REPO/os/x86_64 (default mirror https://geo.mirror.pkgbuild.com),
other architectures Arch Linux ARM's MIRROR/ARCH/REPO (default http://mirror.archlinuxarm.org).
The repositories are core and extra; Repositories= adds `name::url` entries after them.
"""

from __future__ import annotations

import dataclasses
import re
from typing import TYPE_CHECKING, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin
from mkosi.errors import MkosiError
from mkosi.installers import localrepo, pacman
from mkosi.installers.base import PackageInfo
from mkosi.installers.pacman import PACMAN_ARCH, PacmanConfig, PacmanRepo, parse_repository

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.base import PackageInfo
    from mkosi.installers.pacman import PacmanConfig, PacmanRepo

REPOS = ("core", "extra")
ARCH_ARCHIVE_MIRROR = "https://archive.archlinux.org"


class Arch(DistributionPlugin):
    distribution = Distribution.arch
    package_manager = "pacman"
    ssh_packages = ("openssh",)
    uefi_packages = ()  # systemd ships systemd-boot here

    def default_mirror(self, arch: str) -> Optional[str]:
        return "https://geo.mirror.pkgbuild.com" if arch == "x86_64" else "http://mirror.archlinuxarm.org"

    def server(self, config: Config, repo: str, arch: Optional[str] = None) -> str:

        mirror = (config.mirror or self.default_mirror(config.architecture) or "").rstrip("/")
        arch = arch or PACMAN_ARCH.get(config.architecture, config.architecture)
        if config.snapshot:
            return self.snapshot_server(config, repo, arch)
        if config.architecture == "x86_64":
            return f"{mirror}/{repo}/os/{arch}"
        return f"{mirror}/{arch}/{repo}"

    def snapshot_server(self, config: Config, repo: str, arch: str) -> str:
        """Snapshot=YYYY/MM/DD: the Arch Linux Archive's repositories of that day (x86-64 only)."""
        snapshot = config.snapshot or ""
        if not re.fullmatch(r"\d{4}/\d{2}/\d{2}", snapshot):
            raise MkosiError(f"Snapshot={snapshot}: an Arch Linux snapshot is a day of the Arch Linux Archive "
                             "written YYYY/MM/DD")
        if config.architecture != "x86_64":
            raise MkosiError(f"Snapshot= is not implemented yet for Arch Linux on {config.architecture} "
                             "(only the Arch Linux Archive of x86-64 is)")
        explicit = config.mirror and config.mirror.rstrip("/") != self.default_mirror(config.architecture)
        base = (config.mirror if explicit else ARCH_ARCHIVE_MIRROR) or ARCH_ARCHIVE_MIRROR
        return f"{base.rstrip('/')}/repos/{snapshot}/{repo}/os/{arch}"

    def repos(self, config: Config) -> list[PacmanRepo]:

        main = [PacmanRepo(name=r, servers=(self.server(config, r),)) for r in REPOS]
        return main + [parse_repository(e) for e in config.repositories]

    def repositories(self, config: Config) -> list[str]:
        lines = [f"{r.name}::{s}" for r in self.repos(config) for s in r.servers]
        if config.repository_directory is not None:
            lines.append(f"repository files in {config.repository_directory}")
        return lines

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["systemd"]
        if config.bootable:
            pkgs += ["linux", "dracut"]
        return pkgs

    def pacman_config(self, ctx: Context) -> PacmanConfig:

        config = ctx.config
        return PacmanConfig.for_build(
            ctx,
            architecture=config.architecture,
            repos=tuple(self.repos(config)),
        )

    def install(self, ctx: Context, packages: list[str]) -> None:

        cfg = dataclasses.replace(self.pacman_config(ctx), local_repository=localrepo.for_build(ctx, "pacman"))
        pacman.install(cfg, packages)
        server = self.server(ctx.config, "$repo", "$arch")
        if not server.startswith("file:"):
            pacman.write_mirrorlist(ctx.root, server)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        pacman.remove(self.pacman_config(ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        return [PackageInfo(type="pacman", name=p.name, version=p.version, architecture=p.architecture,
                            size=p.size, source=p.base, source_version=p.version if p.base else None,
                            license=p.license)
                for p in pacman.manifest_packages(ctx.root, ctx.workspace)]

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        pacman.save_package_list(ctx.root, ctx.workspace)
        pacman.clean_metadata(ctx.root, force)

    def package_manager_present(self, ctx: Context) -> bool:

        return pacman.pacman_in_root(ctx.root)
