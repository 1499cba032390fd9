"""The host's apt-get with all of its state redirected: lists update, resolution and download, the plan cache."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from mkosi import log
from mkosi.errors import MkosiError
from mkosi.installers import localrepo
from mkosi.installers.apt.config import AptConfig
from mkosi.installers.apt.errors import apt_error_message
from mkosi.installers.apt.plan import DpkgOp, format_op, parse_dpkg_plan
from mkosi.installers.apt.repositories import (
    extra_lines,
    list_prefixes,
    main_lines,
    repository_directory_files,
    uri_to_filename,
)
from mkosi.progress import DownloadProgress
from mkosi.run import run_streaming


@dataclass
class HostApt:
    cfg: AptConfig
    conf: Path
    lists: Path
    archives: Path
    uncompressed: Path
    status: Path
    env: dict[str, str] = field(default_factory=dict)
    lock_file: Optional[Path] = None


def _apt_settings(cfg: AptConfig, ws: Path, base: Path, status: Path) -> dict[str, Union[str, Path]]:
    """apt's configuration: every directory it reads or writes is the workspace's or the cache's."""
    etc, lists, archives = ws / "etc", base / "lists", base / "archives"
    settings: dict[str, Union[str, Path]] = {
        "Dir": "/",
        "Dir::Etc": etc,
        "Dir::Etc::Main": etc / "apt.conf",
        "Dir::Etc::Parts": etc / "apt.conf.d",
        "Dir::Etc::SourceList": etc / "sources.list",
        "Dir::Etc::SourceParts": etc / "sources.list.d",
        "Dir::Etc::TrustedParts": etc / "trusted.gpg.d",
        "Dir::Etc::Preferences": etc / "preferences",
        "Dir::Etc::PreferencesParts": etc / "preferences.d",
        "Dir::State": ws / "state",
        "Dir::State::Lists": lists,
        "Dir::State::Status": status,
        "Dir::State::extended_states": ws / "state/extended_states",
        "Dir::Cache": ws / "cache",
        "Dir::Cache::Archives": archives,
        # The source cache only depends on the lists: keep it with them so warm builds reuse it.
        "Dir::Cache::srcpkgcache": base / "srcpkgcache.bin",
        "Dir::Cache::pkgcache": ws / "cache/pkgcache.bin",
        "Dir::Log": ws / "log",
        "Dir::Log::Planner": "/dev/null",
        "APT::Architecture": cfg.architecture,
        "APT::Install-Recommends": "true" if cfg.with_recommends else "false",
        "APT::Install-Suggests": "false",
        "APT::Get::Assume-Yes": "true",
        # Lists of other releases sharing the cache must survive an update of this one.
        "APT::Get::List-Cleanup": "false",
        # apt would mark itself essential; it is only installed when asked for.
        "pkgCacheGen::ForceEssential": ",",
        # The caller already runs as root and the cache may not be reachable for _apt.
        "APT::Sandbox::User": "root",
        "Acquire::Languages": "none",
        "Acquire::Retries": "3",
        "Dpkg::Use-Pty": "false",
        # Name every package in the plan rather than a temporary directory of symlinks.
        "Dpkg::Install::Recursive::Minimum": "1000000",
        "quiet": "1",
    }
    if cfg.proxy is not None:
        settings.update(cfg.proxy.apt_settings())
    if not cfg.key_check:
        settings.update({
            "Acquire::AllowInsecureRepositories": "true",
            "Acquire::AllowDowngradeToInsecureRepositories": "true",
            "APT::Get::AllowUnauthenticated": "true",
        })
    return settings


def _apt_conf_text(settings: dict[str, Union[str, Path]], architecture: str) -> str:
    def q(p: Union[Path, str]) -> str:
        return '"' + str(p).replace('"', '\\"') + '"'

    text = "".join(f"{k} {q(v)};\n" for k, v in settings.items())
    return text + f"APT::Architectures {{ {q(architecture)}; }};\n"


# The build's local packages (PackageDirectories=): a source and a pin of their own.
LOCAL_LIST = f"{localrepo.REPO_NAME}.list"
LOCAL_PREFERENCES = f"{localrepo.REPO_NAME}.pref"


def _write_sources_and_keys(cfg: AptConfig, etc: Path, keyring: Path) -> None:
    shutil.copyfile(keyring, etc / "trusted.gpg.d" / keyring.name)
    # SandboxTrees=: apt's configuration in the trees is used as if it were the sandbox's /etc/apt.
    for d in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d"):
        for p in cfg.sandbox.tree_files(f"/etc/apt/{d}"):
            shutil.copyfile(p, etc / d / p.name)
    for p in repository_directory_files(cfg, (".gpg", ".asc")):
        shutil.copyfile(p, etc / "trusted.gpg.d" / p.name)
    for p in repository_directory_files(cfg, (".list", ".sources")):
        shutil.copyfile(p, etc / "sources.list.d" / p.name)
    (etc / "sources.list").write_text("\n".join(main_lines(cfg) + extra_lines(cfg)) + "\n")
    local, pref = etc / "sources.list.d" / LOCAL_LIST, etc / "preferences.d" / LOCAL_PREFERENCES
    if cfg.local_repository is not None:
        local.write_text(localrepo.apt_source_line(cfg.local_repository) + "\n")
        pref.write_text(localrepo.apt_preferences_text())
    else:
        local.unlink(missing_ok=True)
        pref.unlink(missing_ok=True)


def setup_apt(cfg: AptConfig, status: Path, keyring: Path) -> HostApt:
    ws = cfg.workspace.absolute() / "apt"
    etc = ws / "etc"
    for d in ("apt.conf.d", "preferences.d", "sources.list.d", "trusted.gpg.d"):
        (etc / d).mkdir(parents=True, exist_ok=True)
    for d in ("state", "cache", "log"):
        (ws / d).mkdir(parents=True, exist_ok=True)
    # With a cache, lists and packages live there (shared by builds, serialized by its lock).
    base = cfg.cache_dir.absolute() / "apt" if cfg.cache_dir is not None else ws
    lock_file = base / "lock" if cfg.cache_dir is not None else None
    for d in ("lists", "archives"):
        (base / d / "partial").mkdir(parents=True, exist_ok=True)
    _write_sources_and_keys(cfg, etc, keyring)
    conf = ws / "apt.conf"
    conf.write_text(_apt_conf_text(_apt_settings(cfg, ws, base, status), cfg.architecture))
    env = {"APT_CONFIG": str(conf), "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
    return HostApt(cfg=cfg, conf=conf, lists=base / "lists", archives=base / "archives",
                   uncompressed=base / "uncompressed", status=status, env=env, lock_file=lock_file)


@contextlib.contextmanager
def cache_locked(apt: HostApt) -> Iterator[None]:
    """Serialize builds that share a package cache (apt would fail on its own locks instead of waiting)."""
    if apt.lock_file is None:
        yield
        return
    with apt.lock_file.open("a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"Waiting for the package cache {apt.lock_file.parent} used by another build")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apt_get(apt: HostApt, args: Sequence[str], what: str, progress: str = "Downloading") -> str:
    """Run apt-get, showing its download progress (`progress` names it); return stdout and stderr together
    (Debug::pkgDPkgPM writes its plan to stderr). `what` names the operation in errors."""
    with log.progress() as renderer:
        download = DownloadProgress(renderer, progress)
        proc = run_streaming(lambda fd: ["apt-get", "-o", f"APT::Status-Fd={fd}", *args], sandbox=apt.cfg.sandbox,
                             env=apt.env, on_stdout=download.stdout_line, on_status=download.status_line)
    text = f"{proc.stdout}\n{proc.stderr}"
    if log.debug_enabled():
        log.debug(text.strip())
    if proc.returncode != 0:
        msg = (apt_error_message(text, apt.cfg.release) or
               f"apt-get {args[0]} failed with exit status {proc.returncode}")
        tail = "\n".join(text.strip().splitlines()[-8:])
        raise MkosiError(f"{what}: {msg}", hint=f"apt-get said:\n{tail}")
    for line in proc.stderr.splitlines():
        if line.startswith("W: "):
            log.warn(f"apt-get: {line[3:]}")
    return text


# When this process last refreshed a lists directory for a set of sources: install_more() right after
# install() in the same build does not need to ask the mirrors again.
_refreshed: dict[tuple[str, str], float] = {}


_REFRESH_INTERVAL = 600.0


# This mkosi invocation: fixed when the module is imported, before the images of a build are forked, so
# the images built at the same time share it, and one image's refresh of a shared cache's lists serves
# the others (see _shared_refresh()). CLOCK_MONOTONIC is the same in every process of the machine.
_INVOCATION = f"{os.getpid()}.{time.monotonic_ns()}"


def _refresh_record(apt: HostApt) -> Optional[Path]:
    """Where builds sharing a package cache note their last refresh (next to the lists: apt-get update
    removes files it does not know from the lists directory)."""
    return apt.lock_file.with_name("refreshed") if apt.lock_file is not None else None


def _shared_refresh(apt: HostApt, key: tuple[str, str]) -> Optional[float]:
    """When another image of this invocation refreshed these lists for these sources (under the cache's
    lock, which the caller holds), or None."""
    record = _refresh_record(apt)
    try:
        invocation, digest, at = record.read_text().split() if record is not None else ("", "", "")
    except (OSError, ValueError):
        return None
    if invocation != _INVOCATION or digest != _key_digest(key):
        return None
    return float(at)


def _key_digest(key: tuple[str, str]) -> str:
    return hashlib.sha256("\0".join(key).encode()).hexdigest()


def update(apt: HostApt) -> None:
    _update_all(apt)
    if apt.cfg.local_repository is not None:
        _update_local(apt)


def _update_local(apt: HostApt) -> None:
    """Read the local repository's index again, with network or without: it is a directory of this
    build, whose packages may have changed since the last update (a build script's, in $PACKAGEDIR)."""
    etc = apt.conf.parent / "etc"
    (etc / "no-source-parts").mkdir(exist_ok=True)
    _apt_get(apt, ["update", "--error-on=any", "-o", "pkgCacheFile::Generate=false",
                   "-o", f"Dir::Etc::SourceList={etc / 'sources.list.d' / LOCAL_LIST}",
                   "-o", f"Dir::Etc::SourceParts={etc / 'no-source-parts'}"],
             "reading the local packages' index", progress="Reading the local index")


def drop_local_lists(apt: HostApt) -> None:
    """Remove the local repository's lists from a shared lists directory: its path is this build's."""
    if apt.cfg.local_repository is None or apt.lock_file is None:
        return
    prefix = uri_to_filename(f"{apt.cfg.local_repository.absolute()}/")
    for p in apt.lists.glob(f"{prefix}*"):
        with contextlib.suppress(OSError):
            p.unlink()


def _update_all(apt: HostApt) -> None:
    cfg = apt.cfg
    if cfg.network and cfg.refresh:
        etc = apt.conf.parent / "etc"
        sources = [etc / "sources.list", *sorted((etc / "sources.list.d").iterdir())]
        key = (str(apt.lists), "\0".join(p.read_text() for p in sources))
        last = _refreshed.get(key) or _shared_refresh(apt, key)
        if last is not None and time.monotonic() - last < _REFRESH_INTERVAL:
            log.debug("package lists were refreshed by this build already")
            return
        with log.step("Refreshing package lists"):
            # The caches are built by the next apt run anyway; doing it here too would cost ~0.5s.
            _apt_get(apt, ["update", "--error-on=any", "-o", "pkgCacheFile::Generate=false"],
                     "refreshing package lists", progress="Fetching lists")
        _refreshed[key] = time.monotonic()
        if (record := _refresh_record(apt)) is not None:
            with contextlib.suppress(OSError):
                record.write_text(f"{_INVOCATION} {_key_digest(key)} {_refreshed[key]}\n")
        return
    prefix = list_prefixes(main_lines(cfg))[0]
    if not any(p.name.startswith(prefix) and "_Packages" in p.name for p in apt.lists.iterdir()):
        raise MkosiError(f"no cached package lists for {cfg.distribution} {cfg.release} in {apt.lists}",
                         hint="build once with network access (and CacheOnly=auto) to fill the package cache")
    log.info("Using cached package lists " + ("(CacheOnly=metadata)" if cfg.network else "(network access disabled)"))


def _plan_key(apt: HostApt, command: str, packages: Sequence[str]) -> str:
    """What apt's resolution depends on: its configuration, the sources, keys and lists, the dpkg status."""
    h = hashlib.sha256()
    h.update(repr((command, list(packages))).encode())
    # The workspace differs from build to build; the cache and the root do not matter either, nor does the
    # proxy (ProxyUrl=, ProxyExclude=): how packages are fetched is not what is resolved.
    conf = "".join(line for line in apt.conf.read_text().splitlines(keepends=True)
                   if not re.match(r"Acquire::https?::Proxy", line))
    h.update(conf.replace(str(apt.conf.parent), "@WORKSPACE@").encode())
    etc = apt.conf.parent / "etc"
    for p in sorted(etc.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(etc)).encode() + b"\0" + p.read_bytes())
    for p in sorted(apt.lists.iterdir()):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.name} {st.st_size} {st.st_mtime_ns}\n".encode())
    h.update(apt.status.read_bytes())
    return h.hexdigest()


def resolve(apt: HostApt, command: str, packages: Sequence[str], what: str,
          downloads: bool = True) -> list[DpkgOp]:
    """Resolve and download in one apt run; return the dpkg runs apt would do.

    apt's resolution only depends on what _plan_key() hashes; with a package cache, its result is kept
    next to the cached packages, and used again while all of that stays the same and the planned
    packages are all still cached (the next `apt-get update` that brings a change invalidates it).
    """
    saved = _saved_plan_path(apt, command, packages)
    plan = _saved_plan(saved) if saved is not None else None
    if plan is not None:
        if downloads:
            log.info("Need to get 0 B of archives (the packages and their resolution are cached)")
        return plan
    out = _apt_get(apt, [command, "-o", "Debug::pkgDPkgPM=1", "--", *packages], what)
    m = re.search(r"^Need to get (.*) of archives", out, re.M)
    if downloads:
        log.info(f"Need to get {m.group(1) if m else '0 B'} of archives")
        if fetched := re.search(r"^(Fetched \S+ \S+ in .*)$", out, re.M):
            log.info(fetched.group(1))
    plan = parse_dpkg_plan(out)
    if saved is not None:
        _save_plan(saved, plan)
    return plan


def _saved_plan_path(apt: HostApt, command: str, packages: Sequence[str]) -> Optional[Path]:
    if apt.lock_file is None:
        return None
    return apt.lock_file.parent / "plans" / f"{_plan_key(apt, command, packages)}.txt"


def _saved_plan(saved: Path) -> Optional[list[DpkgOp]]:
    """A kept resolution, if there is one and all of its packages are still in the cache."""
    if not saved.exists():
        return None
    plan = parse_dpkg_plan(saved.read_text())
    if not all(Path(a).exists() for op in plan if op.action in ("unpack", "install") for a in op.args):
        return None
    saved.touch()
    return plan


def _save_plan(saved: Path, plan: Sequence[DpkgOp]) -> None:
    saved.parent.mkdir(exist_ok=True)
    tmp = saved.with_name(f".{saved.name}.{os.getpid()}")
    tmp.write_text("".join(format_op(op) + "\n" for op in plan))
    os.replace(tmp, saved)
    # Keep the most recently used resolutions only.
    old = sorted(saved.parent.glob("*.txt"), key=lambda p: p.stat().st_mtime, reverse=True)[32:]
    for p in old:
        with contextlib.suppress(OSError):
            p.unlink()
