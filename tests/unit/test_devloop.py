"""The inner loop of a developer: -R, --wipe-build-dir, Format=none, --debug-shell, --debug-workspace."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mkosi import build, cache, scripts
from mkosi.config import load_args
from mkosi.config.enums import Distribution, SourceFileTransfer
from mkosi.config.settings import Args, Config
from mkosi.config.types import ConfigTree
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError
from mkosi.formats import OutputFormat
from mkosi.output import artifacts
from mkosi.output.artifacts import cached_image_path
from mkosi.sandbox import Sandbox
from mkosi.summary import summary_text
from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")

needs_root = pytest.mark.skipif(os.getuid() != 0, reason="the build verb refuses to run without root")


def resolve(*argv: str) -> tuple[Args, Config]:
    args, configs = load_args([*argv, "summary"])
    return args, configs[-1]


def project(wd: Path, fmt: str = "directory", script: bool = True) -> None:
    write(wd / "mkosi.default", f"[Distribution]\nDistribution=debian\nRelease=bookworm\n\n[Output]\nFormat={fmt}\n")
    if script:
        write(wd / "mkosi.build", "#!/bin/sh\necho built\n", 0o755)
    (wd / "mkosi.output").mkdir(exist_ok=True)


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# ---- the options ----

def test_the_options_reach_args(wd: Path) -> None:
    project(wd)
    args, _ = resolve()
    assert not (args.rerun_build_scripts or args.wipe_build_dir or args.debug_shell or args.debug_workspace)
    args, _ = resolve("-R", "-w", "--debug-shell", "--debug-workspace")
    assert args.rerun_build_scripts and args.wipe_build_dir and args.debug_shell and args.debug_workspace
    args, _ = resolve("--rerun-build-scripts", "--wipe-build-dir")
    assert args.rerun_build_scripts and args.wipe_build_dir


def test_build_directory_defaults_to_mkosi_builddir(wd: Path) -> None:
    project(wd)
    assert resolve()[1].build_dir is None
    (wd / "mkosi.builddir").mkdir()
    assert resolve()[1].build_dir == wd / "mkosi.builddir"
    assert resolve("--build-directory", "elsewhere")[1].build_dir == wd / "elsewhere"


# ---- -R ----

def test_rerun_needs_a_build_script(wd: Path) -> None:
    project(wd, script=False)
    with pytest.raises(MkosiError, match="no build script is configured"):
        build.check_rerun(resolve("-R")[1])


def test_rerun_needs_the_cached_development_image(wd: Path) -> None:
    project(wd)
    config = resolve("-R")[1]
    with pytest.raises(MkosiError) as e:
        build.check_rerun(config)
    assert "no cached development image" in str(e.value) and "-i" in str(e.value)
    assert str(cached_image_path(config, Phase.build)) in str(e.value)
    cached_image_path(config, Phase.build).mkdir(parents=True)
    build.check_rerun(config)


@needs_root
def test_rerun_without_an_image_is_one_clear_line(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project(wd)
    assert run("-R") == 1
    err = capsys.readouterr().err
    assert "no cached development image to rerun the build script against" in err
    assert "Traceback" not in err


def ctx_for(tmp_path: Path, phase: Phase = Phase.build, args: Args | None = None, **settings: Any) -> Context:
    config = dataclasses.replace(Config(), **settings)
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "staging").mkdir(exist_ok=True)
    return Context(args or Args(), config, tmp_path, phase, root, None, tmp_path / "staging")


def test_rerun_phase_uses_the_cached_image_and_installs_nothing(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    loaded: list[bool] = []

    def fake_load(ctx: Context, key: str, stale_ok: bool = False) -> bool:
        loaded.append(stale_ok)
        return True

    def refuse(*a: object, **k: object) -> None:
        raise AssertionError("-R must not install or prepare anything")

    monkeypatch.setattr(build, "load_cached_image", fake_load)
    monkeypatch.setattr(build, "install_distribution", refuse)
    monkeypatch.setattr(build, "run_prepare_script", refuse)
    monkeypatch.setattr(build, "save_cached_image", refuse)
    monkeypatch.setattr(build, "image_cache_key", lambda ctx, pkgs: "key")
    ctx = ctx_for(tmp_path, args=Args(rerun_build_scripts=True), output=tmp_path / "out" / "image",
                  distribution=Distribution.debian, release="bookworm")
    build.build_phase(ctx, rerun=True)
    assert loaded == [True]

    monkeypatch.setattr(build, "load_cached_image", lambda ctx, key, stale_ok=False: False)
    with pytest.raises(MkosiError, match="no cached development image"):
        build.build_phase(ctx, rerun=True)


def test_a_stale_cached_image_is_used_by_rerun_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ctx = ctx_for(tmp_path, output=tmp_path / "out" / "image")
    image = cached_image_path(ctx.config, Phase.build)
    image.mkdir(parents=True)
    Path(f"{image}.key").write_text("old\n")
    commands: list[list[str]] = []
    monkeypatch.setattr(cache, "run", lambda argv, **kw: commands.append([os.fspath(a) for a in argv]))
    assert not cache.load_cached_image(ctx, "new")
    assert commands == []
    assert cache.load_cached_image(ctx, "new", stale_ok=True)
    assert commands and commands[0][:3] == ["mount", "-t", "overlay"] and f"lowerdir={image}" in commands[0][-2]
    assert "out of date" in capsys.readouterr().err


def test_rerun_copies_the_results_into_a_directory_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    image = out / "image"
    (image / "usr/bin").mkdir(parents=True)
    (image / "usr/bin/hello").write_text("old")
    (image / "etc").mkdir()
    (image / "etc/keep").write_text("kept")
    seen: list[str] = []

    def fake_phase(ctx: Context, rerun: bool = False) -> None:
        seen.append(f"phase rerun={rerun} {ctx.phase.value}")

    def fake_script(ctx: Context) -> None:
        seen.append("build script")
        results = ctx.workspace / "build-results" / "usr/bin"
        results.mkdir(parents=True)
        (results / "hello").write_text("new")

    monkeypatch.setattr(build, "build_phase", fake_phase)
    monkeypatch.setattr(build, "run_build_script", fake_script)
    monkeypatch.setattr(build, "check_host_tools", lambda config: None)
    monkeypatch.setattr(build, "private_mount_namespace", lambda: None)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    config = dataclasses.replace(Config(), output=image, output_dir=out, format=OutputFormat("directory"),
                                 build_script=tmp_path / "mkosi.build")
    key = artifacts.output_key_path(config)
    key.write_text("the key of the last -i build\n")
    build._rerun_locked(Args(rerun_build_scripts=True), config)
    assert seen == ["phase rerun=True build", "build script"]
    assert (image / "usr/bin/hello").read_text() == "new"
    assert (image / "etc/keep").read_text() == "kept"
    # The output was changed behind the back of -i's up-to-date check: the next -i build runs.
    assert not key.exists()


def test_rerun_does_not_bump_the_version(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkosi import verbs

    project(wd)
    monkeypatch.setattr(verbs, "build_command", lambda args, config: True)
    args, config = resolve("-R", "-B")
    verbs.verb_build(args, config)
    assert not (wd / "mkosi.version").exists()
    args, config = resolve("-B")
    verbs.verb_build(args, config)
    assert (wd / "mkosi.version").exists()


# ---- --wipe-build-dir ----

def test_wipe_build_dir_empties_it(wd: Path) -> None:
    project(wd)
    d = wd / "mkosi.builddir"
    (d / "obj").mkdir(parents=True)
    (d / "obj/a.o").write_text("x")
    (d / "state").write_text("1")
    os.symlink("/etc", d / "link")
    build.wipe_build_dir(*resolve())
    assert sorted(p.name for p in d.iterdir()) == ["link", "obj", "state"]
    build.wipe_build_dir(*resolve("-w"))
    assert d.is_dir() and list(d.iterdir()) == []
    assert Path("/etc").is_dir()


def test_wipe_without_a_build_directory_warns(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    project(wd)
    build.wipe_build_dir(*resolve("-w"))
    assert "no BuildDirectory= is configured" in capsys.readouterr().err


# ---- Format=none ----

def test_format_none_has_a_maker_and_writes_no_artifacts(wd: Path) -> None:
    project(wd, "none")
    _, config = resolve("--checksum=yes")
    assert config.format.row.maker is not None and config.format.row.status is None
    assert artifacts.declared(config) == []
    assert artifacts.existing(config) == []
    assert "output" not in artifacts.shown(config)
    # The caches of -i remain (clean -f removes them).
    assert artifacts.CACHE_IMAGES[Phase.build] in artifacts.declared(config, cache=True)
    assert "not implemented" not in summary_text(*load_args(["summary"]))


def test_format_none_keeps_earlier_outputs_on_clean(wd: Path) -> None:
    project(wd, "none")
    old = wd / "mkosi.output" / "image"
    old.write_text("from an earlier build")
    assert run("clean") == 0
    assert old.exists()


def test_format_none_needs_a_build_script(wd: Path) -> None:
    project(wd, "none", script=False)
    with pytest.raises(MkosiError, match="Format=none only runs the build script"):
        build.check_build_only(resolve()[1])
    project(wd, "none")
    build.check_build_only(resolve()[1])


def test_format_none_builds_only_the_development_image(wd: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    project(wd, "none")
    phases: list[Phase] = []
    monkeypatch.setattr(build, "build_phase", lambda ctx, rerun=False: phases.append(ctx.phase))
    monkeypatch.setattr(build, "run_build_script", lambda ctx: phases.append(Phase.build))
    monkeypatch.setattr(build, "make_output", lambda ctx: pytest.fail("Format=none must write no image"))
    args, config = resolve()
    ws = wd / "ws"
    ws.mkdir()
    assert build.build_image(args, config, ws, []) == []
    assert phases == [Phase.build, Phase.build]
    assert "Format=none: no image is written" in capsys.readouterr().err


# ---- --debug-workspace ----

def test_debug_workspace_keeps_a_failed_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(Config(), workspace_dir=tmp_path)
    with pytest.raises(RuntimeError), build.workspace(config, keep=True) as ws:
        (ws / "build-root").mkdir()
        raise RuntimeError("a step failed")
    assert (ws / "build-root").is_dir()
    # Without its PID file no later build removes it as the workspace of a killed build.
    assert not (ws / ".mkosi-pid").exists()
    err = capsys.readouterr().err
    assert f"kept at {ws}" in err and "failed build" in err


def test_debug_workspace_keeps_a_successful_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = dataclasses.replace(Config(), workspace_dir=tmp_path)
    with build.workspace(config, keep=True) as ws:
        (ws / "staging").mkdir()
    assert (ws / "staging").is_dir()
    assert f"kept at {ws}" in capsys.readouterr().err


def test_without_debug_workspace_a_failed_workspace_goes(tmp_path: Path) -> None:
    config = dataclasses.replace(Config(), workspace_dir=tmp_path)
    with pytest.raises(RuntimeError), build.workspace(config) as ws:
        raise RuntimeError("a step failed")
    assert not ws.exists()


# ---- --debug-shell ----

def failing(tmp_path: Path) -> Path:
    return executable(tmp_path / "mkosi.build", "#!/bin/sh\necho compiling\nexit 4\n")


def test_debug_shell_without_a_terminal_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    script = failing(tmp_path)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: False)
    shell = Sandbox().nspawn(tmp_path / "root")
    with pytest.raises(scripts.ScriptError) as e:
        scripts.run_script_command("build script", script, [script], Sandbox(), shell=shell)
    assert e.value.returncode == 4
    err = capsys.readouterr().err
    assert "--debug-shell: not opening a shell after the failed build script mkosi.build" in err
    assert "standard input is not a terminal" in err


def test_debug_shell_opens_the_scripts_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    builddir = tmp_path / "builddir"
    ctx = ctx_for(tmp_path, args=Args(debug_shell=True), build_script=failing(tmp_path),
                  build_sources=[ConfigTree(src)], source_file_transfer=SourceFileTransfer.mount, build_dir=builddir,
                  environment=["GREETING=hi"])
    calls: list[tuple[list[str], Sandbox]] = []

    def fake_run(argv: list[str], *, sandbox: Sandbox, **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(([os.fspath(a) for a in argv], sandbox))
        return subprocess.CompletedProcess(argv, 9 if argv else 0)

    monkeypatch.setattr(scripts, "run", fake_run)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(scripts.ScriptError):
        scripts.run_build_script(ctx)
    (script_argv, script_sandbox), (shell_argv, shell_sandbox) = calls
    assert script_argv == ["/root/mkosi.build"]
    assert shell_argv == []    # nspawn without a command: the image's shell
    assert shell_sandbox == script_sandbox
    argv = scripts.debug_shell_argv(shell_sandbox)
    assert argv[0].endswith("systemd-nspawn")
    assert f"--directory={ctx.root}" in argv
    assert f"--bind={src}:/root/src" in argv and f"--bind={builddir}:/root/build" in argv
    assert "--chdir=/root/src" in argv and "--setenv=GREETING" in argv
    assert "--" not in argv


def test_no_debug_shell_without_the_option(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ctx = ctx_for(tmp_path, build_script=failing(tmp_path), build_sources=[ConfigTree(src)],
                  source_file_transfer=SourceFileTransfer.mount)
    calls: list[list[str]] = []

    def fake_run(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(list(argv))
        return subprocess.CompletedProcess(argv, 9)

    monkeypatch.setattr(scripts, "run", fake_run)
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    with pytest.raises(scripts.ScriptError):
        scripts.run_build_script(ctx)
    assert calls == [["/root/mkosi.build"]]


def test_debug_shell_of_a_failed_finalize_script_is_in_the_image(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    script = executable(tmp_path / "mkosi.finalize", "#!/bin/sh\nexit 2\n")
    ctx = ctx_for(tmp_path, Phase.final, args=Args(debug_shell=True), finalize_script=script)
    shells: list[Sandbox] = []
    monkeypatch.setattr(sys.stdin, "isatty", lambda: True)
    monkeypatch.setattr(scripts, "open_debug_shell", lambda what, script, shell: shells.append(shell))
    with pytest.raises(scripts.ScriptError, match="finalize script"):
        scripts.run_finalize_script(ctx)
    assert len(shells) == 1 and f"--directory={ctx.root}" in scripts.debug_shell_argv(shells[0])
