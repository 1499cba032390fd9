"""Debian and Ubuntu, installed with the host's apt driving dpkg into the image root."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

from mkosi.config.enums import Distribution
from mkosi.distributions import DistributionPlugin
from mkosi.installers import apt, localrepo
from mkosi.installers.apt import AptConfig, default_mirror, repository_lines
from mkosi.installers.base import PackageInfo
from mkosi.sandbox import Sandbox

if TYPE_CHECKING:
    from mkosi.config.settings import Config
    from mkosi.context import Context
    from mkosi.installers.apt import AptConfig
    from mkosi.installers.base import PackageInfo

DPKG_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "x86": "i386", "arm": "armhf", "ppc64le": "ppc64el",
             "riscv64": "riscv64", "s390x": "s390x"}


# Scripts that build an initrd (or hand the kernel to kernel-install, which builds one) while a kernel
# package, an initrd generator or a trigger of theirs is configured. mkosi builds the one initrd the
# image boots itself, so during package installation these are replaced by no-ops: each is diverted
# (a local dpkg diversion, so the package's file lands next to it with a suffix run-parts ignores) and
# a stub takes its place. Afterwards the stubs go and the packages' files are put back.
KERNEL_HOOKS = (
    "etc/kernel/postinst.d/dracut",
    "etc/kernel/postinst.d/initramfs-tools",
    "etc/kernel/postinst.d/zz-systemd-boot",
    "etc/kernel/postinst.d/zz-kernel-install",
    "usr/sbin/update-initramfs",
)
DIVERTED_SUFFIX = ".mkosi-disabled"
HOOK_STUB = "#!/bin/sh\n# Disabled by mkosi while it installs packages: mkosi builds the initrd itself.\nexit 0\n"


def _read_diversions(path: Path) -> list[tuple[str, str, str]]:
    """dpkg's diversions file: groups of three lines (the file, where it is diverted to, the package
    or ':' for a local diversion)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(lines[i], lines[i + 1], lines[i + 2]) for i in range(0, len(lines) - 2, 3)]


def _write_diversions(path: Path, entries: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{a}\n{b}\n{c}\n" for a, b, c in entries))


def _is_ours(entry: tuple[str, str, str]) -> bool:
    return entry[2] == ":" and entry[1] == entry[0] + DIVERTED_SUFFIX and entry[0].lstrip("/") in KERNEL_HOOKS


def _missing_parents(root: Path, path: Path) -> list[Path]:
    missing = []
    while path != root and not (path.exists() or path.is_symlink()):
        missing.append(path)
        path = path.parent
    return missing


def disable_kernel_hooks(root: Path) -> list[Path]:
    """Divert the hooks and put stubs in their place; returns the files and directories this created
    (for restore_kernel_hooks() to remove again)."""
    diversions = root / "var/lib/dpkg/diversions"
    created = _missing_parents(root, diversions)
    entries = _read_diversions(diversions)
    diverted = {e[0] for e in entries}
    for hook in KERNEL_HOOKS:
        name = f"/{hook}"
        if name in diverted:
            continue
        target = root / hook
        if target.exists() or target.is_symlink():
            target.rename(root / f"{hook}{DIVERTED_SUFFIX}")   # installed already: move the real one aside
        entries.append((name, name + DIVERTED_SUFFIX, ":"))
        created += [p for p in _missing_parents(root, target.parent) if p not in created]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(HOOK_STUB)
        target.chmod(0o755)
    _write_diversions(diversions, entries)
    return created


def restore_kernel_hooks(root: Path, created: Sequence[Path] = ()) -> None:
    """Remove the stubs and diversions of disable_kernel_hooks(), putting the packages' hooks back."""
    diversions = root / "var/lib/dpkg/diversions"
    entries = _read_diversions(diversions)
    for name, diverted, _ in filter(_is_ours, entries):
        hook = root / name.lstrip("/")
        if hook.is_file() and not hook.is_symlink() and hook.read_text(errors="replace") == HOOK_STUB:
            hook.unlink()
        real = root / diverted.lstrip("/")
        if real.exists() or real.is_symlink():
            real.rename(hook)
    remaining = [e for e in entries if not _is_ours(e)]
    if remaining or diversions not in created:
        _write_diversions(diversions, remaining)
    else:
        diversions.unlink(missing_ok=True)
    # What was made only to hold a stub goes again (deepest first), so images without a kernel are as before.
    for path in sorted(created, key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()


@contextlib.contextmanager
def kernel_hooks_disabled(root: Path) -> Iterator[None]:
    """No initrd is built by the distribution's hooks while packages are installed."""
    created = disable_kernel_hooks(root)
    try:
        yield
    finally:
        restore_kernel_hooks(root, created)


class Debian(DistributionPlugin):
    distribution = Distribution.debian
    package_manager = "apt-get"
    components: ClassVar[tuple[str, ...]] = ("main",)
    uefi_packages = ("systemd-boot-efi",)

    def default_mirror(self, arch: str) -> Optional[str]:

        return default_mirror(self.distribution.value, DPKG_ARCH.get(arch, arch))

    def apt_config(self, config: Config, ctx: Optional[Context] = None) -> AptConfig:

        known = {"main", "contrib", "non-free", "non-free-firmware", "restricted", "universe", "multiverse"}
        components = list(self.components) + [r for r in config.repositories if r in known and r not in self.components]
        extra = [r for r in config.repositories if r not in known and r != "backports"]
        cfg = AptConfig(
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
            with_recommends=config.with_recommends,
            network=ctx.network if ctx else True,
            refresh=ctx.refresh_metadata if ctx else True,
            repository_directory=config.repository_directory,
            key_check=config.repository_key_check,
            key_fetch=config.repository_key_fetch,
            snapshot=config.snapshot,
            backports="backports" in config.repositories,
            sandbox=ctx.sandbox if ctx else Sandbox(),
            proxy=ctx.proxy if ctx else None,
        )
        cfg.warn_unused_proxy_certificates()
        return cfg

    def repositories(self, config: Config) -> list[str]:

        return repository_lines(self.apt_config(config))

    def base_packages(self, config: Config) -> list[str]:
        pkgs = ["systemd", "udev", "dbus"]
        if config.bootable:
            # systemd-sysv provides poweroff/reboot/halt, which dracut puts into the initrd; zstd compresses
            # the initrd (without it dracut falls back to gzip, several times slower).
            pkgs += ["systemd-sysv", "dracut", "zstd",
                     "linux-image-" + DPKG_ARCH.get(config.architecture, "amd64")]
        return pkgs

    def install(self, ctx: Context, packages: list[str]) -> None:

        cfg = dataclasses.replace(self.apt_config(ctx.config, ctx), local_repository=localrepo.for_build(ctx, "deb"))
        with kernel_hooks_disabled(ctx.root):
            apt.install(cfg, packages)

    def remove_packages(self, ctx: Context, packages: list[str]) -> None:

        apt.remove(self.apt_config(ctx.config, ctx), packages)

    def installed_packages(self, ctx: Context) -> list[PackageInfo]:

        return [PackageInfo(type="deb", name=p.name, version=p.version, architecture=p.architecture,
                            size=p.installed_size, source=p.source, source_version=p.source_version)
                for p in apt.installed_packages(ctx.root)]

    def clean_package_metadata(self, ctx: Context, force: bool) -> None:

        apt.clean_metadata(ctx.root)

    def package_manager_present(self, ctx: Context) -> bool:
        return (ctx.root / "usr/bin/apt-get").exists() or (ctx.root / "usr/bin/dpkg").exists()


class Ubuntu(Debian):
    distribution = Distribution.ubuntu
    components = ("main", "universe")


PLUGINS: list[DistributionPlugin] = [Debian(), Ubuntu()]
