"""The user's scripts (sync, prepare, build, postinst, finalize, postoutput, clean) and the source/result
transfer around them."""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

from mkosi import log
from mkosi.boot.kernel import EFI_ARCH
from mkosi.config.enums import BuildSourcesEphemeral, Distribution, SourceFileTransfer, WithNetwork
from mkosi.config.keys import build_subdir, sources_overlay_dir
from mkosi.config.settings import CONFIG_FIELDS, SETTINGS, Args, Config, plain_value
from mkosi.context import Context, Phase
from mkosi.distributions.debian import DPKG_ARCH
from mkosi.errors import MkosiError
from mkosi.installers.emerge import GENTOO_ARCH
from mkosi.installers.rpm import dnf_arch
from mkosi.output import gpt
from mkosi.progress import is_noise
from mkosi.run import PathString, run
from mkosi.sandbox import Container, Mount, Sandbox, nspawn_executable
from mkosi.sources import copy_sources, default_transfer, source_excludes
from mkosi.trees import copy_into_root, resolve_in_root

# How many of its last lines of output the error of a failing script shows.
SCRIPT_TAIL_LINES = 15


class ScriptError(MkosiError):
    """A user's script failed: says which script, its exit status and its last lines of output."""

    def __init__(self, what: str, script: Path, returncode: int, tail: Sequence[str]) -> None:
        self.returncode = returncode
        msg = f"{what} {script} failed with exit status {returncode}"
        if tail:
            msg += "; its last lines of output:\n" + "\n".join("    " + line for line in tail)
        else:
            msg += " (it printed nothing)"
        super().__init__(msg)


def debug_shell_argv(shell: Sandbox) -> list[str]:
    """The command line --debug-shell runs: nspawn of the script's container, without a command (nspawn
    starts the image's shell then), with the script's mounts, working directory and variables."""
    return shell.argv([], nspawn_executable())


def open_debug_shell(what: str, script: Path, shell: Sandbox) -> None:
    """--debug-shell: after a failed script, an interactive shell in its container, if there is a
    terminal to talk to; the build fails as usual once the shell exits."""
    if not sys.stdin.isatty():
        log.warn(f"--debug-shell: not opening a shell after the failed {what} {script.name}: "
                 "standard input is not a terminal")
        return
    log.info(f"The {what} {script.name} failed; opening a shell in its container (exit it to end the build)")
    sys.stdout.flush()
    run([], sandbox=shell, check=False)


def run_script_command(what: str, script: Path, argv: Sequence[PathString], sandbox: Sandbox,
                       shell: Optional[Sandbox] = None) -> None:
    """Run a script's command line in `sandbox`, passing its output through as it comes and keeping its
    last lines for the error message if it fails (the sandbox's command line is only shown with --debug).
    With `shell` (--debug-shell), a failure first opens an interactive shell in that container."""
    tail: collections.deque[str] = collections.deque(maxlen=SCRIPT_TAIL_LINES)
    read_fd, write_fd = os.pipe()

    def pump() -> None:
        with open(read_fd, "rb") as f:
            for raw in f:
                line = raw.decode(errors="replace").rstrip("\r\n")
                if is_noise(line, ["nspawn-propagate"]):
                    log.debug(line)
                    continue
                sys.stdout.buffer.write(raw)
                sys.stdout.flush()
                tail.append(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        with open(write_fd, "wb") as out:
            proc = run(argv, sandbox=sandbox, check=False, stdin=subprocess.DEVNULL, stdout=out,
                       stderr=subprocess.STDOUT)
    finally:
        # Whatever the script left running in the background may keep the pipe open: do not wait for it.
        reader.join(timeout=10)
    if proc.returncode != 0:
        if shell is not None:
            open_debug_shell(what, script, shell)
        raise ScriptError(what, script, proc.returncode, list(tail))


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
    if config.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(config.source_date_epoch)
    # The proxy's variables (ProxyUrl=, ProxyExclude=); Environment= (and EnvironmentFiles=) may override them.
    env.update(ctx.proxy_environment)
    apply_environment(env, config.environment)
    return env


# Where $PACKAGEDIR (the build's local packages, see mkosi/installers/localrepo.py) is in the image.
PACKAGEDIR_IN_IMAGE = "/root/packages"


def _packagedir(ctx: Context, binds: list[tuple[Path, str]], env: dict[str, str]) -> None:
    """Scripts in the image see the build's package directory (read-write) as $PACKAGEDIR."""
    if ctx.package_dir.is_dir():
        binds.append((ctx.package_dir, PACKAGEDIR_IN_IMAGE))
        env["PACKAGEDIR"] = PACKAGEDIR_IN_IMAGE


def source_mounts(ctx: Context, pairs: list[tuple[Path, str]], *, build: bool) -> list[Mount]:
    """The mounts of the build sources for a script. BuildSourcesEphemeral=yes: an overlay whose writes
    are discarded when the script ends; buildcache: the build script's writes are kept in the build
    directory and seen again by the next build (the other scripts' are discarded)."""
    mode = ctx.config.build_sources_ephemeral
    if mode == BuildSourcesEphemeral.no:
        return [Mount(src, dst) for src, dst in pairs]
    keep = sources_overlay_dir(ctx.config) if build and mode == BuildSourcesEphemeral.buildcache else None
    mounts = []
    for i, (src, dst) in enumerate(pairs):
        upper = None
        if keep is not None:
            upper = keep / str(i)
            upper.mkdir(parents=True, exist_ok=True)
        mounts.append(Mount(src, dst, overlay=True, upper=upper))
    return mounts


def script_sandbox(ctx: Context, *, network: bool, chdir: str | None = None,
                   binds: list[tuple[Path, str]] | None = None, env: dict[str, str] | None = None,
                   sources: Sequence[Mount] = ()) -> Sandbox:
    """A systemd-nspawn container of the image root with the script environment, these binds and the
    mounts of the sources."""
    return ctx.sandbox.nspawn(
        ctx.root, network=network, chdir=chdir, env={**script_environment(ctx), **(env or {})},
        mounts=[*sources, *(Mount(src, dst) for src, dst in binds or [])],
        container=Container(keep_unit=ctx.config.nspawn_keep_unit))


def _run_in_image(ctx: Context, what: str, script: Path, argv: list[str], *, network: bool,
                  chdir: str | None = None, binds: list[tuple[Path, str]] | None = None,
                  env: dict[str, str] | None = None, sources: Sequence[Mount] = ()) -> None:
    inside = f"/root/{script.name}"
    target = ctx.root / inside.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(script, target)
    # nspawn creates missing mount points for binds; they must not stay behind in the image.
    targets = [dst for _, dst in binds or []] + [m.target for m in sources]
    created = [ctx.root / dst.lstrip("/") for dst in targets if not (ctx.root / dst.lstrip("/")).exists()]
    try:
        sandbox = script_sandbox(ctx, network=network, chdir=chdir, binds=binds, env=env, sources=sources)
        run_script_command(what, script, [inside, *argv], sandbox, shell=sandbox if ctx.args.debug_shell else None)
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
        src = ctx.config.build_source
        binds: list[tuple[Path, str]] = []
        env = {"SRCDIR": "/root/src"} if src else {}
        _packagedir(ctx, binds, env)
        sources = source_mounts(ctx, [(src, "/root/src")] if src else [], build=False)
        _run_in_image(ctx, "prepare script", script, [ctx.phase.value], network=True,
                      chdir="/root/src" if src else None, binds=binds, sources=sources, env=env)


def run_postinst_script(ctx: Context) -> None:
    script = ctx.config.postinst_script
    if script is None:
        return
    with log.step(f"Running postinstall script {script.name} {ctx.phase.value}"):
        binds: list[tuple[Path, str]] = []
        env: dict[str, str] = {}
        _packagedir(ctx, binds, env)
        _run_in_image(ctx, "postinstall script", script, [ctx.phase.value],
                      network=ctx.config.with_network == WithNetwork.yes, binds=binds, env=env)


def run_finalize_script(ctx: Context) -> None:
    script = ctx.config.finalize_script
    if script is None:
        return
    with log.step(f"Running finalize script {script.name} {ctx.phase.value}"):
        # The finalize script runs on the host; --debug-shell opens its shell in the image it finalizes.
        shell = script_sandbox(ctx, network=False) if ctx.args.debug_shell else None
        env = {**script_environment(ctx), "BUILDROOT": str(ctx.root)}
        if ctx.package_dir.is_dir():
            env["PACKAGEDIR"] = str(ctx.package_dir)
        run_script_command("finalize script", script, [script, ctx.phase.value], ctx.sandbox.but(env=env),
                           shell=shell)


def copy_build_sources(ctx: Context) -> None:
    """Development image: the sources go to /root/src right after the prepare script (and the cached
    image), before the extra trees, the postinstall and the finalize script (with mount they are
    bind-mounted for the build script only)."""
    config = ctx.config
    if ctx.phase != Phase.build or config.build_script is None or config.build_source is None:
        return
    src = config.build_source
    mode = config.source_file_transfer or default_transfer(src)
    if mode == SourceFileTransfer.mount:
        return
    with log.step(f"Copying sources ({mode.value})"):
        copy_sources(src, resolve_in_root(ctx.root, "root/src"), mode, config.source_resolve_symlinks,
                     source_excludes(config, src))
        for tree in config.extra_build_sources:
            assert tree.target is not None
            extra_mode = config.source_file_transfer or default_transfer(tree.source)
            copy_sources(tree.source, resolve_in_root(ctx.root, f"root/src/{str(tree.target).lstrip('/')}"), extra_mode,
                         config.source_resolve_symlinks, source_excludes(config, tree.source))


def fill_include_dir(include_dir: Path, tree: Path) -> None:
    """Copy the headers of tree/usr/include into IncludeDirectory= (replacing older copies)."""
    headers = resolve_in_root(tree, "usr/include")
    if headers.is_dir():
        run(["cp", "--recursive", "--no-dereference", "--preserve=mode,timestamps,links", "--reflink=auto",
             "--no-target-directory", headers, include_dir])


def run_build_script(ctx: Context) -> None:
    config = ctx.config
    script = config.build_script
    assert script is not None and config.build_source is not None
    src = config.build_source
    mode = config.source_file_transfer or default_transfer(src)
    binds: list[tuple[Path, str]] = []
    sources: list[Mount] = []
    if mode == SourceFileTransfer.mount:
        pairs = [(src, "/root/src")]
        pairs += [(tree.source, f"/root/src/{str(tree.target).lstrip('/')}") for tree in config.extra_build_sources]
        sources = source_mounts(ctx, pairs, build=True)
    dest = config.install_dir or ctx.dir("dest")
    dest.mkdir(parents=True, exist_ok=True)
    binds.append((dest, "/root/dest"))
    env = {"SRCDIR": "/root/src", "DESTDIR": "/root/dest"}
    if (build := build_subdir(config)) is not None:
        build.mkdir(parents=True, exist_ok=True)
        binds.append((build, "/root/build"))
        env["BUILDDIR"] = "/root/build"
    _packagedir(ctx, binds, env)
    if config.include_dir is not None:
        # The image's own headers first, so that the script still sees them through the mount.
        config.include_dir.mkdir(parents=True, exist_ok=True)
        with log.step(f"Copying the development image's headers to {config.include_dir}"):
            fill_include_dir(config.include_dir, ctx.root)
        binds.append((config.include_dir, "/usr/include"))
    with log.step(f"Running build script {script.name}"):
        _run_in_image(ctx, "build script", script, list(ctx.args.cmdline),
                      network=config.with_network == WithNetwork.yes, chdir="/root/src", binds=binds, env=env,
                      sources=sources)
    if config.include_dir is not None:
        # And the headers the build installed into $DESTDIR.
        fill_include_dir(config.include_dir, dest)
    results = ctx.workspace / "build-results"
    if results.exists():
        shutil.rmtree(results)
    run(["cp", "--archive", "--reflink=auto", "--no-target-directory", dest, results], sandbox=ctx.sandbox)


def copy_build_results(ctx: Context) -> None:
    assert ctx.phase == Phase.final
    results = ctx.workspace / "build-results"
    if results.is_dir():
        with log.step("Copying build results"):
            # Every path resolved inside the image: what the build installed never lands on the host.
            copy_into_root(results, ctx.root, keep_owner=True)
    config = ctx.config
    transfer = config.source_file_transfer_final
    if transfer is not None and config.build_source is not None:
        with log.step(f"Copying sources into the final image ({transfer.value})"):
            copy_sources(config.build_source, resolve_in_root(ctx.root, "root/src"), transfer,
                         config.source_resolve_symlinks_final, source_excludes(config, config.build_source))


def finish_build_only(ctx: Context) -> None:
    """The maker of Format=none: no image is written; says where the build script's results went."""
    where = ctx.config.install_dir
    if where is not None:
        log.info(f"Format=none: no image is written; the build script's results are in {where}")
    else:
        log.info("Format=none: no image is written (set InstallDirectory= to keep the build script's results)")


# ---------------------------------------------------------------- scripts run on the host, outside a build root
#
# SyncScripts= (before the build), PostOutputScripts= (with the finished outputs, before they are moved
# into the output directory) and CleanScripts= (after `clean` removed the outputs) run on the host, in the
# directory mkosi was started in, with the variables of the manual's table for each of them.

HOST_SCRIPT_SETTINGS = {"configure": "ConfigureScripts=", "sync": "SyncScripts=", "postoutput": "PostOutputScripts=",
                        "clean": "CleanScripts="}


def distribution_architecture(config: Config) -> str:
    """Architecture= as the distribution's package manager names it."""
    arch = config.architecture
    if config.distribution in (Distribution.debian, Distribution.ubuntu):
        return DPKG_ARCH.get(arch, arch)
    if config.distribution == Distribution.gentoo:
        return GENTOO_ARCH[arch][0] if arch in GENTOO_ARCH else arch
    return dnf_arch(arch)


def systemd_architecture(arch: str) -> str:
    """Architecture= in systemd's spelling (x86-64, arm64 ...), what upstream's $ARCHITECTURE holds."""
    try:
        return gpt.normalize_arch(arch)
    except MkosiError:
        return arch


def host_script_environment(args: Args, config: Config, which: str, *, srcdir: Path,
                            outputdir: Optional[Path] = None, cached: Optional[bool] = None) -> dict[str, str]:
    """The variables a sync, postoutput or clean script gets (`which`), besides $MKOSI_CONFIG."""
    env = {
        "ARCHITECTURE": systemd_architecture(config.architecture),
        "DISTRIBUTION": config.distribution.value,
        "RELEASE": config.release,
        "DISTRIBUTION_ARCHITECTURE": distribution_architecture(config),
        "MKOSI_UID": os.environ.get("SUDO_UID") or str(os.getuid()),
        "MKOSI_GID": os.environ.get("SUDO_GID") or str(os.getgid()),
        "MKOSI_DEBUG": "1" if args.debug else "0",
        "SRCDIR": str(srcdir),
    }
    if config.architecture in EFI_ARCH:
        env["EFI_ARCHITECTURE"] = EFI_ARCH[config.architecture]
    if config.image_id:
        env["IMAGE_ID"] = config.image_id
    if config.image_version:
        env["IMAGE_VERSION"] = config.image_version
    if which in ("sync", "clean"):
        env["PROFILES"] = ",".join(config.profiles)
    if which == "clean" and config.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = str(config.source_date_epoch)
    if which == "sync":
        env["CACHED"] = "1" if cached else "0"
    if outputdir is not None and which in ("postoutput", "clean"):
        env["OUTPUTDIR"] = str(outputdir)
    apply_environment(env, config.environment)
    return env


def config_json(config: Config) -> dict[str, Any]:
    """The image's settings for $MKOSI_CONFIG: every setting under its key, as plain data; a secret only as
    "(set)" when it is set, like `summary --json` shows it."""
    data: dict[str, Any] = {"Image": config.image}
    for s in SETTINGS:
        if not s.key or s.dest not in CONFIG_FIELDS:
            continue
        value = config.setting_value(s)
        data[s.key] = ("(set)" if value else None) if s.secret else plain_value(value)
    return data


@contextlib.contextmanager
def config_json_file(config: Config, directory: Optional[Path] = None) -> Iterator[Path]:
    """$MKOSI_CONFIG: config_json() in a file of its own (0600), removed afterwards."""
    fd, name = tempfile.mkstemp(prefix="mkosi-config-", suffix=".json", dir=directory)
    path = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config_json(config), f, indent=2, sort_keys=True)
            f.write("\n")
        yield path
    finally:
        path.unlink(missing_ok=True)


def check_host_scripts(config: Config, which: str) -> list[Path]:
    """The configured scripts of one kind; each must be an executable file."""
    scripts: list[Path] = list(getattr(config, f"{which}_scripts"))
    for script in scripts:
        if not script.is_file():
            raise MkosiError(f"{HOST_SCRIPT_SETTINGS[which]} '{script}' is not a file",
                             hint=f"remove it from {HOST_SCRIPT_SETTINGS[which]} or create it")
        if not os.access(script, os.X_OK):
            raise MkosiError(f"{HOST_SCRIPT_SETTINGS[which]} '{script}' is not executable",
                             hint=f"run 'chmod +x {script}'")
    return scripts


def host_source_mounts(config: Config, srcdir: Path) -> list[Mount]:
    """BuildSources= over the directory mkosi runs in (nothing to mount for the default, that directory)."""
    mounts: list[Mount] = []
    primary = config.build_source
    if primary is not None and primary.resolve() != srcdir.resolve():
        mounts.append(Mount(primary, str(srcdir)))
    for tree in config.extra_build_sources:
        assert tree.target is not None
        mounts.append(Mount(tree.source, str(srcdir / str(tree.target).lstrip("/"))))
    return mounts


def run_host_scripts(args: Args, config: Config, which: str, *, outputdir: Optional[Path] = None,
                     cached: Optional[bool] = None, workspace: Optional[Path] = None,
                     tools: bool = True) -> None:
    """Run the sync, postoutput or clean scripts (`which`) in order, on the host, in the directory mkosi
    was started in ($SRCDIR), with the build sources mounted over it. Without `tools`, the tools tree is
    not used (the clean scripts)."""
    scripts = check_host_scripts(config, which)
    if not scripts:
        return
    srcdir = Path.cwd()
    env = host_script_environment(args, config, which, srcdir=srcdir, outputdir=outputdir, cached=cached)
    sandbox = Sandbox.for_config(config)
    if not tools:
        sandbox = sandbox.but(tools=None)
    with config_json_file(config, workspace) as mkosi_config:
        sandbox = sandbox.but(env={**env, "MKOSI_CONFIG": str(mkosi_config)}, chdir=str(srcdir),
                              mounts=host_source_mounts(config, srcdir))
        for script in scripts:
            with log.step(f"Running {which} script {script.name}"):
                run_script_command(f"{which} script", script, [script.absolute()], sandbox)


def apply_environment(env: dict[str, str], items: Sequence[str]) -> None:
    """Environment= (EnvironmentFiles= included) over `env`: NAME=VALUE sets it, a bare NAME passes the
    variable of mkosi's own environment on when it has one."""
    for item in items:
        name, eq, value = item.partition("=")
        if eq:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
