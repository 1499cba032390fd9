"""Two-phase builds with the automake example: scripts in the right order with the right
arguments, build-only packages absent from the final image, and incremental rebuilds that reuse
the cached images only while their inputs are unchanged."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import run_mkosi

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data/automake"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, package_cache: Path) -> Path:
    d = tmp_path_factory.mktemp("automake")
    shutil.copytree(DATA, d, dirs_exist_ok=True)
    (d / "mkosi.default").write_text(f"""\
[Distribution]
Distribution=debian
Release=bookworm

[Output]
Format=directory
ImageId=hello

[Content]
BuildPackages=gcc,libc6-dev,make,autoconf,automake
Cache={package_cache}
""")
    (d / "mkosi.output").mkdir()
    return d


def image(project: Path) -> Path:
    return project / "mkosi.output/hello"


def run_hello(project: Path) -> str:
    return subprocess.run(["systemd-nspawn", "--register=no", "--keep-unit", "--quiet", "-D", str(image(project)),
                           "/usr/bin/mkosi-hello"], capture_output=True, text=True, check=True, timeout=120).stdout


def installed(root: Path) -> set[str]:
    names, current = set(), None
    for line in (root / "var/lib/dpkg/status").read_text().splitlines():
        if line.startswith("Package: "):
            current = line.split(": ", 1)[1]
        elif line == "Status: install ok installed" and current:
            names.add(current)
    return names


def build(project: Path, *extra: str) -> tuple[str, float]:
    start = time.monotonic()
    proc = run_mkosi(project, "-i", "-f", *extra, "build", "arg1", timeout=2400)
    return proc.stderr, time.monotonic() - start


@pytest.fixture(scope="module")
def first_build(project: Path) -> str:
    return build(project)[0]


def test_program_runs_in_final_image(project: Path, first_build: str) -> None:
    assert run_hello(project).strip() == "hello from the mkosi build script, version 1"


def test_build_packages_absent(project: Path, first_build: str) -> None:
    pkgs = installed(image(project))
    assert "systemd" in pkgs
    assert not {"gcc", "gcc-12", "make", "autoconf", "automake"} & pkgs


def test_script_order_and_arguments(project: Path, first_build: str) -> None:
    build_log = (image(project) / "usr/share/mkosi-test/build-phase.log").read_text().splitlines()
    assert build_log == ["prepare build", "postinst build", "finalize build", "build 0 hello arg1"]
    final_log = (image(project) / "var/log/mkosi-order.log").read_text().splitlines()
    assert final_log == ["prepare final", "postinst final", "finalize final"]
    assert not (image(project) / "root/src").exists(), "sources stay out of the final image"


def test_incremental_reuses_cache_after_source_change(project: Path, first_build: str) -> None:
    (project / "hello.c").write_text((project / "hello.c").read_text().replace("version 1", "version 2"))
    log, seconds = build(project)
    print(f"incremental rebuild after a source change: {seconds:.1f}s")
    assert "Reusing the cached build image" in log
    assert "Reusing the cached final image" in log
    assert "version 2" in run_hello(project)


def test_incremental_nothing_changed(project: Path, first_build: str) -> None:
    log, seconds = build(project)
    print(f"incremental rebuild with nothing changed: {seconds:.1f}s")
    assert "up to date" in log


def test_incremental_package_change_rebuilds(project: Path, first_build: str) -> None:
    log, _ = build(project, "-p", "less")
    assert "out of date" in log
    assert "Reusing the cached final image" not in log
    assert "less" in installed(image(project))


def test_incremental_prepare_change_rebuilds(project: Path, first_build: str) -> None:
    prepare = project / "mkosi.prepare"
    prepare.write_text(prepare.read_text() + "echo changed >> /var/log/prepare-changed\n")
    log, _ = build(project, "-p", "less")
    assert "Reusing the cached build image" not in log
    assert "Reusing the cached final image" not in log
    assert (image(project) / "var/log/prepare-changed").exists()
