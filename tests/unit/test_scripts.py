"""The user's scripts: where the sources go, IncludeDirectory=, and what a failing script reports."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest

import mkosi.run
from mkosi import build, scripts
from mkosi.config.enums import SourceFileTransfer
from mkosi.config.settings import Args, Config
from mkosi.config.types import ConfigTree
from mkosi.context import Context, Phase
from mkosi.errors import MkosiError


def ctx_for(tmp_path: Path, phase: Phase = Phase.build, **settings: Any) -> Context:
    config = dataclasses.replace(Config(), **settings)
    root = tmp_path / "root"
    root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "staging").mkdir(exist_ok=True)
    return Context(Args(), config, tmp_path, phase, root, None, tmp_path / "staging")


def executable(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


# ---- a failing script says which, its exit status and its last lines ----

def test_failing_finalize_script_reports_itself(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = executable(tmp_path / "mkosi.finalize",
                        "#!/bin/sh\nfor i in $(seq 1 40); do echo \"line $i\"; done\necho oops >&2\nexit 3\n")
    ctx = ctx_for(tmp_path, finalize_script=script)
    with pytest.raises(scripts.ScriptError) as e:
        scripts.run_finalize_script(ctx)
    msg = str(e.value)
    first = msg.splitlines()[0]
    assert first == f"finalize script {script} failed with exit status 3; its last lines of output:"
    shown = [line.strip() for line in msg.splitlines()[1:]]
    assert shown[-1] == "oops" and shown[-2] == "line 40" and len(shown) == scripts.SCRIPT_TAIL_LINES
    assert "line 1\n" not in msg and "BUILDROOT" not in msg
    # The output was passed through while the script ran.
    assert "line 1\n" in capsys.readouterr().out


def test_failing_build_script_message_has_no_nspawn_command_line(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    script = executable(tmp_path / "mkosi.build", "#!/bin/sh\necho 'cc: error: no stdio.h'\nexit 1\n")
    src = tmp_path / "src"
    src.mkdir()
    ctx = ctx_for(tmp_path, build_script=script, build_sources=[ConfigTree(src)],
                  source_file_transfer=SourceFileTransfer.copy_all)
    real_run = mkosi.run.run

    def on_host(argv: list[Any], sandbox: Any = None, **kw: Any) -> Any:
        # Run the copy of the script in the image root on the host instead of in a container.
        assert sandbox is not None and "systemd-nspawn" in " ".join(sandbox.argv(argv, "systemd-nspawn"))
        return real_run([str(ctx.root) + str(argv[0]), *argv[1:]], **kw)

    monkeypatch.setattr(scripts, "run", on_host)
    with pytest.raises(MkosiError) as e:
        scripts.run_build_script(ctx)
    msg = str(e.value)
    assert msg.startswith(f"build script {script} failed with exit status 1")
    assert "cc: error: no stdio.h" in msg
    assert "systemd-nspawn" not in msg and "--setenv" not in msg


def test_successful_script(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = executable(tmp_path / "mkosi.finalize", "#!/bin/sh\necho \"phase $1 root $BUILDROOT\"\n")
    ctx = ctx_for(tmp_path, Phase.final, finalize_script=script)
    scripts.run_finalize_script(ctx)
    assert f"phase final root {ctx.root}" in capsys.readouterr().out


# ---- sources are copied where the execution flow puts them ----

def test_sources_copied_before_extra_trees_postinst_and_finalize(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    order: list[str] = []
    for name in ("copy_skeleton_trees", "install_distribution", "verify_architecture", "configure_hostname",
                 "configure_machine_id", "configure_os_release", "configure_root_password", "configure_autologin",
                 "configure_qemu_headless", "configure_network", "configure_ssh", "copy_extra_trees"):
        monkeypatch.setattr(build, name, lambda ctx, name=name: order.append(name))
    for name in ("run_prepare_script", "run_postinst_script", "run_finalize_script", "copy_build_results"):
        monkeypatch.setattr(build, name, lambda ctx, name=name: order.append(name))
    src = tmp_path / "project"
    src.mkdir()
    (src / "hello.c").write_text("int main(void) { return 0; }\n")
    ctx = ctx_for(tmp_path, build_script=src / "mkosi.build", build_sources=[ConfigTree(src)],
                  source_file_transfer=SourceFileTransfer.copy_all, output=tmp_path / "out/image.raw")
    real = scripts.copy_build_sources

    def copy(ctx: Context) -> None:
        order.append("copy_build_sources")
        real(ctx)

    monkeypatch.setattr(build, "copy_build_sources", copy)
    build.build_phase(ctx)
    assert (ctx.root / "root/src/hello.c").is_file()
    i = order.index
    assert i("run_prepare_script") < i("copy_build_sources") < i("copy_extra_trees") < i("run_postinst_script") \
        < i("run_finalize_script")
    assert "copy_build_results" not in order


def test_sources_not_copied_for_mount_or_final(tmp_path: Path) -> None:
    src = tmp_path / "project"
    src.mkdir()
    (src / "a").write_text("a")
    mount = ctx_for(tmp_path / "m", build_script=src / "b", build_sources=[ConfigTree(src)],
                    source_file_transfer=SourceFileTransfer.mount)
    scripts.copy_build_sources(mount)
    assert not (mount.root / "root/src").exists()
    final = ctx_for(tmp_path / "f", Phase.final, build_script=src / "b", build_sources=[ConfigTree(src)])
    scripts.copy_build_sources(final)
    assert not (final.root / "root/src").exists()


# ---- IncludeDirectory= ----

def test_include_directory_collects_headers_and_keeps_system_headers_visible(monkeypatch: pytest.MonkeyPatch,
                                                                            tmp_path: Path) -> None:
    include = tmp_path / "mkosi.includedir"
    install = tmp_path / "mkosi.installdir"
    src = tmp_path / "project"
    src.mkdir()
    ctx = ctx_for(tmp_path, build_script=executable(tmp_path / "mkosi.build", "#!/bin/sh\n"),
                  build_sources=[ConfigTree(src)], source_file_transfer=SourceFileTransfer.mount, include_dir=include,
                  install_dir=install)
    (ctx.root / "usr/include/sys").mkdir(parents=True)
    (ctx.root / "usr/include/stdio.h").write_text("/* libc */\n")
    (ctx.root / "usr/include/sys/types.h").write_text("/* libc */\n")
    seen: dict[str, Any] = {}

    def fake_run_in_image(ctx: Context, what: str, script: Path, argv: list[str], **kw: Any) -> None:
        binds = {dst: s for s, dst in kw["binds"]}
        mounted = binds["/usr/include"]
        # What the script sees at /usr/include: the system's headers.
        seen["visible"] = sorted(str(p.relative_to(mounted)) for p in Path(mounted).rglob("*.h"))
        # A header written to /usr/include by the build lands in the include directory.
        (Path(mounted) / "built-in-place.h").write_text("x")
        # And one installed into $DESTDIR.
        dest = Path(binds["/root/dest"])
        (dest / "usr/include/myproj").mkdir(parents=True)
        (dest / "usr/include/myproj/api.h").write_text("int api(void);\n")

    monkeypatch.setattr(scripts, "_run_in_image", fake_run_in_image)
    scripts.run_build_script(ctx)
    assert seen["visible"] == ["stdio.h", "sys/types.h"]
    got = sorted(str(p.relative_to(include)) for p in include.rglob("*.h"))
    assert got == ["built-in-place.h", "myproj/api.h", "stdio.h", "sys/types.h"]
    assert os.access(include / "myproj/api.h", os.R_OK)
