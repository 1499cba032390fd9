"""Distribution plugins: the base class. One module per family; mkosi/distributions/registry.py lists them."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import facts
from mkosi.errors import MkosiError

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.base import PackageInfo


class DistributionPlugin:
    distribution: ClassVar[Distribution]
    package_manager: ClassVar[str]          # the tool that installs packages
    package_manager_on_host: ClassVar[bool] = True  # False: it runs inside the image (Gentoo's emerge)
    docs_paths: ClassVar[tuple[str, ...]] = ("/usr/share/doc", "/usr/share/man", "/usr/share/info")
    ssh_packages: ClassVar[tuple[str, ...]] = ("openssh-server",)     # added with Ssh=yes
    uefi_packages: ClassVar[tuple[str, ...]] = ("systemd-boot",)      # systemd-boot and the EFI stub

    @property
    def default_release(self) -> str:
        return facts.default_release(self.distribution)

    def default_mirror(self, arch: str) -> Optional[str]:
        return None

    def repositories(self, config: Config) -> list[str]:
        """The repositories a build would use, as shown by `mkosi summary`."""
        return []

    def base_packages(self, config: Config) -> list[str]:
        return ["systemd"]

    def conditional_packages(self, config: Config) -> list[str]:
        """BasePackages=conditional: the packages that extend others, as rich dependencies "(A if B)" that
        the package manager resolves (empty where it cannot: only packages of Packages= are installed)."""
        return []

    def install(self, ctx: Context, packages: list[str]) -> None:
        raise MkosiError(f"building {self.distribution.value} images is not implemented yet")

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:
        raise MkosiError(f"RemovePackages= is not supported for {self.distribution.value}",
                         hint="remove files with RemoveFiles= instead")

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:
        return []

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:
        pass

    def package_manager_present(self, ctx: Context) -> bool:
        return False
