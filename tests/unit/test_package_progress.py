"""The progress line of dnf, zypper, pacman and emerge, made from their own per-package lines (the files
in data/progress are their real output, captured from dnf 4.14, zypper 1.14 and pacman 6.0 installing from
local HTTP repositories), and run_package_manager, which runs them that way."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from mkosi import log
from mkosi.errors import CommandError
from mkosi.installers.base import run_package_manager
from mkosi.progress import PackageProgress, PackageStep, Renderer, parse_package_line
from mkosi.sandbox import Sandbox

DATA = Path(__file__).parent / "data/progress"


def steps(tool: str, name: str) -> list[PackageStep]:
    lines = (DATA / name).read_text().splitlines()
    return [s for s in (parse_package_line(tool, line) for line in lines) if s is not None]


def shown(tool: str, name: str) -> list[str]:
    out = io.StringIO()
    p = PackageProgress(Renderer(out, tty=True, columns=200, interval=0), tool)
    for line in (DATA / name).read_text().splitlines():
        p.stdout_line(line)
    return [s for s in out.getvalue().split("\r\033[K") if s]


def test_dnf_install_lines() -> None:
    got = steps("dnf", "dnf-install.txt")
    assert [(s.phase, s.index, s.total) for s in got] == [
        ("download", 1, 3), ("download", 2, 3), ("download", 3, 3),
        ("install", 1, 3), ("install", 2, 3), ("install", 3, 3),
        ("verify", 1, 3), ("verify", 2, 3), ("verify", 3, 3)]
    assert got[0].name == "alpha-1.0-1.noarch.rpm" and got[3].name == "gamma-1.0-1.noarch"
    # The table of packages, "Preparing" and the summary are not steps.
    assert shown("dnf", "dnf-install.txt") == [
        "Downloading 1/3: alpha-1.0-1.noarch.rpm", "Downloading 2/3: beta-1.0-1.noarch.rpm",
        "Downloading 3/3: gamma-1.0-1.noarch.rpm", "Installing 1/3: gamma-1.0-1.noarch",
        "Installing 2/3: beta-1.0-1.noarch", "Installing 3/3: alpha-1.0-1.noarch",
        "Verifying 1/3: alpha-1.0-1.noarch", "Verifying 2/3: beta-1.0-1.noarch", "Verifying 3/3: gamma-1.0-1.noarch"]


def test_dnf_remove_lines() -> None:
    assert [(s.phase, s.name) for s in steps("dnf", "dnf-remove.txt")] == [
        ("remove", "beta-1.0-1.noarch"), ("verify", "beta-1.0-1.noarch")]


def test_zypper_lines_download_in_advance_then_install() -> None:
    assert [(s.phase, s.index, s.total, s.name) for s in steps("zypper", "zypper-install.txt")] == [
        ("download", 1, 3, "alpha-1.0-1.noarch"), ("download", 2, 3, "beta-1.0-1.noarch"),
        ("download", 3, 3, "gamma-1.0-1.noarch"), ("install", 1, 3, "alpha-1.0-1.noarch"),
        ("install", 2, 3, "beta-1.0-1.noarch"), ("install", 3, 3, "gamma-1.0-1.noarch")]
    # Its remove lines have no colon.
    assert shown("zypper", "zypper-remove.txt") == ["Removing 1/1: beta-1.0-1.noarch"]


def test_pacman_counts_its_unnumbered_lines_against_the_plan() -> None:
    assert shown("pacman", "pacman-install.txt") == [
        "Refreshing: t",
        "Downloading 1/3: beta-1.0-1-any", "Downloading 2/3: gamma-1.0-1-any", "Downloading 3/3: alpha-1.0-1-any",
        "Installing 1/3: alpha", "Installing 2/3: beta", "Installing 3/3: gamma"]
    assert shown("pacman", "pacman-remove.txt") == ["Removing 1/1: beta"]


def test_emerge_lines() -> None:
    lines = [">>> Verifying ebuild manifests", ">>> Emerging (1 of 2) sys-apps/hello-1.0::gentoo",
             ">>> Installing (1 of 2) sys-apps/hello-1.0::gentoo", ">>> Emerging binary (2 of 2) app-misc/x-2::gentoo",
             ">>> Completed (2 of 2) app-misc/x-2::gentoo"]
    got = [parse_package_line("emerge", line) for line in lines]
    assert got == [None, PackageStep("build", 1, 2, "sys-apps/hello-1.0::gentoo"),
                   PackageStep("install", 1, 2, "sys-apps/hello-1.0::gentoo"),
                   PackageStep("build", 2, 2, "app-misc/x-2::gentoo"), None]


def test_fraction_only_grows_through_the_phases() -> None:
    seen: list[float] = []

    class Recorder(Renderer):
        def update(self, text: str, fraction: float | None = None, force: bool = False) -> None:
            if not text.startswith("Refreshing"):
                assert fraction is not None
                seen.append(fraction)

    for tool, name in (("dnf", "dnf-install.txt"), ("pacman", "pacman-install.txt"), ("zypper", "zypper-install.txt")):
        seen.clear()
        p = PackageProgress(Recorder(io.StringIO(), tty=False), tool)
        for line in (DATA / name).read_text().splitlines():
            p.stdout_line(line)
        assert seen == sorted(seen) and seen[-1] == pytest.approx(1.0), (tool, seen)


def test_a_log_gets_a_few_lines_not_one_per_package() -> None:
    out = io.StringIO()
    now = [0.0]
    p = PackageProgress(Renderer(out, tty=False, clock=lambda: now[0]), "dnf")
    for i in range(1, 301):
        p.stdout_line(f"  Installing       : pkg{i}-1.0-1.noarch{' ' * 20}{i}/300 ")
        now[0] += 0.01
    # Installing is 0.3 to 0.9 of dnf's run (downloads before, verifying after): the first line is past a
    # quarter already, then one at half and one at three quarters.
    assert out.getvalue().splitlines() == ["Installing 1/300: pkg1-1.0-1.noarch",
                                           "Installing 100/300: pkg100-1.0-1.noarch",
                                           "Installing 225/300: pkg225-1.0-1.noarch"]


def fake_tool(tmp_path: Path, stdout: str, stderr: str, status: int) -> Path:
    script = tmp_path / "fake-dnf"
    script.write_text(f"#!/bin/sh\ncat {DATA / stdout}\necho '{stderr}' >&2\nexit {status}\n")
    script.chmod(0o755)
    return script


def test_run_package_manager_shows_progress_and_stderr_not_the_output(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tool = fake_tool(tmp_path, "dnf-install.txt", "warning: something to know", 0)
    proc = run_package_manager("dnf", [str(tool)], sandbox=Sandbox())
    assert "Dependencies resolved." in proc.stdout  # kept for the caller
    err = capsys.readouterr()
    assert "warning: something to know" in err.err
    assert "Dependencies resolved." not in err.out + err.err
    assert "Transaction Summary" not in err.out + err.err


def test_run_package_manager_failure_names_the_command_and_its_last_lines(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "dnf-remove.txt", "Error: Unable to find a match: no-such-package", 1)
    with pytest.raises(CommandError) as e:
        run_package_manager("dnf", [str(tool), "install", "no-such-package"], sandbox=Sandbox())
    assert e.value.returncode == 1
    assert str(tool) in str(e.value) and "Unable to find a match: no-such-package" in str(e.value)


def test_run_package_manager_with_debug_passes_the_output_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(log, "debug_enabled", lambda: True)
    tool = fake_tool(tmp_path, "pacman-remove.txt", "", 0)
    run_package_manager("pacman", [str(tool)], sandbox=Sandbox())
    assert "removing beta..." in capfd.readouterr().out


@pytest.mark.skipif(not os.access("/bin/sh", os.X_OK) or sys.platform != "linux", reason="needs /bin/sh")
def test_run_package_manager_missing_tool_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(Exception) as e:
        run_package_manager("dnf", [str(tmp_path / "no-such-dnf")], sandbox=Sandbox())
    assert "no-such-dnf" in str(e.value)
