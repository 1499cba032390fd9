"""Caches: the package cache directory, and incremental mode's cached images.

A cached image is keyed on everything that shaped it (distribution, release, architecture, mirror,
repositories, package lists, the settings marked `cache` in the settings table, skeleton trees,
the prepare script, repository definitions, mkosi's version), so a changed input rebuilds it instead
of reusing a stale copy. Whole builds are keyed too: with -i, a build whose inputs (including the
sources and all scripts) did not change since the last build leaves the output alone."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from mkosi import __version__, log
from mkosi.config.settings import CONFIG_FIELDS, SETTINGS, Args, Config, plain_value
from mkosi.context import Context, Phase
from mkosi.formats import FormatKind
from mkosi.installers.localrepo import digest_packages
from mkosi.output.artifacts import cached_image_path, salt_path
from mkosi.proxy import PROXY_SETTINGS
from mkosi.run import run
from mkosi.sources import default_transfer, source_excludes, source_files
from mkosi.subvolumes import copy_tree, remove_tree


def package_cache_dir(config: Config) -> Optional[Path]:
    """Where downloaded packages are kept between builds (Cache= / mkosi.cache/), per distribution."""
    if config.cache_path is None:
        return None
    return config.cache_path / f"{config.distribution.value}~{config.release}~{config.architecture}"


def write_private(path: Path, text: str) -> None:
    """Write a key file readable by its owner only, atomically (a temporary name of this process's own:
    builds that share a cache directory do not write into each other's)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _salt(config: Config) -> bytes:
    """A random salt kept next to the caches (0600): secrets enter keys only through an HMAC with it, so a
    key file cannot be used to test guesses of a password offline."""
    path = salt_path(config)
    try:
        data = bytes.fromhex(path.read_text().strip())
        if len(data) == 32:
            return data
    except (OSError, ValueError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(32)
    write_private(path, data.hex() + "\n")
    return data


def settings_inputs(config: Config, only_cache: bool) -> dict[str, Any]:
    """The values of the settings that shape an image, as plain data; secrets as salted HMACs. The proxy
    settings shape nothing (and the client key is a secret): they are left out."""
    inputs: dict[str, Any] = {}
    for s in SETTINGS:
        if s.dest not in CONFIG_FIELDS or (only_cache and not s.cache) or s.dest in PROXY_SETTINGS:
            continue
        value = config.setting_value(s)
        if s.secret and value not in (None, "", [], ()):
            # An unset secret stays as it is: it equals its default, and needs no salt.
            value = hmac.new(_salt(config), str(value).encode(), "sha256").hexdigest()
        inputs[s.dest] = plain_value(value)
    return inputs


def digest_path(h: hashlib._Hash, path: Optional[Path], files: Optional[list[str]] = None) -> None:
    """Feed a file or a directory tree (names, types, modes, owners, link targets, contents) to h."""
    if path is None:
        h.update(b"<none>")
        return
    if not path.exists():
        h.update(b"<missing>" + str(path).encode())
        return
    if path.is_file():
        h.update(path.name.encode())
        h.update(path.read_bytes())
        return
    names = files if files is not None else sorted(
        os.path.relpath(os.path.join(d, n), path) for d, dirs, fs in os.walk(path) for n in [*dirs, *fs])
    for rel in sorted(names):
        p = path / rel
        st = os.lstat(p)
        h.update(f"{rel}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0".encode())
        if p.is_symlink():
            h.update(os.readlink(p).encode())
        elif p.is_file():
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)


def image_cache_key(ctx: Context, packages: list[str]) -> str:
    config = ctx.config
    h = hashlib.sha256()
    inputs = settings_inputs(config, only_cache=True)
    inputs.update(phase=ctx.phase.value, packages=packages, version=__version__)
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for tree in config.skeleton_trees:
        digest_path(h, tree.source)
    digest_path(h, config.prepare_script)
    digest_path(h, config.repository_directory)
    # The local packages may be installed by the cached image; VolatilePackageDirectories= never count.
    digest_packages(h, config.package_directories)
    return h.hexdigest()


def load_cached_image(ctx: Context, key: str, stale_ok: bool = False) -> bool:
    """Put the cached image of this phase at ctx.root when its key matches (or, with stale_ok, whatever
    its key: -R uses the cached development image as it is). The key is read under the image's lock, so
    that a build saving it meanwhile is waited for."""
    image = cached_image_path(ctx.config, ctx.phase)
    keyfile = Path(f"{image}.key")
    if not image.is_dir() or not keyfile.exists():
        return False
    overlay = overlay_suffices(ctx)
    with cache_lock(image, keep_shared=overlay) as lock:
        if not image.is_dir() or not keyfile.exists():
            return lock.drop()
        if keyfile.read_text().strip() != key:
            if not stale_ok:
                log.info(f"The cached {ctx.phase.value} image is out of date (its inputs changed); rebuilding it")
                return lock.drop()
            log.warn(f"The cached {ctx.phase.value} image is out of date (its inputs changed); using it anyway "
                     "(-R never rebuilds it: run 'mkosi -i -f build' for that)")
        with log.step(f"Reusing the cached {ctx.phase.value} image"):
            if ctx.root.exists():
                remove_tree(ctx.root)
            if overlay:
                # An overlay on the cached image costs nothing, where a copy of the tree takes seconds.
                # metacopy: the clean-up's mtime clamping copies up metadata only, not whole files.
                upper = ctx.dir(f"overlay-upper-{ctx.phase.value}")
                work = ctx.dir(f"overlay-work-{ctx.phase.value}")
                ctx.root.mkdir()
                run(["mount", "-t", "overlay", "overlay", "-o",
                     f"lowerdir={image},upperdir={upper},workdir={work},metacopy=on", ctx.root],
                    sandbox=ctx.sandbox.on_host())
            else:
                copy_tree(ctx.config, image, ctx.root)
    return True


def overlay_suffices(ctx: Context) -> bool:
    """Whether the phase's tree is only read after the build (the development image, which is thrown
    away, and the final image of a format made from the tree: archives, file systems, disks); a
    directory or subvolume output is the tree itself, so it must be a copy of its own."""
    return ctx.phase == Phase.build or ctx.config.format.row.kind is not FormatKind.tree


# Shared locks on the cached images that this process's builds use as overlay lower layers; released
# when the build's workspace ends (release_cache_locks()).
_HELD: list[int] = []


def _lock(image: Path, how: int) -> int:
    path = Path(f"{image}.lock")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, how | fcntl.LOCK_NB)
    except BlockingIOError:
        log.info(f"Waiting for another build that uses {image}")
        try:
            fcntl.flock(fd, how)
        except BaseException:
            os.close(fd)
            raise
    return fd


@dataclasses.dataclass
class CacheLock:
    fd: int
    keep_shared: bool

    def drop(self) -> bool:
        """Give up keeping the lock past the block (nothing was taken from the cache): False, for returning."""
        self.keep_shared = False
        return False


@contextlib.contextmanager
def cache_lock(image: Path, keep_shared: bool = False) -> Iterator[CacheLock]:
    """An exclusive lock on a cached image (its `.lock` file) while it is saved or taken: builds sharing
    the cache never take one half written, nor replace it under each other. With keep_shared (the image
    becomes the lower layer of an overlay) a shared lock stays until the build ends (release_cache_locks()),
    so that no other build replaces the image meanwhile."""
    lock = CacheLock(_lock(image, fcntl.LOCK_EX), keep_shared)
    try:
        yield lock
    except BaseException:
        os.close(lock.fd)
        raise
    if lock.keep_shared:
        fcntl.flock(lock.fd, fcntl.LOCK_SH)
        _HELD.append(lock.fd)
    else:
        os.close(lock.fd)


def release_cache_locks() -> None:
    while _HELD:
        os.close(_HELD.pop())


def save_cached_image(ctx: Context, key: str) -> None:
    """Copy the tree to the cache: first to a temporary name of this build's own, then renamed into place,
    and only then its key written (an interrupted save leaves no image with a key that matches)."""
    image = cached_image_path(ctx.config, ctx.phase)
    keyfile = Path(f"{image}.key")
    with log.step(f"Saving the cached {ctx.phase.value} image"), cache_lock(image):
        # Under the lock no other build saves this image: any temporary copy left is of a killed build.
        for stale in image.parent.glob(f".{image.name}.tmp-*"):
            remove_tree(stale)
        tmp = image.with_name(f".{image.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        keyfile.unlink(missing_ok=True)
        try:
            copy_tree(ctx.config, ctx.root, tmp)
            if image.exists():
                remove_tree(image)
            os.rename(tmp, image)
        finally:
            if tmp.exists():
                remove_tree(tmp)
        write_private(keyfile, key + "\n")


def build_key(args: Args, config: Config) -> str:
    """Every input of a whole build: all settings, all scripts and trees, the sources and the build
    script's arguments."""
    h = hashlib.sha256()
    inputs = settings_inputs(config, only_cache=False)
    inputs.update(cmdline=args.cmdline, version=__version__)
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for tree in [*config.skeleton_trees, *config.extra_trees]:
        digest_path(h, tree.source)
    for script in (config.build_script, config.prepare_script, config.postinst_script, config.finalize_script,
                   config.nspawn_settings, config.repository_directory, *config.postoutput_scripts):
        digest_path(h, script)
    # A whole build reads both kinds of package directories.
    digest_packages(h, [*config.package_directories, *config.volatile_package_directories])
    if config.build_script is not None and config.build_source is not None:
        mode = config.source_file_transfer or default_transfer(config.build_source)
        digest_path(h, config.build_source,
                    source_files(config.build_source, mode, source_excludes(config, config.build_source)))
    return h.hexdigest()
