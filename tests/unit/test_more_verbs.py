"""journalctl, coredumpctl, sandbox/box, dependencies and init."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.conftest import run_main as run
from tests.unit.conftest import write

pytestmark = pytest.mark.usefixtures("fixed_host")


def test_init_writes_a_starting_configuration(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (wd / ".gitignore").write_text("build/")
    assert run("init") == 0
    conf = (wd / "mkosi.conf").read_text()
    assert "Distribution=debian" in conf and "Release=bookworm" in conf
    ignored = (wd / ".gitignore").read_text().split("\n")
    assert ignored[0] == "build/" and "mkosi.output/" in ignored and "mkosi.local.conf" in ignored
    assert run("summary") == 0  # what init wrote loads
    assert run("init") == 1
    assert "already exists" in capsys.readouterr().err
    assert run("-f", "init") == 0
    assert (wd / ".gitignore").read_text().count("mkosi.output/") == 1


def test_dependencies_lists_tools_and_packages(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=gpt_xfs\nVerity=yes\n")
    write(wd / "mkosi.images/initrd.conf", "[Output]\nFormat=cpio\nCompressOutput=zstd\n")
    assert run("dependencies") == 0
    out = capsys.readouterr().out
    lines = {line.split()[1]: line.split()[0] for line in out.splitlines()}
    assert lines["mkfs.xfs"] == "xfsprogs"
    assert lines["veritysetup"] == "cryptsetup-bin"
    assert lines["cpio"] == "cpio" and lines["zstd"] == "zstd"   # from the sub-image
    assert lines["apt-get"] == "apt"


def test_sandbox_runs_the_command_with_the_search_paths(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tools = wd / "tools"
    tools.mkdir()
    script = tools / "mkosi-test-tool"
    script.write_text("#!/bin/sh\necho from-search-path \"$@\"\nexit 3\n")
    script.chmod(0o755)
    write(wd / "mkosi.conf", f"[Build]\nExtraSearchPaths={tools}\n")
    assert run("sandbox", "mkosi-test-tool", "x") == 3
    assert run("box", "true") == 0
    assert run("sandbox") == 1


def test_journalctl_reads_the_journal_of_a_directory_image(wd: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    image = wd / "image"
    (image / "var/log/journal").mkdir(parents=True)
    write(wd / "mkosi.conf", "[Output]\nFormat=directory\n")
    seen = wd / "argv"
    fake = wd / "bin"
    fake.mkdir()
    for tool in ("journalctl", "coredumpctl"):
        (fake / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {seen}\n")
        (fake / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    assert run("journalctl", "-b", "-p", "err") == 0
    assert run("coredumpctl", "list") == 0
    assert seen.read_text().split("\n")[:2] == [f"journalctl --root={image} -b -p err",
                                                f"coredumpctl --root={image} list"]


def test_journalctl_needs_a_built_image(wd: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(wd / "mkosi.conf", "[Output]\nFormat=directory\n")
    assert run("journalctl") == 1
    assert "does not exist; build it first" in capsys.readouterr().err


def test_a_missing_host_tool_stops_the_build_before_it_starts(wd: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mkosi.config import load_args
    from mkosi.dependencies import check_host_tools, host_tools
    from mkosi.errors import MkosiError

    write(wd / "mkosi.conf", "[Output]\nFormat=gpt_btrfs\n")
    _, configs = load_args(["summary"])
    monkeypatch.setattr("mkosi.sandbox.Sandbox.find", lambda self, name: None if name == "mkfs.btrfs" else "/bin/x")
    with pytest.raises(MkosiError, match=r"'mkfs\.btrfs' was not found") as e:
        check_host_tools(configs[-1])
    assert e.value.hint is not None and "btrfs-progs" in e.value.hint
    # Gentoo's emerge runs in the stage3, not on the host.
    write(wd / "mkosi.conf", "[Distribution]\nDistribution=gentoo\n[Output]\nFormat=directory\n")
    _, configs = load_args(["summary"])
    assert "emerge" not in host_tools(configs[-1])
