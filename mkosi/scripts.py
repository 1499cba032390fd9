"""The user's scripts (prepare, build, postinst, finalize) and the source/result transfer around them."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from mkosi import log
from mkosi.config.enums import SourceFileTransfer, WithNetwork
from mkosi.config.settings import MkosiArgs
from mkosi.context import Context, Phase
from mkosi.run import run
from mkosi.sandbox import nspawn_command

# Never copied into the build image with the sources.
SOURCE_EXCLUDES = ("mkosi.builddir", "mkosi.cache", "mkosi.output", "mkosi.workspace", "mkosi.installdir",
                   "mkosi.includedir")


def script_environment(ctx: Context) -> dict[str, str]:
    args = ctx.args
    env = {
        "WITH_DOCS": "1" if args.with_docs else "0",
        "WITH_TESTS": "1" if args.with_tests else "0",
        "WITH_NETWORK": "1" if args.with_network == WithNetwork.yes else "0",
    }
    if args.image_id:
        env["IMAGE_ID"] = args.image_id
    if args.image_version:
        env["IMAGE_VERSION"] = args.image_version
    if args.config_files:
        env["MKOSI_DEFAULT"] = str(args.config_files[0])
    for item in args.environment:
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def _run_in_image(ctx: Context, script: Path, argv: list[str], *, network: bool, chdir: str | None = None,
                  binds: list[tuple[Path, str]] | None = None, env: dict[str, str] | None = None) -> None:
    inside = f"/root/{script.name}"
    target = ctx.root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(script, target)
    # nspawn creates missing mount points for binds; they must not stay behind in the image.
    created = [ctx.root / dst.lstrip("/") for _, dst in binds or [] if not (ctx.root / dst.lstrip("/")).exists()]
    try:
        run(nspawn_command(ctx.root, [inside, *argv], keep_unit=ctx.args.nspawn_keep_unit, network=network,
                           env={**script_environment(ctx), **(env or {})}, binds=binds or [], chdir=chdir))
    finally:
        target.unlink(missing_ok=True)
        for mountpoint in created:
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


def run_prepare_script(ctx: Context) -> None:
    script = ctx.args.prepare_script
    if script is None:
        return
    with log.step(f"Running prepare script {script.name} {ctx.phase.value}"):
        src = ctx.args.build_sources
        binds = [(src, "/root/src")] if src else []
        _run_in_image(ctx, script, [ctx.phase.value], network=True, chdir="/root/src" if src else None,
                      binds=binds, env={"SRCDIR": "/root/src"} if src else None)


def run_postinst_script(ctx: Context) -> None:
    script = ctx.args.postinst_script
    if script is None:
        return
    with log.step(f"Running postinstall script {script.name} {ctx.phase.value}"):
        _run_in_image(ctx, script, [ctx.phase.value], network=ctx.args.with_network == WithNetwork.yes)


def run_finalize_script(ctx: Context) -> None:
    script = ctx.args.finalize_script
    if script is None:
        return
    with log.step(f"Running finalize script {script.name} {ctx.phase.value}"):
        run([script, ctx.phase.value], env={**script_environment(ctx), "BUILDROOT": str(ctx.root)})


def default_transfer(src: Path) -> SourceFileTransfer:
    return SourceFileTransfer.copy_git_cached if (src / ".git").exists() else SourceFileTransfer.copy_all


def _git_files(src: Path, *which: str) -> list[str]:
    out = run(["git", "-c", f"safe.directory={src}", "-C", src, "ls-files", "-z", *which],
              capture=True).stdout
    return [f for f in str(out).split("\0") if f]


def source_excludes(args: MkosiArgs, src: Path) -> set[str]:
    """Top-level names of the source tree that never go into an image: mkosi's own directories, and
    this configuration's outputs and caches when they are written into the source tree itself."""
    from mkosi.cache import incremental_cache_paths
    from mkosi.outputs import output_paths

    names = set(SOURCE_EXCLUDES)
    for p in [*output_paths(args), *incremental_cache_paths(args), args.workspace_dir]:
        if p is not None and p.parent.absolute() == src.absolute():
            names.add(p.name)
    if args.output is not None and args.output.parent.absolute() == src.absolute():
        names.add(f".{args.output.name}.tmp")
    return names


def source_files(src: Path, mode: SourceFileTransfer, excludes: set[str]) -> list[str]:
    """The relative paths that a transfer mode takes from the source tree (directories included for
    copy-all, which copies whole trees)."""
    if mode in (SourceFileTransfer.copy_all, SourceFileTransfer.mount):
        found = []
        for dirpath, dirnames, filenames in os.walk(src):
            rel = os.path.relpath(dirpath, src)
            if rel == ".":
                dirnames[:] = [d for d in dirnames if d not in excludes]
                filenames = [f for f in filenames if f not in excludes]
            found += [os.path.normpath(os.path.join(rel, n)) for n in [*dirnames, *filenames]]
        return sorted(found)
    files: list[str] = []
    if mode in (SourceFileTransfer.copy_git_cached, SourceFileTransfer.copy_git_more):
        files += _git_files(src, "--cached")
    if mode == SourceFileTransfer.copy_git_others:
        files += _git_files(src, "--others", "--exclude-standard")
    files = [f for f in files if f.split("/", 1)[0] not in excludes]
    return [f for f in files if (src / f).exists() or (src / f).is_symlink()]  # skip deleted-but-indexed


def copy_sources(src: Path, dst: Path, mode: SourceFileTransfer, resolve_symlinks: bool,
                 excludes: set[str]) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    if mode == SourceFileTransfer.copy_all:
        for entry in sorted(src.iterdir()):
            if entry.name in excludes:
                continue
            flags = ["--recursive", "--dereference" if resolve_symlinks else "--no-dereference",
                     "--preserve=mode,timestamps,links", "--reflink=auto"]
            run(["cp", *flags, entry, dst / entry.name])
        return
    for rel in source_files(src, mode, excludes):
        s, d = src / rel, dst / rel
        d.parent.mkdir(parents=True, exist_ok=True)
        if s.is_symlink() and not resolve_symlinks:
            os.symlink(os.readlink(s), d)
        else:
            shutil.copy2(s, d)
    if mode == SourceFileTransfer.copy_git_more:
        run(["cp", "--recursive", "--no-dereference", "--preserve=mode,timestamps,links", src / ".git", dst / ".git"])


def run_build_script(ctx: Context) -> None:
    args = ctx.args
    script = args.build_script
    assert script is not None and args.build_sources is not None
    src = args.build_sources
    mode = args.source_file_transfer or default_transfer(src)
    binds: list[tuple[Path, str]] = []
    if mode == SourceFileTransfer.mount:
        binds.append((src, "/root/src"))
    else:
        with log.step(f"Copying sources ({mode.value})"):
            copy_sources(src, ctx.root / "root/src", mode, args.source_resolve_symlinks,
                         source_excludes(args, src))
    dest = args.install_dir or ctx.dir("dest")
    dest.mkdir(parents=True, exist_ok=True)
    binds.append((dest, "/root/dest"))
    env = {"SRCDIR": "/root/src", "DESTDIR": "/root/dest"}
    if args.build_dir is not None:
        args.build_dir.mkdir(parents=True, exist_ok=True)
        binds.append((args.build_dir, "/root/build"))
        env["BUILDDIR"] = "/root/build"
    if args.include_dir is not None:
        binds.append((args.include_dir, "/usr/include"))
    with log.step(f"Running build script {script.name}"):
        _run_in_image(ctx, script, list(args.cmdline), network=args.with_network == WithNetwork.yes,
                      chdir="/root/src", binds=binds, env=env)
    results = ctx.workspace / "build-results"
    if results.exists():
        shutil.rmtree(results)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", dest, results])


def copy_build_results(ctx: Context) -> None:
    assert ctx.phase == Phase.final
    results = ctx.workspace / "build-results"
    if results.is_dir():
        with log.step("Copying build results"):
            run(["cp", "--archive", "--reflink=auto", "--no-target-directory", f"{results}/.", f"{ctx.root}/."])
    transfer = ctx.args.source_file_transfer_final
    if transfer is not None and ctx.args.build_sources is not None:
        with log.step(f"Copying sources into the final image ({transfer.value})"):
            copy_sources(ctx.args.build_sources, ctx.root / "root/src", transfer,
                         ctx.args.source_resolve_symlinks_final, source_excludes(ctx.args, ctx.args.build_sources))
