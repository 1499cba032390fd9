"""Debian and Ubuntu, installed with the host's apt driving dpkg into the image root."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.apt import AptConfig
    from mkosi.manifest import PackageInfo

DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "x86": "i386", "arm": "armhf", "ppc64le": "ppc64el",
             "riscv64": "riscv64", "s390x": "s390x"}


class Debian(DistributionPlugin):
    distribution = Distribution.debian
    package_manager = "apt-get"
    components: ClassVar[tuple[str, ...]] = ("main",)
    uefi_packages = ("systemd-boot-efi",)

    def default_mirror(self, arch: str) -> Optional[str]:
        from mkosi.installers.apt import default_mirror

        return default_mirror(self.distribution.value, DPKG_ARCH.get(arch, arch))

    def apt_config(self, config: Config, ctx: Optional[Context] = None) -> AptConfig:
        from pathlib import Path

        from mkosi.installers.apt import AptConfig

        known = {"main", "contrib", "non-free", "non-free-firmware", "restricted", "universe", "multiverse"}
        components = list(self.components) + [r for r in config.repositories if r in known and r not in self.components]
        extra = [r for r in config.repositories if r not in known]
        return AptConfig(
            root=ctx.root if ctx else Path("/nonexistent"),
            distribution=self.distribution.value,
            release=config.release,
            mirror=config.mirror or self.default_mirror(config.architecture) or "",
            components=components,
            extra_repositories=extra,
            architecture=DPKG_ARCH.get(config.architecture, config.architecture),
            cache_dir=ctx.package_cache if ctx else None,
            workspace=ctx.dir("apt") if ctx else Path("/nonexistent"),
            with_docs=config.with_docs,
            network=ctx.network if ctx else True,
            repository_directory=config.repository_directory,
        )

    def repositories(self, config: Config) -> list[str]:
        from mkosi.installers.apt import repository_lines

        return repository_lines(self.apt_config(config))

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["systemd", "udev", "dbus"]
        if config.bootable:
            # systemd-sysv provides poweroff/reboot/halt, which dracut puts into the initrd.
            pkgs += ["systemd-sysv", "dracut",
                     "linux-image-" + DPKG_ARCH.get(config.architecture, "amd64")]
        return pkgs

    def install(self, ctx: Context, packages: list[str]) -> None:
        from mkosi.installers import apt

        apt.install(self.apt_config(ctx.config, ctx), packages)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:
        from mkosi.installers import apt

        apt.remove(self.apt_config(ctx.config, ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:
        from mkosi.installers import apt
        from mkosi.manifest import PackageInfo

        return [PackageInfo(type="deb", name=p.name, version=p.version, architecture=p.architecture,
                            size=p.installed_size, source=p.source, source_version=p.source_version)
                for p in apt.installed_packages(ctx.root)]

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:
        from mkosi.installers import apt

        apt.clean_metadata(ctx.root)

    def package_manager_present(self, ctx: Context) -> bool:
        return (ctx.root / "usr/bin/apt-get").exists() or (ctx.root / "usr/bin/dpkg").exists()


class Ubuntu(Debian):
    distribution = Distribution.ubuntu
    components = ("main", "universe")


PLUGINS: list[DistributionPlugin] = [Debian(), Ubuntu()]
