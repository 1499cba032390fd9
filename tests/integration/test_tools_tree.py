"""ToolsTree=default for real: the tree the `tools_tree` session fixture builds through mkosi is reused by a
Debian bookworm build, whose commands then run with the tree's programs (systemd 257 from trixie, where the
host has bookworm's 252); other inputs make another tree."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi, tools_tree_project

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path, tools_tree: Path) -> Path:
    d = tools_tree_project(tmp_path_factory.mktemp("tools-tree-build"), package_cache,
                           "\n[Content]\nPackages=systemd\n")
    (d / "mkosi.output").mkdir()
    return d


@pytest.fixture(scope="module")
def build_log(project: Path) -> str:
    proc = run_mkosi(project, "--debug", "build")
    return proc.stdout + proc.stderr


def sandbox(project: Path, *cmd: str, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return run_mkosi(project, *extra, "sandbox", "--", *cmd)


def test_the_second_use_reuses_the_cached_tree(build_log: str, tools_tree: Path) -> None:
    assert f"Reusing the cached tools tree {tools_tree} (key " in build_log
    assert "Building the default tools tree" not in build_log


def test_the_build_made_a_bookworm_image(build_log: str, project: Path) -> None:
    osr = (project / "mkosi.output/image/etc/os-release").read_text()
    assert "VERSION_CODENAME=bookworm" in osr


def test_the_build_s_commands_run_with_the_tree(build_log: str, tools_tree: Path) -> None:
    # Host-side commands get the tree's /usr; the package manager that fills the image is the tree's apt.
    wrapped = [line for line in build_log.splitlines() if f"--ro-bind {tools_tree}/usr /usr" in line]
    assert wrapped, build_log[-3000:]
    # apt-get gets its status stream's descriptor first (-o APT::Status-Fd=N, the progress lines).
    assert any(re.search(r" -- apt-get (-o \S+ )*update\b", line) for line in wrapped), wrapped[:5]
    assert any(" -- dpkg --print-architecture" in line for line in wrapped), wrapped[:5]


def test_systemd_257_tools_come_from_the_tree(project: Path, tools_tree: Path) -> None:
    host = subprocess.run(["systemctl", "--version"], capture_output=True, text=True).stdout
    for tool in ("systemd-repart", "ukify", "systemd-dissect", "bootctl"):
        out = sandbox(project, tool, "--version").stdout
        assert re.match(r"(systemd|ukify) 257\b", out), (tool, out)
    assert not host.startswith("systemd 257")   # the host (bookworm) has another systemd


def test_the_file_system_and_signing_tools_are_in_the_tree(project: Path) -> None:
    for cmd, expect in ((["mkfs.erofs", "--version"], "mkfs.erofs"), (["veritysetup", "--version"], "veritysetup"),
                        (["mksquashfs", "-version"], "mksquashfs version"),
                        (["mkfs.btrfs", "--version"], "btrfs-progs"),
                        (["sbsign", "--version"], "sbsign"), (["qemu-system-x86_64", "--version"], "QEMU emulator"),
                        (["swtpm", "--version"], "TPM emulator"), (["dnf", "--version"], "."),
                        (["pacman", "--version"], "Pacman"), (["zypper", "--version"], "zypper")):
        proc = sandbox(project, *cmd)
        assert expect in proc.stdout + proc.stderr, (cmd, proc.stdout, proc.stderr)


def test_summary_says_the_tree_is_cached(project: Path, tools_tree: Path) -> None:
    text = run_mkosi(project, "summary").stdout
    assert f"default (debian trixie), cached at {tools_tree}, key " in text
    [image] = json.loads(run_mkosi(project, "--json", "summary").stdout)["Images"]
    assert image["ToolsTreePath"] == str(tools_tree)


def test_a_missing_tool_names_its_package(project: Path, tools_tree: Path) -> None:
    proc = run_mkosi(project, "sandbox", "--", "bmaptool", "--version", check=False)
    assert proc.returncode != 0
    assert f"required tool 'bmaptool' was not found in the tools tree {tools_tree} (Debian package: bmap-tools)" \
        in proc.stderr
    assert "ToolsTreePackages=bmap-tools" in proc.stderr


@pytest.mark.slow
def test_changed_tools_tree_packages_build_another_tree(project: Path, tools_tree: Path) -> None:
    extra = ("--tools-tree-package=hello",)
    try:
        proc = sandbox(project, "hello", extra=extra)
        assert "Building the default tools tree (debian trixie" in proc.stderr
        assert proc.stdout.strip() == "Hello, world!"
        [image] = json.loads(run_mkosi(project, *extra, "--json", "summary").stdout)["Images"]
        other = Path(image["ToolsTreePath"])
        assert other != tools_tree and other.parent == tools_tree.parent
        # ... and the next use reuses it, while the default tree is left alone.
        again = sandbox(project, "hello", extra=extra)
        assert f"Reusing the cached tools tree {other}" in again.stderr
        assert (tools_tree / "usr/bin/systemd-repart").exists()
        assert not (tools_tree / "usr/bin/hello").exists()
    finally:
        run_mkosi(project, *extra, "-f", "clean")
    assert not Path(image["ToolsTreePath"]).exists()
    assert tools_tree.exists()
