"""The user's scripts (prepare, build, postinst, finalize) and the source/result transfer around them."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from mkosi import log
from mkosi.config.enums import SourceFileTransfer, WithNetwork
from mkosi.context import Context, Phase
from mkosi.run import run
from mkosi.sandbox import Container, Mount, Sandbox
from mkosi.sources import copy_sources, default_transfer, source_excludes

# Never copied into the build image with the sources.

def script_environment(ctx: Context) -> dict[str, str]:
    config = ctx.config
    env = {
        "WITH_DOCS": "1" if config.with_docs else "0",
        "WITH_TESTS": "1" if config.with_tests else "0",
        "WITH_NETWORK": "1" if config.with_network == WithNetwork.yes else "0",
    }
    if config.image_id:
        env["IMAGE_ID"] = config.image_id
    if config.image_version:
        env["IMAGE_VERSION"] = config.image_version
    if config.config_files:
        env["MKOSI_DEFAULT"] = str(config.config_files[0])
    for item in config.environment:
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    return env


def script_sandbox(ctx: Context, *, network: bool, chdir: str | None = None,
                   binds: list[tuple[Path, str]] | None = None, env: dict[str, str] | None = None) -> Sandbox:
    """A systemd-nspawn container of the image root with the script environment and these binds."""
    return ctx.sandbox.nspawn(
        ctx.root, network=network, chdir=chdir, env={**script_environment(ctx), **(env or {})},
        mounts=[Mount(src, dst) for src, dst in binds or []],
        container=Container(keep_unit=ctx.config.nspawn_keep_unit))


def _run_in_image(ctx: Context, script: Path, argv: list[str], *, network: bool, chdir: str | None = None,
                  binds: list[tuple[Path, str]] | None = None, env: dict[str, str] | None = None) -> None:
    inside = f"/root/{script.name}"
    target = ctx.root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(script, target)
    # nspawn creates missing mount points for binds; they must not stay behind in the image.
    created = [ctx.root / dst.lstrip("/") for _, dst in binds or [] if not (ctx.root / dst.lstrip("/")).exists()]
    try:
        run([inside, *argv], sandbox=script_sandbox(ctx, network=network, chdir=chdir, binds=binds, env=env))
    finally:
        target.unlink(missing_ok=True)
        for mountpoint in created:
            with contextlib.suppress(OSError):
                mountpoint.rmdir()


def run_prepare_script(ctx: Context) -> None:
    script = ctx.config.prepare_script
    if script is None:
        return
    with log.step(f"Running prepare script {script.name} {ctx.phase.value}"):
        src = ctx.config.build_sources
        binds = [(src, "/root/src")] if src else []
        _run_in_image(ctx, script, [ctx.phase.value], network=True, chdir="/root/src" if src else None,
                      binds=binds, env={"SRCDIR": "/root/src"} if src else None)


def run_postinst_script(ctx: Context) -> None:
    script = ctx.config.postinst_script
    if script is None:
        return
    with log.step(f"Running postinstall script {script.name} {ctx.phase.value}"):
        _run_in_image(ctx, script, [ctx.phase.value], network=ctx.config.with_network == WithNetwork.yes)


def run_finalize_script(ctx: Context) -> None:
    script = ctx.config.finalize_script
    if script is None:
        return
    with log.step(f"Running finalize script {script.name} {ctx.phase.value}"):
        run([script, ctx.phase.value],
            sandbox=ctx.sandbox.but(env={**script_environment(ctx), "BUILDROOT": str(ctx.root)}))


def run_build_script(ctx: Context) -> None:
    config = ctx.config
    script = config.build_script
    assert script is not None and config.build_sources is not None
    src = config.build_sources
    mode = config.source_file_transfer or default_transfer(src)
    binds: list[tuple[Path, str]] = []
    if mode == SourceFileTransfer.mount:
        binds.append((src, "/root/src"))
    else:
        with log.step(f"Copying sources ({mode.value})"):
            copy_sources(src, ctx.root / "root/src", mode, config.source_resolve_symlinks,
                         source_excludes(config, src))
    dest = config.install_dir or ctx.dir("dest")
    dest.mkdir(parents=True, exist_ok=True)
    binds.append((dest, "/root/dest"))
    env = {"SRCDIR": "/root/src", "DESTDIR": "/root/dest"}
    if config.build_dir is not None:
        config.build_dir.mkdir(parents=True, exist_ok=True)
        binds.append((config.build_dir, "/root/build"))
        env["BUILDDIR"] = "/root/build"
    if config.include_dir is not None:
        binds.append((config.include_dir, "/usr/include"))
    with log.step(f"Running build script {script.name}"):
        _run_in_image(ctx, script, list(ctx.args.cmdline), network=config.with_network == WithNetwork.yes,
                      chdir="/root/src", binds=binds, env=env)
    results = ctx.workspace / "build-results"
    if results.exists():
        shutil.rmtree(results)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", dest, results], sandbox=ctx.sandbox)


def copy_build_results(ctx: Context) -> None:
    assert ctx.phase == Phase.final
    results = ctx.workspace / "build-results"
    if results.is_dir():
        with log.step("Copying build results"):
            run(["cp", "--archive", "--reflink=auto", "--no-target-directory", f"{results}/.", f"{ctx.root}/."],
                sandbox=ctx.sandbox)
    config = ctx.config
    transfer = config.source_file_transfer_final
    if transfer is not None and config.build_sources is not None:
        with log.step(f"Copying sources into the final image ({transfer.value})"):
            copy_sources(config.build_sources, ctx.root / "root/src", transfer,
                         config.source_resolve_symlinks_final, source_excludes(config, config.build_sources))
