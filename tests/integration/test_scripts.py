"""Two-phase builds with the automake example: scripts in the right order with the right
arguments, build-only packages absent from the final image, and incremental rebuilds that reuse
the cached images only while their inputs are unchanged. The same builds run mkosi.sync and
mkosi.postoutput, install a VolatilePackages= package outside the cached image, and `clean` runs
mkosi.clean."""

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
VolatilePackages=tree
Cache={package_cache}
""")
    (d / "mkosi.output").mkdir()
    # The host scripts log outside the sources (a changed source would make -i rebuild).
    logs = logs_dir(d)
    logs.mkdir()
    script(d / "mkosi.sync", f'echo "sync $CACHED $SRCDIR $(pwd) $DISTRIBUTION $ARCHITECTURE" >> {logs}/sync.log')
    script(d / "mkosi.postoutput", f"""\
ls "$OUTPUTDIR" > "$OUTPUTDIR/hello.listing"
echo "postoutput $OUTPUTDIR" >> {logs}/postoutput.log""")
    script(d / "mkosi.clean", f"""\
if [ -e "$OUTPUTDIR/hello" ]; then state=present; else state=absent; fi
echo "clean $OUTPUTDIR $state" >> {logs}/clean.log""")
    return d


def logs_dir(project: Path) -> Path:
    return project.parent / f"{project.name}-logs"


def script(path: Path, body: str) -> None:
    path.write_text("#!/bin/sh\nset -e\n" + body + "\n")
    path.chmod(0o755)


def log_lines(project: Path, name: str) -> list[str]:
    path = logs_dir(project) / f"{name}.log"
    return path.read_text().splitlines() if path.exists() else []


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


def test_sync_script_ran_before_the_build(project: Path, first_build: str) -> None:
    lines = log_lines(project, "sync")
    # The first -i build found no cached image; mkosi ran it in the project directory ($SRCDIR).
    assert lines[0] == f"sync 0 {project} {project} debian x86-64"
    assert first_build.index("Running sync script mkosi.sync") < first_build.index("Building the development image")


def test_postoutput_script_saw_the_staged_outputs(project: Path, first_build: str) -> None:
    (line,) = log_lines(project, "postoutput")[:1]
    staging = line.split()[1]
    assert not staging.startswith(str(project / "mkosi.output"))
    # What it added to $OUTPUTDIR was moved into the output directory with the image.
    listing = (project / "mkosi.output/hello.listing").read_text().split()
    assert "hello" in listing


def test_volatile_package_in_the_image_but_not_in_the_cached_image(project: Path, first_build: str) -> None:
    assert "tree" in installed(image(project))
    assert (image(project) / "usr/bin/tree").exists()
    cached = project / "mkosi.output/hello.cache-final"
    assert cached.is_dir()
    assert "systemd" in installed(cached) and "tree" not in installed(cached)
    assert not (cached / "usr/bin/tree").exists()


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


def test_sync_sees_the_cached_image_on_later_builds(project: Path, first_build: str) -> None:
    lines = log_lines(project, "sync")
    assert len(lines) >= 2 and all(line.startswith("sync 1 ") for line in lines[1:])


def test_clean_runs_the_clean_script_after_removing_the_outputs(project: Path, first_build: str) -> None:
    # Each -f build ran it first: the first one before there was an image, the others with the previous image.
    builds = log_lines(project, "clean")
    assert builds[0].endswith(" absent") and len(builds) >= 2
    assert all(line.endswith(" present") for line in builds[1:])
    before = len(log_lines(project, "clean"))
    proc = run_mkosi(project, "clean")
    assert not image(project).exists()
    lines = log_lines(project, "clean")
    assert len(lines) == before + 1
    assert lines[-1] == f"clean {project / 'mkosi.output'} absent", proc.stderr
