"""The inner loop on a real two-phase Debian build: -R reruns the build script in the cached development
image, BuildDirectory= keeps the build state, --wipe-build-dir empties it, Format=none only runs the
build script, and a failing script with --debug-workspace/--debug-shell (no terminal here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

BUILD_SCRIPT = """\
#!/bin/sh
set -e
if [ -n "$FAIL" ]; then echo "failing on purpose"; exit 7; fi
runs=$(cat "$BUILDDIR/runs" 2>/dev/null || echo 0)
echo $((runs + 1)) > "$BUILDDIR/runs"
make -C "$SRCDIR" O="$BUILDDIR" DESTDIR="$DESTDIR" install
"""

MAKEFILE = """\
O ?= .
$(O)/hello: hello.c
\tcc -O2 -o $@ $<
install: $(O)/hello
\tinstall -D -m 0755 $(O)/hello $(DESTDIR)/usr/bin/hello
.PHONY: install
"""


def hello_source(greeting: str) -> str:
    return f'#include <stdio.h>\nint main(void) {{ puts("{greeting}"); return 0; }}\n'


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("devloop")
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=directory
ImageId=devloop

[Content]
BuildPackages=gcc,libc6-dev,make
Environment=FAIL
Cache={package_cache}
""")
    (d / "mkosi.build").write_text(BUILD_SCRIPT)
    (d / "mkosi.build").chmod(0o755)
    (d / "Makefile").write_text(MAKEFILE)
    (d / "hello.c").write_text(hello_source("hello 1"))
    (d / "mkosi.output").mkdir()
    (d / "mkosi.builddir").mkdir()
    return d


def run_hello(project: Path) -> str:
    return subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D",
                           str(project / "mkosi.output/devloop"), "/usr/bin/hello"],
                          capture_output=True, text=True, check=True, timeout=120).stdout.strip()


def runs(project: Path) -> int:
    return int((project / "mkosi.builddir/runs").read_text())


@pytest.fixture(scope="module")
def first_build(project: Path) -> None:
    run_mkosi(project, "-i", "build", timeout=2400)


def test_first_build(project: Path, first_build: None) -> None:
    assert run_hello(project) == "hello 1"
    assert runs(project) == 1
    assert (project / "mkosi.builddir/hello").is_file()
    assert (project / "mkosi.output/devloop.cache-build").is_dir()


def test_rerun_updates_the_directory_image_without_building_it(project: Path, first_build: None) -> None:
    before = runs(project)
    (project / "hello.c").write_text(hello_source("hello from -R"))
    proc = run_mkosi(project, "-R")
    log = proc.stdout + proc.stderr
    assert "Reusing the cached build image" in log
    assert "Installing debian" not in log and "Building the final image" not in log
    assert "cc -O2 -o /root/build/hello hello.c" in log
    assert runs(project) == before + 1
    assert run_hello(project) == "hello from -R"


def test_build_directory_keeps_state_between_builds(project: Path, first_build: None) -> None:
    before = runs(project)
    (project / "hello.c").write_text(hello_source("hello 3"))
    run_mkosi(project, "-i", "-f", "build", timeout=2400)
    assert runs(project) == before + 1
    assert run_hello(project) == "hello 3"
    # Nothing changed: make finds the object it built last time and compiles nothing.
    proc = run_mkosi(project, "-R")
    assert "cc -O2" not in proc.stdout + proc.stderr
    assert runs(project) == before + 2


def test_wipe_build_dir_starts_the_state_afresh(project: Path, first_build: None) -> None:
    assert runs(project) > 1
    proc = run_mkosi(project, "-R", "-w")
    assert "Wiping the build directory" in proc.stderr
    assert "cc -O2 -o /root/build/hello hello.c" in proc.stdout + proc.stderr
    assert runs(project) == 1


def test_failed_script_keeps_the_workspace_and_has_no_shell_without_a_terminal(project: Path,
                                                                                first_build: None) -> None:
    proc = run_mkosi(project, "-R", "--debug-workspace", "--debug-shell", check=False, env={"FAIL": "1"})
    assert proc.returncode == 1
    err = proc.stderr
    assert "build script" in err and "failed with exit status 7" in err and "failing on purpose" in err
    assert "--debug-shell: not opening a shell after the failed build script mkosi.build" in err
    assert "standard input is not a terminal" in err
    m = re.search(r"kept at (\S+) \(--debug-workspace\)", err)
    assert m, err
    ws = Path(m.group(1))
    try:
        assert ws.is_dir() and (ws / "overlay-upper-build").is_dir()
        assert not any(line.split()[4] == str(ws / "build-root") for line in
                       Path("/proc/self/mountinfo").read_text().splitlines())
        # A later build does not take the kept workspace for one of a killed build.
        run_mkosi(project, "-R")
        assert ws.is_dir()
    finally:
        shutil.rmtree(ws, ignore_errors=True)


def test_rerun_without_a_cached_image_is_a_clear_error(project: Path, tmp_path: Path) -> None:
    proc = run_mkosi(project, f"--output-dir={tmp_path}", "-R", check=False)
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "Hint:" not in line
             and not line.startswith("Warning:")]
    assert len(lines) == 1 and "no cached development image" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert os.listdir(tmp_path) == []


def test_format_none_runs_only_the_build_script(project: Path, first_build: None, tmp_path: Path) -> None:
    out, dest = tmp_path / "out", tmp_path / "dest"
    out.mkdir()
    proc = run_mkosi(project, "-t", "none", f"--output-dir={out}", f"--install-directory={dest}", "-w", "build",
                     timeout=2400)
    log = proc.stdout + proc.stderr
    assert "Building the development image" in log and "Building the final image" not in log
    assert "Format=none: no image is written" in log
    assert (dest / "usr/bin/hello").is_file()
    assert os.listdir(out) == []


def test_sysupdate_installs_the_newest_version_with_the_tools_trees_sysupdate(tools_tree: Path,
                                                                             tmp_path: Path) -> None:
    assert (tools_tree / "usr/lib/systemd/systemd-sysupdate").is_file(), "the default tools tree has systemd"
    out, target = tmp_path / "mkosi.output", tmp_path / "target"
    for d in (out, target, tmp_path / "mkosi.sysupdate"):
        d.mkdir()
    for version in ("1.2", "1.3"):
        (out / f"image_{version}.raw").write_text(f"image {version}\n")
    (tmp_path / "mkosi.default").write_text(f"[Output]\nFormat=directory\nOutputDirectory=mkosi.output\n\n"
                                            f"[Build]\nToolsTree={tools_tree}\n")
    (tmp_path / "mkosi.sysupdate/10-image.transfer").write_text(f"""\
[Source]
Type=regular-file
Path=/
PathRelativeTo=explicit
MatchPattern=image_@v.raw

[Target]
Type=regular-file
Path={target}
MatchPattern=image_@v.raw
""")
    listing = run_mkosi(tmp_path, "sysupdate", "--", "list").stdout
    assert "1.3" in listing and "1.2" in listing and "candidate" in listing
    run_mkosi(tmp_path, "sysupdate", "--", "update")
    assert (target / "image_1.3.raw").read_text() == "image 1.3\n"
    assert not (target / "image_1.2.raw").exists()
