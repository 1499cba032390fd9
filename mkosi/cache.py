"""Caches: the package cache directory, and incremental mode's cached images.

A cached image is keyed on everything that shaped it (distribution, release, architecture, mirror,
repositories, package lists, the settings marked `cache` in the settings table, skeleton trees,
the prepare script, repository definitions, mkosi's version), so a changed input rebuilds it instead
of reusing a stale copy. Whole builds are keyed too: with -i, a build whose inputs (including the
sources and all scripts) did not change since the last build leaves the output alone."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

from mkosi import __version__, log
from mkosi.config.settings import SETTINGS, MkosiArgs
from mkosi.context import Context, Phase
from mkosi.run import run


def package_cache_dir(args: MkosiArgs) -> Optional[Path]:
    """Where downloaded packages are kept between builds (Cache= / mkosi.cache/), per distribution."""
    if args.cache_path is None:
        return None
    return args.cache_path / f"{args.distribution.value}~{args.release}~{args.architecture}"


def _cache_base(args: MkosiArgs) -> Path:
    from mkosi.outputs import output_stem

    assert args.output is not None
    return args.output.parent / output_stem(args)


def cached_image_path(args: MkosiArgs, phase: Phase) -> Path:
    return Path(f"{_cache_base(args)}.cache-{phase.value}")


def output_key_path(args: MkosiArgs) -> Path:
    return Path(f"{_cache_base(args)}.cache-output.key")


def incremental_cache_paths(args: MkosiArgs) -> list[Path]:
    """Everything incremental mode keeps between builds (removed by -ff and clean -f)."""
    paths = []
    for phase in Phase:
        image = cached_image_path(args, phase)
        paths += [image, Path(f"{image}.key")]
    return [*paths, output_key_path(args)]


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


def _plain(value: Any) -> Any:
    from mkosi.summary import _plain as plain

    return plain(value)


def image_cache_key(ctx: Context, packages: list[str]) -> str:
    args = ctx.args
    h = hashlib.sha256()
    inputs = {s.dest: _plain(args.setting_value(s)) for s in SETTINGS if s.cache}
    inputs.update(phase=ctx.phase.value, packages=packages, version=__version__)
    h.update(json.dumps(inputs, sort_keys=True).encode())
    for tree in args.skeleton_trees:
        digest_path(h, tree)
    digest_path(h, args.prepare_script)
    digest_path(h, args.repository_directory)
    return h.hexdigest()


def load_cached_image(ctx: Context, key: str) -> bool:
    image = cached_image_path(ctx.args, ctx.phase)
    keyfile = Path(f"{image}.key")
    if not image.is_dir() or not keyfile.exists():
        return False
    if keyfile.read_text().strip() != key:
        log.info(f"The cached {ctx.phase.value} image is out of date (its inputs changed); rebuilding it")
        return False
    with log.step(f"Reusing the cached {ctx.phase.value} image"):
        if ctx.root.exists():
            shutil.rmtree(ctx.root)
        if ctx.phase == Phase.build:
            # The development image is thrown away after the build script: an overlay on the cached
            # image costs nothing, where a copy of a tree with a compiler in it takes seconds.
            upper, work = ctx.dir("overlay-upper"), ctx.dir("overlay-work")
            ctx.root.mkdir()
            run(["mount", "-t", "overlay", "overlay", "-o",
                 f"lowerdir={image},upperdir={upper},workdir={work}", ctx.root])
        else:
            run(["cp", "--archive", "--reflink=auto", "--no-target-directory", image, ctx.root])
    ctx.cached_image_reused = True
    return True


def save_cached_image(ctx: Context, key: str) -> None:
    image = cached_image_path(ctx.args, ctx.phase)
    keyfile = Path(f"{image}.key")
    tmp = image.with_name(f".{image.name}.tmp")
    with log.step(f"Saving the cached {ctx.phase.value} image"):
        for p in (tmp, image):
            if p.exists():
                shutil.rmtree(p)
        keyfile.unlink(missing_ok=True)
        run(["cp", "--archive", "--reflink=auto", "--no-target-directory", ctx.root, tmp])
        os.rename(tmp, image)
        keyfile.write_text(key + "\n")


def build_key(args: MkosiArgs) -> str:
    """Every input of a whole build: all settings, all scripts and trees, and the sources."""
    from mkosi.scripts import default_transfer, source_excludes, source_files
    from mkosi.summary import summary_dict

    h = hashlib.sha256()
    summary = summary_dict(args)
    summary.pop("Verb", None)
    summary.get("Output", {}).pop("Force", None)
    h.update(json.dumps(summary, sort_keys=True, default=str).encode())
    h.update((args.password or "").encode())
    for tree in [*args.skeleton_trees, *args.extra_trees]:
        digest_path(h, tree)
    for script in (args.build_script, args.prepare_script, args.postinst_script, args.finalize_script,
                   args.nspawn_settings, args.repository_directory):
        digest_path(h, script)
    h.update(json.dumps(args.cmdline).encode())
    if args.build_script is not None and args.build_sources is not None:
        mode = args.source_file_transfer or default_transfer(args.build_sources)
        digest_path(h, args.build_sources,
                    source_files(args.build_sources, mode, source_excludes(args, args.build_sources)))
    return h.hexdigest()
