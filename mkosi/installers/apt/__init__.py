"""Install Debian and Ubuntu into a directory: host apt resolves and downloads, the image's dpkg installs.

How `install()` builds a root, and where the time goes:

1. The host's apt-get runs with every piece of its state redirected (APT_CONFIG points at a generated
   configuration): sources, keyring, lists and the archive cache live in the workspace and in
   `cache_dir`; nothing of the host's /etc/apt or /var/lib/apt is read or written. After
   `apt-get update`, ONE `apt-get install` run against an empty dpkg status resolves the whole package
   set and downloads it (apt fetches in parallel and reuses what the cache already holds). That run has
   `Debug::pkgDPkgPM` set: instead of running dpkg it prints the dpkg commands it would run, which
   names the exact .deb files and gives an order that respects Pre-Depends.
2. Every package whose file system tarball is xz-compressed gets a copy with that tarball stored
   uncompressed, made once (in parallel) and kept in the cache: essential packages have to be
   decompressed twice otherwise, and warm builds would decompress everything again.
3. A small scaffold is extracted with `dpkg-deb --fsys-tarfile | tar`: dpkg, sh and the tools dpkg
   insists on, with their libraries. Creating files is what costs most (each one is written again by
   dpkg later), so it is kept that small.
4. In a chroot sandbox of the root (bubblewrap with the root as /, /proc, /sys and /dev, the package
   directories bind-mounted read-only, a clean environment, a PID namespace of its own so that nothing
   a maintainer script starts outlives dpkg, a policy-rc.d that forbids starting services,
   libeatmydata preloaded when the host has it and the image's libc can load it) the image's own dpkg
   unpacks the essential closure (the `Essential: yes` packages and what they depend on) in one run,
   forcing their mutual dependencies as every bootstrapper does. Packages without a preinst come first,
   so all essential tools are on disk by the time the first preinst runs; should one fail anyway, the
   traditional way (extract the rest with dpkg-deb, unpack again) is the fallback. Then it configures
   them all, and installs the other packages by replaying apt's plan. Maintainer scripts run as usual
   (systemd's postinst creates users), except for the slowest pieces of their work, which do not need
   dpkg's one queue (deferred.py): Python's byte-compilation of its standard library runs in the
   background while dpkg goes on (the packages asking for it are configured first), py3compile runs
   after the last dpkg run, all at once, and udev's hwdb update runs once, alongside the last configure
   run, when every package's files are in place.

What gets installed: the `Essential: yes` packages, the requested packages, and their Depends and
Pre-Depends, without Recommends (unless WithRecommends=yes turns APT::Install-Recommends on). That is
`mmdebstrap --variant=essential --include=...` rather than its minbase variant: neither the
`Priority: required` packages nor apt are added (ask for `apt` to get an image that manages its own
packages). The root gets a merged /usr (bin, sbin, lib and, on 64-bit ports
that need it, lib64 are symlinks into /usr, created before anything is extracted), so `usr-is-merged` is
preferred over `usrmerge`, which would pull in perl to convert what is converted already.

With a cache, apt's resolution is kept as well (see _plan()), so a warm build runs no apt resolution
while the lists do not change. `install_more()` and `remove()` replay apt's plan the same way, with apt
resolving against the root's own dpkg status.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers.apt.chroot import Chroot, open_chroot
from mkosi.installers.apt.config import KEYRINGS, UNMERGED_RELEASES, AptConfig, check_distribution
from mkosi.installers.apt.debs import (
    PackageInfo,
    dependency_closure,
    essential_closure,
    installed_packages,
    parse_deb822,
    parse_relations,
    parse_status,
    read_control,
    read_control_archive,
)
from mkosi.installers.apt.errors import apt_error_message, dpkg_error_message
from mkosi.installers.apt.hostapt import HostApt, cache_locked, drop_local_lists, resolve, setup_apt, update
from mkosi.installers.apt.plan import (
    DpkgOp,
    essential_unpack_order,
    parse_dpkg_plan,
    plan_debs,
    plan_without,
    scaffold_debs,
)
from mkosi.installers.apt.repositories import archive_keyring, default_mirror, repository_lines
from mkosi.installers.apt.root import (
    DOCS_CONFIG_NAME,
    clean_metadata,
    docs_dpkg_config,
    finish,
    prepare_root,
    stand_in_for_ssh_host_keys,
    status_nonempty,
    strip_package_spec,
    write_extended_states,
)
from mkosi.installers.apt.unpack import Decompressor, extract, prune_uncompressed

__all__ = [
    "DOCS_CONFIG_NAME",
    "KEYRINGS",
    "AptConfig",
    "DpkgOp",
    "PackageInfo",
    "apt_error_message",
    "clean_metadata",
    "default_mirror",
    "dependency_closure",
    "docs_dpkg_config",
    "dpkg_error_message",
    "essential_closure",
    "install",
    "install_more",
    "installed_packages",
    "parse_deb822",
    "parse_dpkg_plan",
    "parse_relations",
    "parse_status",
    "read_control",
    "remove",
    "repository_lines",
]


def install(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Bootstrap the essential set plus `packages` (and their dependencies) into cfg.root."""
    check_distribution(cfg)
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    if status_nonempty(cfg.root):
        log.info(f"{cfg.root} already has a dpkg database: installing into it")
        install_more(cfg, packages)
        return
    keyring = archive_keyring(cfg)
    had_sources = (cfg.root / "etc/apt/sources.list").exists()
    with log.step(f"Installing {cfg.distribution} {cfg.release} ({cfg.architecture})"):
        prepare_root(cfg)
        apt = setup_apt(cfg, _empty_status(cfg), keyring)
        with Decompressor(apt.uncompressed, as_is=_local(cfg)) as decompressor:
            plan = _resolve(apt, _request(cfg, packages), decompressor)
            boot = _Bootstrap.of(plan)
            decompressor.first([*boot.scaffold, *boot.base, *plan_debs(plan)])
            _extract_scaffold(cfg, decompressor.copies(boot.scaffold))
            _bootstrap(cfg, apt, boot, decompressor)
        prune_uncompressed(apt.uncompressed, apt.archives)
        finish(apt, packages, set(), add_sources=not had_sources)
        drop_local_lists(apt)


def _local(cfg: AptConfig) -> list[Path]:
    return [cfg.local_repository] if cfg.local_repository is not None else []


def _empty_status(cfg: AptConfig) -> Path:
    """A dpkg status file with nothing installed: apt resolves the whole set against it."""
    path = cfg.workspace.absolute() / "apt/empty-status"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    return path


def _request(cfg: AptConfig, packages: Sequence[str]) -> list[str]:
    request = ["?essential", *packages]
    if cfg.release not in UNMERGED_RELEASES and "usrmerge" not in packages:
        # Matches nothing (and is no error) on releases that predate the package.
        request.append("?exact-name(usr-is-merged)")
    return request


def _resolve(apt: HostApt, request: Sequence[str], decompressor: Decompressor) -> list[DpkgOp]:
    """Refresh the lists, resolve and download; packages are decompressed as their download completes."""
    with cache_locked(apt):
        update(apt)
        with log.step("Resolving and downloading packages"), decompressor.watching(apt.archives):
            return resolve(apt, "install", request, "resolving packages")


@dataclass(frozen=True)
class _Bootstrap:
    """apt's plan for a new root, split the way it is installed (paths are those of apt's cache)."""
    plan: list[DpkgOp]
    controls: dict[str, dict[str, str]]     # .deb path -> its control stanza
    base: list[Path]                        # the essential closure, in unpack order
    scaffold: list[Path]                    # what dpkg-deb extracts so that dpkg can run
    rest: list[DpkgOp]                      # the plan without the essential closure
    count: int                              # packages in the plan

    @classmethod
    def of(cls, plan: list[DpkgOp]) -> _Bootstrap:
        debs = plan_debs(plan)
        if not debs:
            raise MkosiError("apt planned no packages to install")
        archives = {str(d): read_control_archive(d) for d in debs}
        controls = {k: v[0] for k, v in archives.items()}
        essential = essential_closure(controls)
        base = essential_unpack_order([d for d in debs if controls[str(d)]["Package"] in essential], archives)
        return cls(plan=plan, controls=controls, base=base, scaffold=scaffold_debs(base, controls),
                   rest=plan_without(plan, essential, controls), count=len(debs))


def _extract_scaffold(cfg: AptConfig, scaffold: Sequence[Path]) -> None:
    root = cfg.root
    with log.step(f"Extracting {len(scaffold)} packages to run dpkg in the image"):
        extract(scaffold, root, cfg.sandbox)
        if not (root / "bin/sh").exists() and not (root / "bin/sh").is_symlink():
            raise MkosiError("the essential packages provide no /bin/sh")


def _bootstrap(cfg: AptConfig, apt: HostApt, boot: _Bootstrap, decompressor: Decompressor) -> None:
    """The image's dpkg installs the essential set, then replays the rest of apt's plan."""
    with open_chroot(cfg, apt) as chroot:
        with log.step(f"Installing {len(boot.base)} essential packages"), chroot.showing_progress(len(boot.base)):
            _unpack_essential(chroot, boot, decompressor)
            chroot.dpkg(DpkgOp("configure", (), ("--pending",)), extra=["--force-depends"])
        if boot.rest:
            stand_in_for_ssh_host_keys(cfg.root, _package_names(boot.rest))
            more = boot.count - len(boot.base)
            with log.step(f"Installing {more} more packages"), chroot.showing_progress(more):
                _run_plan(chroot, boot.rest, decompressor)


def _unpack_essential(chroot: Chroot, boot: _Bootstrap, decompressor: Decompressor) -> None:
    """Unpack the essential set with the image's dpkg, forcing their mutual dependencies (they are not
    configured yet). Should a preinst fail because an essential package it uses (without declaring it,
    as it may) was not unpacked yet, fall back to the traditional bootstrap: extract all of the remaining
    essential packages with dpkg-deb, then let dpkg unpack them over that."""
    try:
        chroot.dpkg(DpkgOp("unpack", (), tuple(map(str, decompressor.copies(boot.base)))),
                    extra=["--force-depends"])
        return
    except MkosiError as e:
        first_error = e
    done = {p.name for p in installed_packages(chroot.root) if p.status in ("unpacked", "installed")}
    remaining = decompressor.copies(d for d in boot.base if boot.controls[str(d)]["Package"] not in done)
    log.info(f"Unpacking the essential set failed ({first_error}); "
             f"extracting the {len(remaining)} remaining packages first and trying again")
    extract(remaining, chroot.root, chroot.host, mounted=True)
    chroot.dpkg(DpkgOp("unpack", (), tuple(map(str, remaining))), extra=["--force-depends"])


def _run_plan(chroot: Chroot, plan: Sequence[DpkgOp], decompressor: Decompressor) -> None:
    """apt's dpkg runs, each told whether a later one still unpacks packages."""
    last = max((i for i, op in enumerate(plan) if op.action in ("unpack", "install")), default=-1)
    for i, op in enumerate(plan):
        chroot.dpkg(decompressor.map_op(op), unpacking_done=i > last)


def _package_names(plan: Sequence[DpkgOp]) -> list[str]:
    """The names of the packages a plan unpacks (a .deb's file name starts with its package's name)."""
    return [deb.name.split("_", 1)[0] for deb in plan_debs(plan)]


def _replay(cfg: AptConfig, apt: HostApt, plan: Sequence[DpkgOp], decompressor: Decompressor) -> None:
    stand_in_for_ssh_host_keys(cfg.root, _package_names(plan))
    with open_chroot(cfg, apt) as chroot, chroot.showing_progress(len(plan_debs(plan)) or len(plan)):
        _run_plan(chroot, plan, decompressor)


def install_more(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Install more packages (with their dependencies) into a root that already has a dpkg database."""
    check_distribution(cfg)
    if not packages:
        return
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    if not status_nonempty(cfg.root):
        raise MkosiError(f"{cfg.root} has no dpkg database to install {', '.join(packages)} into")
    keyring = archive_keyring(cfg)
    before = {p.name for p in installed_packages(cfg.root)}
    with log.step(f"Installing {', '.join(packages)}"):
        apt = setup_apt(cfg, cfg.root / "var/lib/dpkg/status", keyring)
        with Decompressor(apt.uncompressed, as_is=_local(cfg)) as decompressor:
            with cache_locked(apt):
                update(apt)
                with decompressor.watching(apt.archives):
                    plan = resolve(apt, "install", packages, "resolving packages")
            for deb in plan_debs(plan):
                decompressor.submit(deb)
            if plan:
                _replay(cfg, apt, plan, decompressor)
        prune_uncompressed(apt.uncompressed, apt.archives)
        finish(apt, packages, before, add_sources=False)
        drop_local_lists(apt)


def remove(cfg: AptConfig, packages: Sequence[str]) -> None:
    """Purge packages (and what depends on them) from the root; those not installed are skipped."""
    check_distribution(cfg)
    cfg = dataclasses.replace(cfg, root=cfg.root.absolute())
    installed = {p.name for p in installed_packages(cfg.root)}
    wanted = [p for p in packages if strip_package_spec(p) in installed]
    for p in packages:
        if p not in wanted:
            log.debug(f"not removing {p}: it is not installed")
    if not wanted:
        return
    with log.step(f"Removing {', '.join(wanted)}"):
        apt = setup_apt(cfg, cfg.root / "var/lib/dpkg/status", archive_keyring(cfg))
        plan = resolve(apt, "purge", wanted, "removing packages", downloads=False)
        if plan:
            with Decompressor(apt.uncompressed, as_is=_local(cfg)) as decompressor:
                _replay(cfg, apt, plan, decompressor)
        if (cfg.root / "var/lib/apt/extended_states").exists():
            write_extended_states(cfg.root, cfg.architecture, set(), installed)
